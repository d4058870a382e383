"""The `edgeser` command line: one group, subcommands that import their heavy parts on use."""

from __future__ import annotations

import json
import os
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
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as err:  # an edgeser bug or a library failure: one line, traceback on request
            if os.environ.get("EDGESER_DEBUG"):
                raise
            message = " ".join(str(err).split())[:300]
            click.secho(f"error: unexpected {type(err).__name__}: {message} (set EDGESER_DEBUG=1 for the traceback)",
                        fg="red", err=True)
            sys.exit(2)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def emit_report(report: Any, as_json: bool) -> None:
    """Print a check report (a dataclass with `to_markdown` and `passed`); a failed gate exits 1."""
    from dataclasses import asdict

    if as_json:
        echo_json(asdict(report))
    else:
        click.echo(report.to_markdown())
    if not report.passed:
        sys.exit(1)


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


class CheckGroup(EdgeserGroup):
    """`edgeser check BUNDLE ...` (no subcommand) means `edgeser check variants BUNDLE ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["variants", *args]
        return super().parse_args(ctx, args)


@main.group(cls=CheckGroup)
def check() -> None:
    """Check a bundle against the PyTorch model it came from.

    `edgeser check BUNDLE --data SPEC` runs `check variants`: every variant on the evaluation split.
    """


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

    from edgeser.export.parity import check_parity

    report = check_parity(bundle, data_spec, limit=limit, checkpoint=checkpoint, min_cosine=min_cosine,
                          min_agreement=min_agreement)
    emit_report(report, as_json)


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


# ------------------------------------------------------------------------------ calibration, quantisation, checks


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@main.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", required=True, help="Data spec of the corpus to calibrate on.")
@click.option("--fold", "fold_index", type=int, help="Fold whose evaluation split is kept out [the checkpoint's, else 0].")
@click.option("--samples", type=int, default=64, show_default=True, help="Calibration clips (label/length stratified).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ids", "ids_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Use these utterance ids (one a line) instead; refused if any is in the evaluation split.")
@click.option("--buckets", default="2,4", show_default=True, help="Fixed waveform lengths in seconds.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the cached provenance as JSON.")
def calibrate_command(bundle: Path, data_spec: str, fold_index: int | None, samples: int, seed: int,
                      ids_file: Path | None, buckets: str, threads: int | None, as_json: bool) -> None:
    """Pick calibration clips off the evaluation split, capture each stage's real inputs, cache them in BUNDLE."""
    from edgeser.calibrate import calibrate_bundle
    from edgeser.errors import DataError

    ids = None
    if ids_file is not None:
        if not ids_file.is_file():
            raise DataError(f"{ids_file}: ids file not found")
        ids = [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        bucket_s = tuple(float(b) for b in _csv(buckets))
    except ValueError:
        raise click.BadParameter(f"{buckets!r}: give seconds like 2,4", param_hint="--buckets") from None
    cache = calibrate_bundle(bundle, data_spec, fold_index=fold_index, samples=samples, seed=seed, ids=ids,
                             buckets_s=bucket_s, threads=threads)
    p = cache.provenance
    if as_json:
        echo_json(p)
        return
    groups = ", ".join(f"{k} x{v}" for k, v in p["groups"].items())
    click.echo(f"cached {p['count']} calibration clips of {p['corpus']} ({p['pool']}): {groups} -> {cache.root}")


@main.command("quantize")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--int8", "int8", is_flag=True, help="Static INT8 (QDQ, per-channel weights) from the calibration cache.")
@click.option("--int8-dynamic", "int8_dynamic", is_flag=True, help="Dynamic INT8 (MatMul weights; no calibration).")
@click.option("--fp16", "fp16", is_flag=True, help="FP16 for GPUs (sensitive ops and the front end stay FP32).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="percentile",
              show_default=True, help="Calibration method of --int8.")
@click.option("--exclude", multiple=True, help="Keep these in float instead of the defaults: categories "
              "(frontend, first-conv, layernorm, softmax, residual-add, gelu, narrow, grouped-conv, "
              "gather-activations), node-name globs, or 'none'. Repeatable.")
@click.option("--min-width", type=int, help="MatMul/Gemm/Conv nodes with fewer input features or output "
              "channels stay float (the `narrow` category) [64; 0 quantises every width].")
@click.option("--op-types", help="Op types --int8 quantises [MatMul,Conv,Gemm,Gather].")
@click.option("--dynamic-op-types", default="MatMul", show_default=True, help="Op types --int8-dynamic quantises.")
@click.option("--max-ua-drop", type=float, help="Accuracy-controlled --int8: keep the most sensitive stages / node "
              "groups in float until the worst-case UA drop (class-balanced label-flip rate against fp32) on "
              "calibration-side clips is within X points.")
@click.option("--min-agreement", type=float, help="With --max-ua-drop: also require this label agreement (0..1).")
@click.option("--data", "data_spec", help="Corpus for --max-ua-drop [the calibration corpus].")
@click.option("--fold", "fold_index", type=int, help="Fold for --max-ua-drop [the calibration fold].")
@click.option("--validation-clips", type=int, default=64, show_default=True, help="Clips --max-ua-drop measures on.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads (for --max-ua-drop).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def quantize_command(
    bundle: Path, int8: bool, int8_dynamic: bool, fp16: bool, method: str, exclude: tuple[str, ...],
    op_types: str | None, dynamic_op_types: str, min_width: int | None, max_ua_drop: float | None,
    min_agreement: float | None, data_spec: str | None, fold_index: int | None, validation_clips: int,
    threads: int | None, as_json: bool,
) -> None:
    """Write INT8 / dynamic INT8 / FP16 variants into BUNDLE (int8/, int8-dynamic/, fp16/), listed in bundle.json."""
    from dataclasses import asdict

    from edgeser.bundle import read_manifest
    from edgeser.quantize import Int8Options, convert_fp16, quantize_int8, quantize_int8_dynamic
    from edgeser.quantize.graph import DEFAULT_OP_TYPES, NARROW_WIDTH

    if max_ua_drop is not None:
        int8 = True
    if not (int8 or int8_dynamic or fp16):
        raise click.UsageError("choose at least one of --int8, --int8-dynamic, --fp16")
    excluded = tuple(exclude) if exclude else None
    min_width = NARROW_WIDTH if min_width is None else min_width
    written: dict[str, Any] = {}
    if int8:
        chosen_ops = tuple(_csv(op_types)) if op_types else DEFAULT_OP_TYPES
        options = Int8Options(method=method, op_types=chosen_ops, exclude=excluded,
                              min_width=min_width)
        if max_ua_drop is not None:
            from edgeser.quantize.controlled import quantize_controlled

            report = quantize_controlled(bundle, max_ua_drop, data_spec=data_spec, fold_index=fold_index,
                                         options=options, validation_clips=validation_clips,
                                         min_agreement=min_agreement, threads=threads)
            written["controlled"] = asdict(report)
            if not as_json:
                click.echo(report.to_markdown())
        else:
            quantize_int8(bundle, options)
    if int8_dynamic:
        quantize_int8_dynamic(bundle, op_types=tuple(_csv(dynamic_op_types)), exclude=excluded,
                              min_width=min_width)
    if fp16:
        convert_fp16(bundle, exclude=excluded)
    manifest = read_manifest(bundle)
    fp32_bytes = sum(e.bytes for e in manifest.precisions["fp32"].values())
    for precision in [p for p, on in (("int8", int8), ("int8-dynamic", int8_dynamic), ("fp16", fp16)) if on]:
        files = manifest.precisions[precision]
        settings = manifest.extra.get("quantization", {}).get(precision, {})
        size = sum(e.bytes for e in files.values())
        written[precision] = {"bytes": size, "fraction_of_fp32": size / fp32_bytes, "settings": settings}
        if not as_json:
            stages = settings.get("stages", {})
            parts = []
            for stage, r in stages.items():
                reasons = ", ".join(sorted(set(r["float_nodes"].values())))
                parts.append(f"{stage} {r['precision']} ({r['quantized_nodes']} quantised"
                             + (f", float: {reasons})" if reasons else ")"))
            click.echo(f"{precision}: {size / 1e6:.1f} MB ({size / fp32_bytes:.0%} of fp32) -> {bundle / precision}; "
                       + "; ".join(parts))
            if stages and precision != "fp16" and not any(r["quantized_nodes"] for r in stages.values()):
                click.echo(f"note: {precision} quantised no node (every one is excluded or narrower than "
                           f"--min-width {min_width}): it computes what fp32 does", err=True)
    if as_json:
        echo_json(written)


@check.command("variants")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", required=True, help="Data spec of the corpus whose evaluation split to use.")
@click.option("--fold", "fold_index", type=int, help="Evaluation fold [the checkpoint's fold on this corpus, else 0].")
@click.option("--limit", type=int, help="Use N evaluation clips, evenly spread [all].")
@click.option("--precisions", help="Comma list of ONNX variants to run [all present]; fp32 always runs.")
@click.option("--no-float", is_flag=True, help="Skip PyTorch float; compare with onnxruntime fp32 instead.")
@click.option("--threads", type=int, help="Intra-op threads for onnxruntime and torch [library default].")
@click.option("--warmup", type=int, default=3, show_default=True, help="Warm-up runs per variant.")
@click.option("--latency-clips", type=int, default=100, show_default=True, help="Clips timed for PyTorch float.")
@click.option("--max-ua-drop", type=float, help="Gate: exit 1 if a variant loses more UA points than this vs float.")
@click.option("--min-agreement", type=float,
              help="Gate: exit 1 if a variant agrees with float on less than this (0..1).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
def check_variants_command(
    bundle: Path, data_spec: str, fold_index: int | None, limit: int | None, precisions: str | None, no_float: bool,
    threads: int | None, warmup: int, latency_clips: int, max_ua_drop: float | None, min_agreement: float | None,
    no_plots: bool, as_json: bool,
) -> None:
    """Every variant (PyTorch float, fp32, int8, int8-dynamic, fp16) on the evaluation split: size, latency,
    real-time factor, UA/WA/F1 and CER/WER change, agreement and per-stage cosine; reports/ as JSON, MD, PNG."""

    from edgeser.quantize.check import check_variants

    report = check_variants(
        bundle, data_spec, fold_index=fold_index, limit=limit, precisions=_csv(precisions) if precisions else None,
        include_float=not no_float, threads=threads, warmup=warmup, latency_clips=latency_clips,
        max_ua_drop=max_ua_drop, min_agreement=min_agreement, plots=not no_plots,
    )
    emit_report(report, as_json)

if __name__ == "__main__":
    main()
