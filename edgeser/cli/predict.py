"""`edgeser predict`: one line (or JSON object) per file; bad files are reported and the rest still run."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from edgeser.bundle import Precision
from edgeser.cli.params import backend_option, precision_option, threads_option
from edgeser.cli.ray_options import predict_on_ray, ray_option, ray_scoring_options
from edgeser.runtime.options import Backend

# Below this speech ratio the text output warns that the clip holds (almost) no voice.
LITTLE_SPEECH = 0.1


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("files", nargs=-1)
@precision_option()
@threads_option()
@backend_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--long",
    "long_audio",
    is_flag=True,
    help="Find the utterances of long recordings (Silero VAD); print "
    "a timeline, or 'no speech found' (exit 0) where there is none.",
)
@ray_option
@ray_scoring_options
def predict_command(
    bundle: Path,
    files: tuple[str, ...],
    precision: Precision,
    threads: int | None,
    backend: Backend,
    as_json: bool,
    long_audio: bool,
    ray_address: str | None,
    out: Path | None,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    batch_size: int,
    unordered: bool,
) -> None:
    """Predict the emotion (and transcript) of each FILE; bad files are reported and the rest still run.

    `--json` gives each clip's speech_ratio (Silero VAD): near 0 for noise, hum, DC or clicks.

    With `--ray [ADDRESS] SPEC_OR_MANIFEST --out results.parquet`, score a whole corpus on Ray instead.
    """
    from edgeser.errors import EdgeserError
    from edgeser.runtime import Pipeline

    if ray_address is not None:
        predict_on_ray(
            bundle,
            ray_address,
            files,
            out,
            precision,
            as_json,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            unordered=unordered,
        )
        return
    if not files:
        raise click.UsageError("give at least one FILE (or --ray SPEC --out results.parquet for a corpus)")

    pipe = Pipeline.load(bundle, precision, threads=threads, backend=backend)
    failures = 0
    for name in files:
        try:
            if long_audio:
                timeline = pipe.long(name)
                if as_json:
                    click.echo(json.dumps({"file": name, **asdict(timeline)}, ensure_ascii=False))
                elif timeline.label is None:
                    click.echo(f"{name}\tno speech found\t0 segments ({timeline.duration_s:.2f} s)")
                else:
                    click.echo(
                        f"{name}\t{timeline.label}\t{timeline.probabilities[timeline.label]:.3f}\t"
                        f"{len(timeline.segments)} segments"
                    )
                    for seg in timeline.segments:
                        p = seg.prediction
                        click.echo(
                            f"  {seg.start_s:7.2f}-{seg.end_s:7.2f}\t{p.label}\t{p.confidence:.3f}\t"
                            f"{p.transcript or ''}"
                        )
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
            if result.speech_ratio is not None and result.speech_ratio < LITTLE_SPEECH:
                click.secho(
                    f"warning: {name}: {100 * result.speech_ratio:.0f} % of it is speech (Silero VAD): its "
                    "label may mean nothing",
                    fg="yellow",
                    err=True,
                )
    if failures:
        click.secho(f"{failures} of {len(files)} file(s) failed", fg="red", err=True)
        sys.exit(1)


def register(main: click.Group) -> None:
    main.add_command(predict_command)
