"""`edgeser check`: a bundle against the float model it came from (parity, every variant)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeser.cli import EdgeserGroup, emit_report
from edgeser.cli.params import Bounded, precisions_option, threads_option
from edgeser.cli.ray_options import check_on_ray, ray_option, ray_scoring_options

FRACTION = click.FloatRange(0.0, 1.0)


class CheckGroup(EdgeserGroup):
    """`edgeser check BUNDLE ...` (no subcommand) means `edgeser check variants BUNDLE ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["variants", *args]
        return super().parse_args(ctx, args)


@click.group(cls=CheckGroup)
def check() -> None:
    """Check a bundle against the PyTorch model it came from.

    `edgeser check BUNDLE --data SPEC` runs `check variants`: every variant on the evaluation split.
    """


@check.command("parity")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", required=True, help="Data spec of real clips to compare on.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Clips to use (evenly spread).",
)
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), help="PyTorch checkpoint [the bundle's source]."
)
@click.option(
    "--min-cosine",
    type=click.FloatRange(-1.0, 1.0),
    default=0.99999,
    show_default=True,
    help="Per-stage gate.",
)
@click.option(
    "--min-agreement", type=FRACTION, default=1.0, show_default=True, help="End-to-end label agreement gate."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
def check_parity_command(
    bundle: Path,
    data_spec: str,
    limit: int,
    checkpoint: Path | None,
    min_cosine: float,
    min_agreement: float,
    as_json: bool,
) -> None:
    """fp32 graphs in onnxruntime vs PyTorch on real clips: per-stage diff/cosine, end-to-end agreement."""
    from edgeser.checks.parity import check_parity
    from edgeser.cli.progress import CLICK

    report = check_parity(
        bundle,
        data_spec,
        limit=limit,
        checkpoint=checkpoint,
        min_cosine=min_cosine,
        min_agreement=min_agreement,
        progress=CLICK,
    )
    emit_report(report, as_json)
    click.echo(f"reports: {bundle / 'reports' / 'parity.md'} (and .json)", err=True)


@check.command("variants")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--data", "data_spec", required=True, help="Data spec of the corpus whose evaluation split to use."
)
@click.option(
    "--fold",
    "fold_index",
    type=click.IntRange(min=0),
    help="Evaluation fold [the checkpoint's fold on this corpus, else 0].",
)
@click.option("--limit", type=click.IntRange(min=1), help="Use N evaluation clips, evenly spread [all].")
@precisions_option("Comma list of ONNX variants to run [all present]; fp32 always runs.")
@click.option("--no-float", is_flag=True, help="Skip PyTorch float; compare with onnxruntime fp32 instead.")
@threads_option("Intra-op threads for onnxruntime and torch [library default; at most the logical cores].")
@click.option(
    "--warmup", type=Bounded("warmup"), default=3, show_default=True, help="Warm-up runs per variant."
)
@click.option(
    "--max-ua-drop",
    type=click.FloatRange(min=0),
    help="Gate: exit 1 if a variant loses more UA points than this vs float.",
)
@click.option(
    "--min-agreement",
    type=FRACTION,
    help="Gate: exit 1 if a variant agrees with float on less than this (0..1).",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
@ray_option
@ray_scoring_options
@click.option(
    "--min-ua", type=FRACTION, help="With --ray: exit 1 if UA (0..1) over the corpus is below this."
)
@click.option(
    "--max-errors", type=click.IntRange(min=0), help="With --ray: exit 1 if more clips than this fail."
)
def check_variants_command(
    bundle: Path,
    data_spec: str,
    fold_index: int | None,
    limit: int | None,
    precisions: tuple[str, ...] | None,
    no_float: bool,
    threads: int | None,
    warmup: int,
    max_ua_drop: float | None,
    min_agreement: float | None,
    no_plots: bool,
    as_json: bool,
    ray_address: str | None,
    out: Path | None,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    batch_size: int,
    unordered: bool,
    min_ua: float | None,
    max_errors: int | None,
) -> None:
    """Every variant (PyTorch float, fp32, int8, int8-dynamic, fp16) on the evaluation split: size, latency,
    real-time factor, UA/WA/F1 and CER/WER change, agreement and per-stage cosine; reports/ as JSON, MD, PNG.

    With `--ray [ADDRESS] --out results.parquet`, evaluate one variant (the first of --precisions, else fp32)
    over every clip of the corpus on Ray instead.
    """
    from edgeser.checks.fidelity import check_variants
    from edgeser.cli.progress import CLICK

    if ray_address is not None:
        precision = precisions[0] if precisions else "fp32"
        check_on_ray(
            bundle,
            ray_address,
            data_spec,
            out,
            precision,
            as_json,
            min_ua,
            max_errors,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            unordered=unordered,
        )
        return

    report = check_variants(
        bundle,
        data_spec,
        fold_index=fold_index,
        limit=limit,
        precisions=list(precisions) if precisions else None,
        include_float=not no_float,
        threads=threads,
        warmup=warmup,
        max_ua_drop=max_ua_drop,
        min_agreement=min_agreement,
        plots=not no_plots,
        progress=CLICK,
    )
    where = bundle / "reports"
    plots = ", ".join(Path(p).name for p in report.plots)
    click.echo(
        f"reports: {where / 'variants.md'} (and .json)" + (f"; plots in {where}: {plots}" if plots else ""),
        err=True,
    )
    emit_report(report, as_json)


def register(main: click.Group) -> None:
    main.add_command(check)
