"""The `edgeser` command line: one group, subcommands that import their heavy parts on use."""

from __future__ import annotations

import json
import sys
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


if __name__ == "__main__":
    main()
