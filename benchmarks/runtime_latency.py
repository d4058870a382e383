"""Lean-runtime latency: import time, cold start, per-stage and end-to-end latency, time outside sessions.

    python benchmarks/runtime_latency.py build/stfnet --data ../shared/data --threads 2

Clips of 2, 4.5 and 10 s are real speech: EMO-DB utterances of one speaker joined end to end.
Writes benchmarks/results/runtime_latency-<bundle>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from edgeser.quantize.check import machine_info

from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.data import load_corpus

LENGTHS_S = (2.0, 4.5, 10.0)


def real_clip(data: Path, seconds: float) -> np.ndarray:
    """`seconds` of real speech: one EMO-DB speaker's utterances joined, cut to length."""
    corpus = load_corpus(f"emodb:{data / 'emodb'}")
    pieces, total = [], 0
    for utt in (u for u in corpus.utterances if u.speaker == "03"):
        wave = load_audio(utt.path)
        pieces.append(wave)
        total += wave.size
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


def subprocess_seconds(code: str, runs: int) -> list[float]:
    """Run `code` in fresh interpreters; it prints one float (seconds)."""
    return [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(runs)]


def bare_chain(pipe, wave: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The same chain with bare onnxruntime calls and the graph's own frame lengths: the parity path."""
    features, frame_lengths = pipe.sessions["audio_encoder"].run(None, {"waveform": wave[None], "lengths": np.array([wave.size])})
    feeds = {"features": features, "frame_lengths": frame_lengths}
    if "text_encoder" in pipe.sessions:
        log_probs = pipe.sessions["ctc_head"].run(None, {"features": features})[0]
        ids, mask = pipe.tokenize([pipe.vocab.decode_log_probs(log_probs[0], int(frame_lengths[0]))])
        tokens = pipe.sessions["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
        feeds |= {"token_features": tokens, "attention_mask": mask}
    return pipe.sessions["fusion_head"].run(None, feeds)[0][0]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    import_s = subprocess_seconds(
        "import time; t = time.perf_counter(); import edgeser.runtime; print(time.perf_counter() - t)", 7
    )
    first_clip = real_clip(args.data, 2.0)
    clip_path = Path("/tmp/edgeser-bench-2s.npy")
    np.save(clip_path, first_clip)
    cold_s = subprocess_seconds(
        "import time; t = time.perf_counter(); import numpy as np; from edgeser.runtime import Pipeline; "
        f"p = Pipeline.load({str(args.bundle)!r}, {args.precision!r}, threads={args.threads}); "
        f"p((np.load({str(clip_path)!r}), 16000)); print(time.perf_counter() - t)",
        5,
    )

    from edgeser.runtime import Pipeline

    pipe = Pipeline.load(args.bundle, args.precision, threads=args.threads)
    per_length = {}
    for seconds in LENGTHS_S:
        wave = real_clip(args.data, seconds)
        for _ in range(3):
            pipe((wave, SAMPLE_RATE))  # warm-up
        end_to_end, outside, stages = [], [], {}
        for _ in range(args.runs):
            started = time.perf_counter()
            result = pipe((wave, SAMPLE_RATE))
            wall_ms = (time.perf_counter() - started) * 1e3
            session_ms = sum(v for k, v in result.timings_ms.items() if k in pipe.sessions)
            end_to_end.append(wall_ms)
            outside.append((wall_ms - session_ms) / wall_ms)
            for key, value in result.timings_ms.items():
                if key != "total":
                    stages.setdefault(key, []).append(value)
        result = pipe((wave, SAMPLE_RATE))
        per_length[f"{seconds:g}s"] = {
            "end_to_end_ms": {"p50": percentile(end_to_end, 50), "p95": percentile(end_to_end, 95)},
            "real_time_factor": percentile(end_to_end, 50) / 1e3 / seconds,
            "outside_sessions_share": {"p50": percentile(outside, 50), "max": max(outside)},
            "stages_ms_p50": {k: percentile(v, 50) for k, v in stages.items()},
            "max_abs_diff_vs_bare_sessions": float(np.max(np.abs(bare_chain(pipe, wave) - np.array(result.logits)))),
        }
    results = {
        "bundle": str(args.bundle),
        "model": pipe.manifest.model,
        "size": pipe.manifest.size,
        "precision": args.precision,
        "threads": args.threads,
        "runs": args.runs,
        "import_s": {"median": statistics.median(import_s), "max": max(import_s)},
        "cold_start_s": {"median": statistics.median(cold_s), "max": max(cold_s)},
        "latency": per_length,
        "machine": machine_info(args.threads),
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(__file__).resolve().parent / "results" / f"runtime_latency-{args.bundle.name}-{args.precision}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))


def to_markdown(results: dict) -> str:
    lines = [
        f"# Runtime latency: {results['model']}/{results['size']} {results['precision']}, {results['threads']} threads",
        "",
        f"`{results['command']}`",
        "",
        f"- import `edgeser.runtime`: {results['import_s']['median']:.3f} s (median of 7 fresh interpreters)",
        f"- cold start (import + load + first 2 s prediction): {results['cold_start_s']['median']:.3f} s",
        "",
        "| clip | end-to-end p50 ms | p95 ms | RTF | outside sessions p50 | stages p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["latency"].items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stages_ms_p50"].items())
        lines.append(
            f"| {name} | {row['end_to_end_ms']['p50']:.2f} | {row['end_to_end_ms']['p95']:.2f} | "
            f"{row['real_time_factor']:.4f} | {row['outside_sessions_share']['p50']:.1%} | {stages} |"
        )
    machine = results["machine"]
    lines += ["", f"Machine: {machine['cpu']} ({machine['logical_cores']} logical cores, "
              f"{', '.join(machine['cpu_flags'])}; load {machine['load_average']}), {machine['platform']}, "
              f"Python {machine['python']}, " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
