"""A/B of audio-encoder graphs: interleaved latency on one real-speech clip, feature cosine against the first graph
on held-out clips, and what onnxruntime's optimiser turned each graph into (float GEMMs left, fused kernels).

    python benchmarks/stage_ab.py fp32=build/cmgi-paper/fp32/audio_encoder.onnx \
        int8=build/cmgi-paper/int8/audio_encoder.onnx int8-trt=build/cmgi-paper/int8-trt/audio_encoder.onnx \
        --seconds 4.5 --threads 2 --rounds 10 --clips 6 --out benchmarks/results/stage_ab-cmgi-paper

Latency: every graph once per round, order reversed every other round, after `--warmup` runs (the runtime's
session settings). Cosine: the clips are held-out TESS utterances (fold 0 evaluation side) joined in pairs.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeser.audio import load_audio
from edgeser.bench.clips import load_speech
from edgeser.machine import machine_info
from edgeser.measures import cosine, interleaved_times, warm_up
from edgeser.reports import markdown_table, write_report
from edgeser.runtime.sessions import make_session


def optimised_ops(path: Path) -> dict[str, int]:
    """Op counts of the graph onnxruntime runs (all optimisations, this CPU)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "w.data")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(Path(tmp) / "optimised.onnx"), load_external_data=False)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    wanted = (
        "MatMul",
        "FusedMatMul",
        "Conv",
        "MatMulIntegerToFloat",
        "QLinearMatMul",
        "QLinearConv",
        "QuantizeLinear",
        "DequantizeLinear",
    )
    return {k: counts[k] for k in wanted if counts[k]}


def held_out(clips: int, data: Path) -> list[np.ndarray]:
    from edgeser.data import load_corpus
    from edgeser.data.splits import get_fold

    corpus = load_corpus(f"tess:{data / 'tess'}")
    utterances = corpus.subset(get_fold(corpus, 0).eval_ids)
    picks = utterances[:: max(1, len(utterances) // (2 * clips))][: 2 * clips]
    return [np.concatenate([load_audio(u.path) for u in picks[i : i + 2]]) for i in range(0, len(picks), 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "graphs", nargs="+", help="name=path of audio-encoder graphs; the first is the reference"
    )
    parser.add_argument("--seconds", type=float, default=4.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clips", type=int, default=6, help="Held-out clips for the feature cosine.")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("EDGESER_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, help="Write OUT.json and OUT.md.")
    parser.add_argument(
        "--spin", action="store_true", help="Workers spin during runs (the runtime's `spin`)."
    )
    args = parser.parse_args()
    graphs = {name: Path(path) for name, path in (g.split("=", 1) for g in args.graphs)}
    wave = load_speech([f"tess:{args.data / 'tess'}"], args.seconds + 1).clips(args.seconds, 1)[0]

    def feeds(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"waveform": w[None], "lengths": np.array([w.size], np.int64)}

    sessions = {name: make_session(path, None, args.threads, args.spin) for name, path in graphs.items()}
    runs = {name: (lambda s=session: s.run(None, feeds(wave))) for name, session in sessions.items()}
    warm_up(runs, args.warmup)
    load_before = [round(x, 2) for x in os.getloadavg()]
    times = interleaved_times(runs, args.rounds)
    load_after = [round(x, 2) for x in os.getloadavg()]
    clips = held_out(args.clips, args.data)
    outputs = {name: [s.run(None, feeds(c))[0] for c in clips] for name, s in sessions.items()}
    reference = next(iter(graphs))
    rows = {}
    for name, path in graphs.items():
        cosines = [cosine(a, b) for a, b in zip(outputs[reference], outputs[name])]
        p50 = float(np.median(times[name]))
        # each round's time against the reference's in the same round: steadier on a shared machine
        paired = np.array(times[name]) / np.array(times[reference])
        rows[name] = {
            "path": str(path),
            "p50_ms": p50,
            "min_ms": float(np.min(times[name])),
            "ratio": p50 / float(np.median(times[reference])),
            "cosine_mean": float(np.mean(cosines)),
            "paired_ratio": {
                "median": float(np.median(paired)),
                "quartiles": [float(q) for q in np.percentile(paired, [25, 75])],
            },
            "cosine_min": float(np.min(cosines)),
            "optimised_ops": optimised_ops(path),
        }
    machine = machine_info(args.threads)
    lines = [
        f"# Audio-encoder A/B, {args.seconds:g} s clip, {args.threads} threads, {args.rounds} interleaved rounds"
        f"{', spinning workers' if args.spin else ''}",
        "",
        (
            f"{machine['cpu']} ({machine['cpu_class']}; {', '.join(machine['cpu_flags'])}), load {load_before} -> "
            f"{load_after}; cosine over {len(clips)} held-out TESS clips of ~{np.mean([c.size for c in clips]) / 16e3:.1f} s."
        ),
        "",
    ]
    table = []
    for name, r in rows.items():
        ops = ", ".join(f"{k} {v}" for k, v in r["optimised_ops"].items())
        quartiles = " / ".join(f"{q:.3f}" for q in r["paired_ratio"]["quartiles"])
        table.append(
            [
                name,
                f"{r['p50_ms']:.0f}",
                f"{r['ratio']:.3f}",
                f"{r['paired_ratio']['median']:.3f} ({quartiles})",
                f"{r['cosine_mean']:.5f} / {r['cosine_min']:.5f}",
                ops,
            ]
        )
    lines += markdown_table(
        [
            "graph",
            "p50 ms",
            f"vs {reference}",
            f"per round vs {reference}: median (quartiles)",
            "feature cos mean / min",
            "onnxruntime runs",
        ],
        table,
    )
    command = "python " + " ".join(sys.argv)
    lines += ["", f"Command: `{command}`"]
    print("\n".join(lines))
    if args.out:
        write_report(
            args.out.parent,
            args.out.stem,
            {
                "rows": rows,
                "seconds": args.seconds,
                "threads": args.threads,
                "rounds": args.rounds,
                "spin": args.spin,
                "load_before": load_before,
                "load_after": load_after,
                "machine": machine,
                "command": command,
            },
            markdown="\n".join(lines) + "\n",
        )


if __name__ == "__main__":
    main()
