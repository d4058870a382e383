"""`--ray` corpus scoring for `edgeser predict` and `edgeser check` (click options and the calls behind them).

    edgeser predict BUNDLE --ray [ADDRESS] SPEC_OR_MANIFEST --out results.parquet
    edgeser check BUNDLE --ray [ADDRESS] --data SPEC --out results.parquet

ADDRESS: omitted or `local` starts a local Ray instance; `auto` joins the cluster this machine belongs to
(`ray start`); `ray://HOST:PORT` or `HOST:PORT` names one.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeser.cli.params import Bounded, precision_option
from edgeser.errors import ClusterError

F = TypeVar("F", bound=Callable[..., Any])
_ADDRESS = re.compile(r"^(local|auto|ray://.+|[\w.\-]+:\d+)$")


def ray_option(function: F) -> F:
    """`--ray [ADDRESS]`: run on Ray (the value is optional)."""
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        help="Score on Ray: a local instance, or `auto` / ray://HOST:PORT for a cluster.",
    )(function)


def ray_scoring_options(function: F) -> F:
    """The options of a Ray scoring run (used with `--ray`)."""
    options = [
        click.option(
            "--out", type=click.Path(path_type=Path), help="Results file (Parquet), one row per clip."
        ),
        click.option(
            "--workers",
            type=Bounded("workers"),
            default=2,
            show_default=True,
            help="Ray actors, one Pipeline each.",
        ),
        click.option(
            "--cpus-per-worker",
            type=Bounded("cpus_per_worker", whole=False),
            default=1.0,
            show_default=True,
            help="CPUs each actor declares (also its onnxruntime threads).",
        ),
        click.option(
            "--gpus-per-worker",
            type=Bounded("gpus_per_worker", whole=False),
            default=0.0,
            show_default=True,
            help="GPUs each actor declares (> 0: CUDA execution provider).",
        ),
        click.option(
            "--batch-size",
            type=Bounded("batch_size"),
            default=8,
            show_default=True,
            help="Clips per batch (neighbours in duration).",
        ),
        click.option(
            "--unordered", is_flag=True, help="Write rows as they finish instead of in corpus order."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def resolve_target(ray_value: str, positional: tuple[str, ...] | list[str]) -> tuple[str, str]:
    """(address, data spec) from `--ray [ADDRESS] SPEC`: click gives a lone `--ray SPEC` to the option."""
    if _ADDRESS.match(ray_value) and len(positional) == 1:
        return ray_value, positional[0]
    if not positional:
        return "local", ray_value
    raise ClusterError(f"--ray takes one corpus spec or manifest, got {' '.join([ray_value, *positional])!r}")


def options_from(
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    batch_size: int,
    unordered: bool,
    address: str,
) -> Any:
    from edgeser.ray_scoring.jobs import RayOptions

    return RayOptions(
        address=address,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        batch_size=batch_size,
        keep_order=not unordered,
    )


def predict_on_ray(
    bundle: Path,
    ray_value: str,
    positional: tuple[str, ...],
    out: Path | None,
    precision: str,
    as_json: bool,
    **ray_options: Any,
) -> None:
    """The body of `edgeser predict --ray`: score the corpus, print a summary; exit 1 if any clip failed."""
    from edgeser.ray_scoring.jobs import score_corpus

    if out is None:
        raise click.UsageError("--ray needs --out results.parquet")
    address, spec = resolve_target(ray_value, positional)
    summary = score_corpus(
        bundle, spec, out, options_from(address=address, **ray_options), precision=precision
    )
    if as_json:
        click.echo(json.dumps(asdict(summary), indent=2))
    else:
        click.echo(
            f"{summary.clips} clips -> {out} ({summary.errors} errors) in {summary.seconds:.1f} s, "
            f"{summary.clips_per_second:.1f} clips/s on {summary.workers} worker(s)"
        )
    for example in summary.error_examples:
        click.secho(f"error: {example}", fg="red", err=True)
    if summary.errors:
        sys.exit(1)


def check_on_ray(
    bundle: Path,
    ray_value: str,
    data_spec: str,
    out: Path | None,
    precision: str,
    as_json: bool,
    min_ua: float | None,
    max_errors: int | None,
    **ray_options: Any,
) -> None:
    """The body of `edgeser check --ray`: score and evaluate the corpus; a missed gate exits 1."""
    from edgeser.ray_scoring.evaluate import evaluate_corpus

    if out is None:
        raise click.UsageError("--ray needs --out results.parquet")
    address, _ = resolve_target(ray_value, [data_spec])
    evaluation = evaluate_corpus(
        bundle,
        data_spec,
        out,
        options_from(address=address, **ray_options),
        precision=precision,
        min_ua=min_ua,
        max_errors=max_errors,
    )
    click.echo(json.dumps(asdict(evaluation), indent=2) if as_json else evaluation.to_markdown())
    if not evaluation.passed:
        sys.exit(1)


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("spec", nargs=-1)
@ray_option
@ray_scoring_options
@precision_option()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict_ray_command(
    bundle: Path,
    spec: tuple[str, ...],
    ray_address: str | None,
    precision: str,
    as_json: bool,
    out: Path | None,
    **ray_options: Any,
) -> None:
    """Score every clip of a corpus (spec or manifest) on Ray: `predict BUNDLE --ray [ADDRESS] SPEC --out FILE`."""
    if ray_address is None:
        raise click.UsageError("this command runs on Ray: give --ray [ADDRESS]")
    predict_on_ray(bundle, ray_address, spec, out, precision, as_json, **ray_options)


@click.command("check")
@click.argument("bundle", type=click.Path(path_type=Path))
@ray_option
@click.option(
    "--data", "data_spec", required=True, help="Data spec of the corpus to evaluate on (every clip)."
)
@ray_scoring_options
@precision_option()
@click.option("--min-ua", type=float, help="Gate: exit 1 if UA (0..1) is below this.")
@click.option("--max-errors", type=int, help="Gate: exit 1 if more clips than this fail.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_ray_command(
    bundle: Path,
    ray_address: str | None,
    data_spec: str,
    precision: str,
    min_ua: float | None,
    max_errors: int | None,
    as_json: bool,
    out: Path | None,
    **ray_options: Any,
) -> None:
    """Evaluate a bundle on every clip of a corpus on Ray: UA/WA/F1, CER/WER, one result row per clip."""
    if ray_address is None:
        raise click.UsageError("this command runs on Ray: give --ray [ADDRESS]")
    check_on_ray(bundle, ray_address, data_spec, out, precision, as_json, min_ua, max_errors, **ray_options)
