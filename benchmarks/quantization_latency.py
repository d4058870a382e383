"""Latency and size of a bundle's variants against what a user would do instead, on one clip, batch 1.

    python benchmarks/quantization_latency.py --bundle build/cmgi-paper --data tess:../shared/data/tess \
        --threads 2 --clip-seconds 4.5 [--accuracy-bundle build/stfnet-fold0 --accuracy-data emodb:../shared/data/emodb]

Variants, end to end through the same runtime chaining (`Pipeline.run_stages`, CTC decode and tokenisation
included): PyTorch float (the bundle's source weights), onnxruntime fp32, edgeser int8 (static QDQ), edgeser
int8-dynamic, and plain `onnxruntime.quantization.quantize_dynamic` with its default op types on the same fp32
graphs (the path Optimum's dynamic quantizer takes). Rounds are interleaved (one run of each variant per round)
so background load spreads evenly over the variants; the machine's load average is recorded.

With `--accuracy-bundle`, edgeser's int8 and plain `quantize_dynamic` are also compared on that (trained)
bundle's evaluation split: label agreement with fp32, logit cosine, UA, and end-to-end latency.

Writes `benchmarks/results/quantization_latency.{json,md}`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeser.quantize.check import machine_info, percentiles, torch_stage_times

from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.runtime.pipeline import Pipeline
from edgeser.runtime.sessions import make_session

RESULTS = REPO / "benchmarks" / "results"


def speech_clip(data_spec: str | None, seconds: float) -> tuple[np.ndarray, str]:
    """A real-speech clip of exactly `seconds` (consecutive corpus clips joined), or a synthetic voiced tone."""
    samples = round(seconds * SAMPLE_RATE)
    if data_spec:
        from edgeser.data import load_corpus

        corpus = load_corpus(data_spec)
        parts, total, used = [], 0, []
        for utt in corpus.utterances[::97]:
            wave = load_audio(utt.path)
            parts.append(wave)
            used.append(utt.id)
            total += wave.size
            if total >= samples:
                break
        return np.concatenate(parts)[:samples].astype(np.float32), f"{data_spec}: {' + '.join(used)}"
    t = np.arange(samples) / SAMPLE_RATE
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return wave.astype(np.float32), "synthetic voiced tone"


def plain_dynamic(bundle: Path, workdir: Path) -> dict[str, Path]:
    """`quantize_dynamic(fp32, out)` with onnxruntime's defaults (all supported op types), per stage."""
    import logging

    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    pipe_manifest = Pipeline.load(bundle, "fp32").manifest
    paths = {}
    for stage, entry in pipe_manifest.precisions["fp32"].items():
        out = workdir / f"{stage}.dynamic-default.onnx"
        quantize_dynamic(str(bundle / entry.path), str(out))
        paths[stage] = out
    return paths


def pipeline_with(bundle: Path, paths: dict[str, Path], threads: int) -> Pipeline:
    pipe = Pipeline.load(bundle, "fp32", threads=threads)
    pipe.sessions = {stage: make_session(path, None, threads) for stage, path in paths.items()}
    return pipe


class TorchRunner:
    """The bundle's PyTorch model run stage by stage like the runtime (batch 1, its own CTC transcript)."""

    def __init__(self, bundle: Path, threads: int) -> None:
        import torch
        from edgeser.export.parity import reference_model

        torch.set_num_threads(threads)
        self.model = reference_model(bundle, None).eval()
        prepare = getattr(self.model, "prepare_for_export", None)
        if prepare is not None:
            prepare()
        self.size = int(sum(p.numel() * p.element_size() for p in self.model.parameters()))

    def __call__(self, wave: np.ndarray) -> dict[str, float]:
        import torch

        with torch.inference_mode():
            marks, _ = torch_stage_times(self.model, wave)
        return {k: v * 1e3 for k, v in marks.items()}


def bundle_bytes(bundle: Path, precision: str) -> int:
    return sum(e.bytes for e in Pipeline.load(bundle, "fp32").manifest.precisions[precision].values())


