"""The commands' `edgeser.progress.Progress`: click's progress bars and lines, on stderr (stdout keeps the result)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import click

from edgeser.progress import Progress

T = TypeVar("T")


class ClickProgress:
    """`click.echo(line, err=True)`; bars are `click.progressbar` on stderr (on a terminal: redrawn in place,
    with the current item's name where one is given; elsewhere: the label once)."""

    def __call__(self, line: str) -> None:
        click.echo(line, err=True)

    @contextmanager
    def bar(
        self, items: Sequence[T], label: str, item_label: Callable[[T], str] | None = None
    ) -> Iterator[Iterable[T]]:
        show = (lambda item: item_label(item) if item is not None else None) if item_label else None
        with click.progressbar(items, label=label, file=sys.stderr, item_show_func=show) as bar:
            yield bar


CLICK: Progress = ClickProgress()
