"""A trained recipe over its speaker folds: every fold's checkpoint on its own held-out clips, pooled.

    python benchmarks/actor_folds.py --data 'multi:../shared/data?tess=0.25' \\
        --runs runs/cmgi-edge-t25-fold0 runs/cmgi-edge-t25-fold1 runs/cmgi-edge-t25-fold2 \\
        runs/cmgi-edge-t25-fold3 --out benchmarks/results/cmgi-edge-actor-folds

Each run (an `edgeser train` folder) is evaluated as deployed (`edgeser.training.batches.evaluate`: the stage
contract, the text branch on the model's own CTC transcript) on the evaluation split its provenance names. The
per-clip predictions of all folds are pooled, so every held-out speaker counts once. Reported over all held-out
clips and per corpus, on three label sets read from the same 8-way model, so they sit beside
`benchmarks/whisper_probe.py`'s rows:

- `ravdess8`: the model's own decisions;
- `seven`: calm folded into neutral, in the truth and in the decision (the model's 8-way argmax, then mapped);
- `four`: the clips of neutral, happy, sad and angry, each decided among those four classes (argmax over their
  four probabilities), as a 4-class model trained on them would be asked.

Where the exported model keeps its audio-only head (cmgi's statistics read-out, trained alone in phase 1 and
frozen after), the same tables are given for that head alone: the run's own audio-only ablation.

Writes OUT.json (per fold and pooled, the command, versions) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeser.data.multicorpus import LABEL_SETS, map_label
from edgeser.metrics import classification_report
from edgeser.reports import markdown_table, write_report


def label_set_metrics(
    name: str, labels: list[str], truth: list[int], probabilities: np.ndarray
) -> dict[str, Any]:
    """UA/WA/F1 of the pooled clips on label set `name`, read from the model's `labels` (see the module doc):
    each label maps as the corpus readers map it (`map_label`); clips whose truth the set drops are left out,
    and the decision is the argmax over the columns the set keeps, mapped the same way."""
    classes = LABEL_SETS[name]  # type: ignore[index]
    mapped = [map_label(label, name) for label in labels]  # type: ignore[arg-type]
    columns = [column for column, label in enumerate(mapped) if label is not None]
    keep = [row for row, t in enumerate(truth) if mapped[t] is not None]
    decided = [columns[int(i)] for i in probabilities[keep][:, columns].argmax(axis=1)]
    return classification_report(
        [classes.index(str(mapped[truth[row]])) for row in keep],
        [classes.index(str(mapped[column])) for column in decided],
        len(classes),
    ).to_dict()


def audio_only_probabilities(
    model: Any, audio: dict[str, np.ndarray], ids: list[str]
) -> list[list[float]] | None:
    """Class probabilities of the model's audio-only head (`acoustic_logits`) where the exported model keeps
    it (cmgi's statistics read-out: trained alone in phase 1, frozen after), clip by clip; else None."""
    import torch

    head = getattr(getattr(model, "fusion_head", None), "statistics", None)
    if head is None:
        return None
    rows = []
    with torch.no_grad():
        for clip_id in ids:
            wave = torch.from_numpy(audio[clip_id])[None]
            features, frames = model.audio_encoder(wave, torch.tensor([wave.shape[1]]))
            rows.append(torch.softmax(model.acoustic_logits(features, frames), dim=-1)[0].tolist())
    return rows


def evaluate_run(run: Path, data: str) -> dict[str, Any]:
    from edgeser.checkpoint import load_checkpoint
    from edgeser.data import load_corpus
    from edgeser.data.protocols import split_from_provenance
    from edgeser.training.batches import evaluate, load_clips

    info = json.loads((run / "checkpoint.json").read_text(encoding="utf-8"))
    corpus = load_corpus(data)
    split = split_from_provenance(corpus, info["provenance"])
    model = load_checkpoint(run)
    clips = load_clips(corpus.subset(split.eval_ids), corpus.labels, f"{run.name} evaluation")
    text_source = info.get("training", {}).get("text_source_eval", "asr")
    result = evaluate(model, clips, text_source=text_source, per_speaker=True)
    speakers = {c.id: c.speaker for c in clips}
    truth = {c.id: c.label for c in clips}
    audio_only = audio_only_probabilities(model, {c.id: c.audio for c in clips}, result.ids)
    return {
        "run": str(run),
        "fold": info["provenance"].get("fold"),
        "held_out": info["provenance"].get("held_out"),
        "labels": list(model.labels),
        "ids": result.ids,
        "speakers": [speakers[i] for i in result.ids],
        "truth": [truth[i] for i in result.ids],
        "probabilities": result.probabilities,
        "audio_only": audio_only,
        "metrics": {k: v for k, v in result.metrics.items() if k != "confusion"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the data spec the runs trained on")
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="edgeser train folders")
    parser.add_argument("--out", default="benchmarks/results/actor-folds", help="report path stem")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    missing = [str(run) for run in args.runs if not (run / "checkpoint.json").is_file()]
    if missing:
        parser.error(f"--runs: no checkpoint.json in {', '.join(missing)}")

    import torch

    from edgeser.machine import machine_info
    from edgeser.runtime.options import thread_count

    torch.set_num_threads(thread_count(most=max(1, args.threads)))
    started = time.time()
    folds = []
    for run in args.runs:
        print(f"evaluating {run}", file=sys.stderr)
        folds.append(evaluate_run(run, args.data))
    labels = folds[0]["labels"]
    if any(fold["labels"] != labels for fold in folds):
        parser.error("--runs: the runs have different label lists")
    truth = [t for fold in folds for t in fold["truth"]]
    heads = {"model": [p for fold in folds for p in fold["probabilities"]]}
    if all(fold["audio_only"] is not None for fold in folds):
        heads["audio-only head"] = [p for fold in folds for p in fold["audio_only"]]
    corpora = np.array([s.split("/", 1)[0] for fold in folds for s in fold["speakers"]])
    groups = {"all held-out clips": np.ones(len(truth), dtype=bool)}
    groups |= {f"{name} only": corpora == name for name in sorted(set(corpora))}
    pooled: dict[str, dict[str, Any]] = {}
    rows = []
    for head, values in heads.items():
        probabilities = np.array(values, dtype=np.float64)
        for group, mask in groups.items():
            picked = [t for t, keep in zip(truth, mask) if keep]
            for name in LABEL_SETS:
                figures = label_set_metrics(name, labels, picked, probabilities[mask])
                pooled.setdefault(head, {}).setdefault(group, {})[name] = {
                    k: figures[k] for k in ("ua", "wa", "macro_f1", "count")
                }
                rows.append(
                    [
                        head,
                        group,
                        name,
                        f"{figures['ua'] * 100:.1f}",
                        f"{figures['wa'] * 100:.1f}",
                        f"{figures['macro_f1'] * 100:.1f}",
                        str(figures["count"]),
                    ]
                )
    command = " ".join(["python", "benchmarks/actor_folds.py", *(argv or sys.argv[1:])])
    report = {
        "command": command,
        "data": args.data,
        "machine": machine_info(args.threads),
        "seconds": round(time.time() - started, 1),
        "labels": labels,
        "pooled": pooled,
        "folds": [
            {k: fold[k] for k in ("run", "fold", "held_out", "metrics")}
            | {"predictions": dict(zip(fold["ids"], np.argmax(fold["probabilities"], axis=1).tolist()))}
            for fold in folds
        ],
    }
    fold_rows = [
        [str(fold["fold"]), f"{fold['metrics']['ua'] * 100:.1f}"]
        + [f"{fold['metrics']['per_corpus'][c]['ua'] * 100:.1f}" for c in sorted(set(corpora))]
        + [f"{fold['metrics'].get('cer', float('nan')) * 100:.1f}", str(fold["metrics"]["count"])]
        for fold in folds
    ]
    lines = [
        "# A recipe over its speaker folds, pooled",
        "",
        f"Command: `{command}`",
        "",
        "Every fold's checkpoint on its own held-out speakers (text branch on its own CTC transcripts); the "
        "predictions of all folds pooled. `seven`: calm folded into neutral; `four`: clips of neutral, happy, "
        "sad and angry, decided among those four. `audio-only head`: the model's own audio-only head alone (for "
        "cmgi's statistics read-out: trained alone in phase 1 and frozen after, so the audio-only ablation of the "
        "same run).",
        "",
        *markdown_table(["head", "held out", "label set", "UA %", "WA %", "macro-F1 %", "clips"], rows),
        "",
        "Per fold (8 classes):",
        "",
        *markdown_table(
            ["fold", "UA %", *[f"{c} UA %" for c in sorted(set(corpora))], "CER %", "clips"], fold_rows
        ),
    ]
    out = Path(args.out)
    write_report(out.parent, out.stem, report, markdown="\n".join(lines) + "\n")
    print(out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
