"""The `edgeser` command line: one group, subcommands that import their heavy parts on use."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeser import __version__
from edgeser.errors import EdgeserError


class EdgeserGroup(click.Group):
    """A click group that turns edgeser errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeserError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@click.group(cls=EdgeserGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeser")
def main() -> None:
    """edgeser: speech emotion recognition fusion models from PyTorch to the edge."""


@main.group(cls=EdgeserGroup)
def data() -> None:
    """Inspect emotional-speech corpora (IEMOCAP, EMO-DB, TESS, RAVDESS, manifests)."""


@data.command("summary")
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-decode", is_flag=True, help="Read headers only; skip decoding and checking every clip.")
def data_summary(spec: str, as_json: bool, no_decode: bool) -> None:
    """Counts per label, speaker and session, durations, sample rates, and every bad or odd file.

    SPEC selects a corpus: iemocap:PATH[?improvised=1], emodb:PATH, tess:PATH, ravdess:PATH,
    manifest:FILE.csv|.jsonl (or just the manifest path).
    """
    from edgeser.data import load_corpus
    from edgeser.data.scan import format_summary, summarise

    corpus = load_corpus(spec)
    with click.progressbar(
        length=len(corpus), label=f"checking {corpus.name} audio", file=sys.stderr, show_pos=True
    ) as bar:
        summary = summarise(corpus, decode=not no_decode, on_each=lambda _: bar.update(1))
    if as_json:
        echo_json(summary.to_dict())
    else:
        click.echo(format_summary(summary))


@main.command("train")
@click.option("--model", "model_name", required=True, help="Zoo model: cmgi, gcf2net, mscnn_spu_att, saser, stfnet.")
@click.option("--size", default="small", show_default=True, help="Recipe size (small trains on CPU; paper needs GPUs).")
@click.option("--data", "data_spec", required=True, help="Data spec, e.g. emodb:../shared/data/emodb.")
@click.option("--fold", "fold_index", type=int, default=0, show_default=True, help="Held-out fold (speaker/session).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Checkpoint folder [runs/MODEL-SIZE-CORPUS-foldK].")
@click.option("--epochs", type=int, help="Override the recipe's epoch count.")
@click.option("--batch-size", type=int, help="Override the recipe's batch size.")
@click.option("--lr", type=float, help="Override the recipe's learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--limit", type=int, help="Use at most N training clips (smoke runs).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
def train_command(
    model_name: str, size: str, data_spec: str, fold_index: int, out_dir: Path | None, epochs: int | None,
    batch_size: int | None, lr: float | None, seed: int, device: str, limit: int | None, resume: bool,
) -> None:
    """Train a zoo model on one fold, evaluating UA/WA each epoch and keeping the best checkpoint."""
    from edgeser.data.spec import parse_spec
    from edgeser.training import train

    if out_dir is None:
        out_dir = Path("runs") / f"{model_name}-{size}-{parse_spec(data_spec)[0]}-fold{fold_index}"
    metrics = train(
        model_name, size, data_spec, fold_index, out_dir, seed=seed, device_name=device, resume=resume,
        overrides={"epochs": epochs, "batch_size": batch_size, "lr": lr}, limit=limit,
    )
    best = metrics["best"]
    click.echo(
        f"best epoch {best['epoch']}: UA {best['ua']:.4f} WA {best['wa']:.4f} F1 {best['macro_f1']:.4f}"
        + (f" CER {best['cer']:.3f}" if "cer" in best else "")
        + f" -> {out_dir}"
    )


@main.command("export")
@click.option("--model", "model_name", required=True, help="Zoo model: cmgi, gcf2net, mscnn_spu_att, saser, stfnet.")
@click.option("--size", default="small", show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Checkpoint folder from `edgeser train`.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Bundle folder [build/MODEL or build/MODEL-SIZE].")
@click.option("--random-weights", is_flag=True, help="Export freshly initialised weights (latency work only).")
def export_command(model_name: str, size: str, checkpoint: Path | None, out_dir: Path | None, random_weights: bool) -> None:
    """Export each stage as its own ONNX graph into a bundle with bundle.json and tokenizer.json."""
    from edgeser.export.exporter import export_bundle

    if out_dir is None:
        out_dir = Path("build") / (model_name if size == "small" else f"{model_name}-{size}")
    result = export_bundle(model_name, out_dir, size=size, checkpoint=checkpoint, random_weights=random_weights)
    stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in result.stages.items())
    click.echo(f"wrote {result.bundle} ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s: {stages}")


@main.group(cls=EdgeserGroup)
def check() -> None:
    """Check a bundle against the PyTorch model it came from."""


@check.command("parity")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", required=True, help="Data spec of real clips to compare on.")
@click.option("--limit", type=int, default=200, show_default=True, help="Clips to use (evenly spread).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="PyTorch checkpoint [the bundle's source].")
@click.option("--min-cosine", type=float, default=0.99999, show_default=True, help="Per-stage gate.")
@click.option("--min-agreement", type=float, default=1.0, show_default=True, help="End-to-end label agreement gate.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
def check_parity_command(
    bundle: Path, data_spec: str, limit: int, checkpoint: Path | None, min_cosine: float, min_agreement: float,
    as_json: bool,
) -> None:
    """fp32 graphs in onnxruntime vs PyTorch on real clips: per-stage diff/cosine, end-to-end agreement."""
    from dataclasses import asdict

    from edgeser.export.parity import check_parity

    report = check_parity(bundle, data_spec, limit=limit, checkpoint=checkpoint, min_cosine=min_cosine,
                          min_agreement=min_agreement)
    if as_json:
        echo_json(asdict(report))
    else:
        click.echo(report.to_markdown())
    if not report.passed:
        sys.exit(1)


@main.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("files", nargs=-1, required=True)
@click.option("--precision", default="fp32", show_default=True, help="Bundle variant: fp32, int8, int8-dynamic, fp16.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--long", "long_audio", is_flag=True, help="Split long recordings at pauses; print a timeline.")
def predict_command(bundle: Path, files: tuple[str, ...], precision: str, threads: int | None, as_json: bool,
                    long_audio: bool) -> None:
    """Predict the emotion (and transcript) of each FILE; bad files are reported and the rest still run."""
    from dataclasses import asdict

    from edgeser.runtime import Pipeline

    pipe = Pipeline.load(bundle, precision, threads=threads)
    failures = 0
    for name in files:
        try:
            if long_audio:
                timeline = pipe.long(name)
                if as_json:
                    click.echo(json.dumps({"file": name, **asdict(timeline)}, ensure_ascii=False))
                    continue
                click.echo(f"{name}\t{timeline.label}\t{timeline.probabilities[timeline.label]:.3f}\t"
                           f"{len(timeline.segments)} segments")
                for seg in timeline.segments:
                    p = seg.prediction
                    click.echo(f"  {seg.start_s:7.2f}-{seg.end_s:7.2f}\t{p.label}\t{p.confidence:.3f}\t{p.transcript or ''}")
                continue
            result = pipe(name)
        except EdgeserError as err:
            failures += 1
            if as_json:
                click.echo(json.dumps({"file": name, "error": str(err)}, ensure_ascii=False))
            else:
                click.secho(f"error: {err}", fg="red", err=True)
            continue
        if as_json:
            click.echo(json.dumps({"file": name, **asdict(result)}, ensure_ascii=False))
        else:
            transcript = f"\t{result.transcript}" if result.transcript is not None else ""
            click.echo(f"{name}\t{result.label}\t{result.confidence:.3f}{transcript}")
    if failures:
        click.secho(f"{failures} of {len(files)} file(s) failed", fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
