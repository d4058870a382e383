"""Progress of long library operations, one protocol: the library reports it, the command line draws it.

A function that takes a while (export, calibration capture, quantisation, checks, training, the demo) takes a
`progress: Progress` and never writes to the terminal itself:

    progress("running PyTorch float")                      # one line of progress
    with progress.bar(clips, "parity") as bar:             # walk an iterable under a progress bar
        for clip in bar: ...

The commands in `edgeser.cli` pass `edgeser.cli.progress.CLICK` (click's progress bars and lines on stderr);
the default here, `STDERR`, writes each line, and each bar's label once, to stderr: what click's bars print when
stderr is not a terminal. `SILENT` writes nothing. Any `Progress` is also a plain line callable
(`Callable[[str], None]`), which is all `edgeser bench` and `edgeser build-trt` take.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    """Where a long operation reports: lines, and progress bars over the items it walks through."""

    def __call__(self, line: str) -> None:
        """Report one line (a step started, a figure measured, a warning)."""

    def bar(
        self, items: Sequence[T], label: str, item_label: Callable[[T], str] | None = None
    ) -> AbstractContextManager[Iterable[T]]:
        """A context giving an iterable over `items`, drawn as a bar named `label`; `item_label` names the
        current item where the bar shows it."""


class LineProgress:
    """Lines on stderr (looked up at each write, so redirections and test captures see them); a bar is its
    label, written once when it starts."""

    def __call__(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    @contextmanager
    def bar(
        self, items: Sequence[T], label: str, item_label: Callable[[T], str] | None = None
    ) -> Iterator[Iterable[T]]:
        self(label)
        yield items


class SilentProgress:
    """Reports nothing (the training processes other than rank 0, tests, embedding applications)."""

    def __call__(self, line: str) -> None:
        return None

    @contextmanager
    def bar(
        self, items: Sequence[T], label: str, item_label: Callable[[T], str] | None = None
    ) -> Iterator[Iterable[T]]:
        yield items


STDERR: Progress = LineProgress()
SILENT: Progress = SilentProgress()