def latency_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    bundle = Path(args.bundle)
    wave, source = speech_clip(args.data, args.clip_seconds)
    manifest = Pipeline.load(bundle, "fp32").manifest
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=bundle))
    runners: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    notes: dict[str, str] = {}
    try:
        print("quantize_dynamic with default op types ...", file=sys.stderr)
        started = time.perf_counter()
        plain = plain_dynamic(bundle, workdir)
        notes["quantize_dynamic default"] = (
            f"onnxruntime quantize_dynamic(model, out) defaults on the fp32 stage graphs "
            f"({time.perf_counter() - started:.0f} s to write)")
        sizes["quantize_dynamic default"] = sum(p.stat().st_size for p in plain.values())
        if not args.no_torch:
            torch_runner = TorchRunner(bundle, args.threads)
            runners["pytorch float"] = torch_runner
            sizes["pytorch float"] = torch_runner.size
            notes["pytorch float"] = "size: parameter bytes"
        for precision in ("fp32", "int8", "int8-dynamic"):
            if precision in manifest.precisions:
                name = f"ort {precision}" if precision == "fp32" else f"edgeser {precision}"
                runners[name] = Pipeline.load(bundle, precision, threads=args.threads)
                sizes[name] = bundle_bytes(bundle, precision)
        runners["quantize_dynamic default"] = pipeline_with(bundle, plain, args.threads)

        def once(runner: Any) -> tuple[float, dict[str, float]]:
            started = time.perf_counter()
            if isinstance(runner, Pipeline):
                stages = runner.run_stages([wave]).timings_ms
            else:
                stages = runner(wave)
            return (time.perf_counter() - started) * 1e3, stages

        for name, runner in runners.items():
            print(f"warming up {name}", file=sys.stderr)
            for _ in range(args.warmup):
                once(runner)
        totals: dict[str, list[float]] = {name: [] for name in runners}
        stage_times: dict[str, dict[str, list[float]]] = {name: {} for name in runners}
        load_before = os.getloadavg()
        for round_index in range(args.runs):
            order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
            for name in order:
                total, stages = once(runners[name])
                totals[name].append(total)
                for stage, ms in stages.items():
                    stage_times[name].setdefault(stage, []).append(ms)
            print(f"round {round_index + 1}/{args.runs}: "
                  + ", ".join(f"{n} {totals[n][-1]:.0f} ms" for n in runners), file=sys.stderr)
        load_after = os.getloadavg()
    finally:
        runners.clear()
        gc.collect()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    results = {
        name: {"end_to_end_ms": percentiles(totals[name]), "rtf_p50": percentiles(totals[name])["p50"] / 1e3
               / args.clip_seconds, "stages_ms": {s: percentiles(v) for s, v in stage_times[name].items()},
               "bytes": sizes.get(name), "note": notes.get(name, "")}
        for name in totals
    }
    p50 = {name: r["end_to_end_ms"]["p50"] for name, r in results.items()}
    fp32_bytes = sizes["ort fp32"]
    targets = {}
    if "edgeser int8" in p50:
        targets = {
            "int8_vs_ort_fp32_speedup": p50["ort fp32"] / p50["edgeser int8"],
            "int8_vs_pytorch_speedup": p50["pytorch float"] / p50["edgeser int8"] if "pytorch float" in p50 else None,
            "int8_size_fraction_of_fp32": sizes["edgeser int8"] / fp32_bytes,
            "int8_vs_quantize_dynamic_default_speedup": p50["quantize_dynamic default"] / p50["edgeser int8"],
        }
        targets["met"] = {
            "int8 >= 2x ort fp32": targets["int8_vs_ort_fp32_speedup"] >= 2.0,
            "int8 >= 3x pytorch": (targets["int8_vs_pytorch_speedup"] or 0) >= 3.0,
            "int8 size <= 30% fp32": targets["int8_size_fraction_of_fp32"] <= 0.30,
            "int8 faster than quantize_dynamic default": targets["int8_vs_quantize_dynamic_default_speedup"] > 1.0,
        }
    return {
        "bundle": str(bundle), "model": f"{manifest.model}/{manifest.size}",
        "source": manifest.source_checkpoint.get("kind"), "clip": {"seconds": args.clip_seconds, "source": source},
        "settings": {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "batch": 1,
                     "interleaved_rounds": True, "load_average_before": load_before, "load_average_after": load_after},
        "int8_settings": {k: v for k, v in manifest.extra.get("quantization", {}).get("int8", {}).items()
                          if k not in ("stages", "calibration")},
        "results": results, "targets": targets,
    }


