"""`edgeser data summary`: what a corpus holds, and every bad or odd file in it."""

from __future__ import annotations

import sys

import click


@click.group()
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
    from edgeser.cli import echo_json
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


def register(main: click.Group) -> None:
    main.add_command(data)
