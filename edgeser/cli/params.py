"""Click parameter types for the bounds of `edgeser.runtime.options`: the command line checks an option with the
API's own bound and message, and a value past it is edgeser's error (one line naming the option, the bound and
why; exit 1 under `edgeser.cli.EdgeserGroup`). A leaf module, so command modules anywhere import it without
pulling in the whole command line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from edgeser.bundle import PRECISIONS
from edgeser.runtime.options import BACKENDS, FORCE_THREADS_ENV, OVERSUBSCRIBE, bounded, check_threads

F = TypeVar("F", bound=Callable[..., Any])


def _flag(param: click.Parameter | None, fallback: str) -> str:
    """The option as the user typed it (`--threads`), for messages."""
    opts = getattr(param, "opts", None)
    return opts[0] if opts else fallback


class Bounded(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """A number within `edgeser.runtime.options.LIMITS[limit]`, the API's own bounds. A value of the wrong type
    is a usage error (exit 2); one outside the bound is an OptionError naming the option, the bound and why
    (one line, exit 1, from `EdgeserGroup`)."""

    def __init__(self, limit: str, whole: bool = True) -> None:
        self.limit = limit
        self.whole = whole
        self.name = "integer" if whole else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = (click.INT if self.whole else click.FLOAT).convert(value, param, ctx)
        checked = bounded(_flag(param, self.limit), number, self.limit)
        return int(checked) if self.whole else checked


class Threads(click.ParamType):  # type: ignore[type-arg]
    """A thread count: 1 to the logical cores, unless forced (`--force-threads` or EDGESER_FORCE_THREADS=1);
    outside that an OptionError (one line, exit 1)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return check_threads(_flag(param, "threads"), click.INT.convert(value, param, ctx))


THREADS = Threads()


def _force_threads(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # The environment, so every thread count of the command honours it: the libraries it calls and the
    # processes it starts (server instances, benchmark probes) alike.
    if value:
        os.environ[FORCE_THREADS_ENV] = "1"


def force_threads_option(function: F) -> F:
    """`--force-threads`: allow more threads than logical cores (up to 4 per core); parsed before --threads."""
    return click.option(
        "--force-threads",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_force_threads,
        help=f"Allow more threads than this machine's logical cores (up to {OVERSUBSCRIBE} per "
        f"core; also {FORCE_THREADS_ENV}=1).",
    )(function)


def threads_option(
    help: str = "onnxruntime intra-op threads [at most the logical cores].", **kwargs: Any
) -> Callable[[F], F]:
    """`--threads N` (bounded by the logical cores) and its `--force-threads`."""

    def decorate(function: F) -> F:
        return force_threads_option(click.option("--threads", type=THREADS, help=help, **kwargs)(function))

    return decorate


def comma_list(value: str) -> list[str]:
    """The items of a comma list option (`--precisions fp32,int8`, `--op-types MatMul,Conv`), blanks dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def precisions_option(help: str) -> Callable[[F], F]:
    """`--precisions`: a comma list of bundle variants (check, bench), as a tuple, or None when not given."""

    def parse(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
        return tuple(comma_list(value)) if value else None

    return click.option("--precisions", callback=parse, help=help)


def precision_option(*names: str, help: str = "Bundle variant.", **kwargs: Any) -> Callable[[F], F]:
    """`--precision`: one of the bundle variants (`edgeser.bundle.Precision`, so every command offers the same
    ones), fp32 unless `default` says otherwise; `names` renames the parameter (e.g. "precisions")."""
    return click.option(
        "--precision",
        *names,
        type=click.Choice(PRECISIONS),
        help=help,
        **{"default": "fp32", "show_default": True, **kwargs},
    )


def backend_option(function: F) -> F:
    """`--backend`: what runs the bundle's stages (`edgeser.runtime.options.Backend`), onnxruntime on the CPU
    unless given."""
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="onnxruntime",
        show_default=True,
        help="onnxruntime on the CPU, onnxruntime's CUDA or TensorRT execution provider, or the TensorRT "
        "engines of `edgeser build-trt`.",
    )(function)