def accuracy_comparison(args: argparse.Namespace) -> dict[str, Any]:
    """edgeser int8 vs plain quantize_dynamic on a trained bundle's evaluation split (agreement, cosine, UA)."""
    from edgeser.calibrate.cache import default_fold
    from edgeser.data import load_corpus
    from edgeser.data.splits import get_fold
    from edgeser.metrics import classification_report

    bundle = Path(args.accuracy_bundle)
    fp32 = Pipeline.load(bundle, "fp32", threads=args.threads)
    corpus = load_corpus(args.accuracy_data)
    fold = get_fold(corpus, default_fold(fp32.manifest.source_checkpoint, corpus.name) if args.accuracy_fold is None
                    else args.accuracy_fold)
    known = {label: i for i, label in enumerate(fp32.manifest.labels)}
    utterances = [u for u in corpus.subset(fold.eval_ids) if u.label in known]
    waves = [load_audio(u.path) for u in utterances]
    labels = [known[u.label] for u in utterances]
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=bundle))
    try:
        candidates = {"ort fp32": fp32, "edgeser int8": Pipeline.load(bundle, "int8", threads=args.threads),
                      "quantize_dynamic default": pipeline_with(bundle, plain_dynamic(bundle, workdir), args.threads)}
        if "int8-dynamic" in fp32.manifest.precisions:
            candidates["edgeser int8-dynamic"] = Pipeline.load(bundle, "int8-dynamic", threads=args.threads)
        outputs: dict[str, list[np.ndarray]] = {}
        times: dict[str, list[float]] = {}
        for name, pipe in candidates.items():
            pipe.run_stages([waves[0]])
            outputs[name], times[name] = [], []
            for wave in waves:
                started = time.perf_counter()
                outputs[name].append(pipe.run_stages([wave]).logits[0])
                times[name].append((time.perf_counter() - started) * 1e3)
    finally:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    reference = outputs["ort fp32"]
    table = {}
    for name, logits in outputs.items():
        predictions = [int(np.argmax(x)) for x in logits]
        cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(reference, logits)]
        table[name] = {
            "agreement_with_fp32": float(np.mean([p == int(np.argmax(r)) for p, r in zip(predictions, reference)])),
            "logit_cosine_mean": float(np.mean(cos)), "logit_cosine_min": float(np.min(cos)),
            "ua": classification_report(labels, predictions, len(known)).ua,
            "end_to_end_ms": percentiles(times[name]),
        }
    return {"bundle": str(bundle), "data": args.accuracy_data, "fold": fold.index, "held_out": fold.held_out,
            "clips": len(waves), "results": table}


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lat = report["latency"]
    settings = lat["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())

    def load(values: list[float]) -> str:
        return "/".join(f"{x:.1f}" for x in values)

    lines = [
        "# Quantisation latency",
        "",
        (f"{lat['model']} ({lat['source']}) from `{lat['bundle']}`, one {lat['clip']['seconds']} s clip "
         f"({lat['clip']['source']}), batch 1, {settings['threads']} threads, {settings['warmup']} warm-up runs, "
         f"{settings['runs']} interleaved rounds. {m['cpu']} ({m['logical_cores']} logical cores; "
         f"{', '.join(m['cpu_flags'])}); load average before/after {load(settings['load_average_before'])} / "
         f"{load(settings['load_average_after'])}; {versions}."),
        "",
        "| variant | size MB | end to end p50 ms | p95 | mean | RTF p50 | audio_encoder p50 | text_encoder p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in lat["results"].items():
        e2e, stages = r["end_to_end_ms"], r["stages_ms"]
        lines.append(
            f"| {name} | {(r['bytes'] or 0) / 1e6:.0f} | {e2e['p50']:.0f} | {e2e['p95']:.0f} | {e2e['mean']:.0f} "
            f"| {r['rtf_p50']:.3f} | {stages.get('audio_encoder', {}).get('p50', float('nan')):.0f} "
            f"| {stages.get('text_encoder', {}).get('p50', float('nan')):.1f} |")
    t = lat.get("targets") or {}
    if t:
        summary = (f"int8 vs ort fp32: {t['int8_vs_ort_fp32_speedup']:.2f}x; vs PyTorch: "
                   f"{(t['int8_vs_pytorch_speedup'] or float('nan')):.2f}x; vs quantize_dynamic default: "
                   f"{t['int8_vs_quantize_dynamic_default_speedup']:.2f}x; int8 size "
                   f"{t['int8_size_fraction_of_fp32']:.1%} of fp32.")
        verdicts = "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in t["met"].items())
        lines += ["", summary, "", f"Targets: {verdicts}"]
    notes = [f"- {name}: {r['note']}" for name, r in lat["results"].items() if r["note"]]
    lines += ["", *notes, "", f"int8 settings: `{json.dumps(lat['int8_settings'])}`"]
    acc = report.get("accuracy")
    if acc:
        lines += ["", (f"## Accuracy side by side: `{acc['bundle']}` on `{acc['data']}` fold {acc['fold']} "
                       f"({acc['held_out']}), {acc['clips']} evaluation clips"), "",
                  "| variant | agreement with fp32 | logit cosine mean / min | UA | end to end p50 ms |",
                  "|---|---|---|---|---|"]
        for name, r in acc["results"].items():
            lines.append(f"| {name} | {100 * r['agreement_with_fp32']:.2f} % | {r['logit_cosine_mean']:.5f} / "
                         f"{r['logit_cosine_min']:.5f} | {100 * r['ua']:.2f} | {r['end_to_end_ms']['p50']:.2f} |")
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="build/cmgi-paper")
    parser.add_argument("--data", help="Corpus spec for a real-speech clip (else a synthetic tone).")
    parser.add_argument("--clip-seconds", type=float, default=4.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="Skip PyTorch float.")
    parser.add_argument("--accuracy-bundle", help="A trained bundle with an int8 variant for the accuracy comparison.")
    parser.add_argument("--accuracy-data", help="Its corpus spec.")
    parser.add_argument("--accuracy-fold", type=int)
    parser.add_argument("--out", default=str(RESULTS / "quantization_latency"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "machine": machine_info(args.threads)}
    report["latency"] = latency_benchmark(args)
    if args.accuracy_bundle and args.accuracy_data:
        report["accuracy"] = accuracy_comparison(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(to_markdown(report), encoding="utf-8")
    print(to_markdown(report))


if __name__ == "__main__":
    main()
