"""`edgeser export-triton` and `edgeser serve` (click commands; the `edgeser` group registers them)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from edgeser.cli.params import Bounded, precision_option, threads_option
from edgeser.errors import ServingError
from edgeser.serving.repository import BACKENDS as TRITON_BACKENDS
from edgeser.serving.repository import TritonBackend


@click.command("export-triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@precision_option()
@click.option(
    "--backend",
    type=click.Choice(TRITON_BACKENDS),
    default="onnxruntime",
    show_default=True,
    help="What runs the stage models: Triton's onnxruntime_onnx or tensorrt_plan "
    "platform, or onnxruntime inside the Python backend.",
)
@click.option("--engines", help="TensorRT target folder under BUNDLE/trt/ [the only one there].")
@click.option(
    "--max-batch",
    type=Bounded("max_batch"),
    default=None,
    help="max_batch_size of every model [16; TensorRT: the engines' batch maximum].",
)
@click.option(
    "--max-delay-ms", type=float, default=5.0, show_default=True, help="Dynamic batching queue delay."
)
@click.option(
    "--instances", type=Bounded("instances"), default=1, show_default=True, help="Instances of each model."
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export_triton_command(
    bundle: Path,
    out: Path,
    precision: str,
    backend: TritonBackend,
    engines: str | None,
    max_batch: int | None,
    max_delay_ms: float,
    instances: int,
    as_json: bool,
) -> None:
    """Write a Triton Inference Server model repository for BUNDLE at OUT (replaced whole)."""
    from dataclasses import asdict

    from edgeser.serving.repository import RepositoryOptions, write_model_repository

    options = RepositoryOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, instances=instances)
    written = write_model_repository(
        bundle, out, precision=precision, backend=backend, options=options, engines=engines
    )
    if as_json:
        click.echo(json.dumps(asdict(written), indent=2))
    else:
        click.echo(
            f"wrote {out}: models {', '.join(written.models)} ({backend}, {precision}); see {out}/README.md"
        )


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@precision_option()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one)."
)
@click.option("--port", "http_port", type=int, default=8000, show_default=True, help="HTTP port.")
@click.option("--grpc-port", type=int, help="gRPC port [HTTP port + 1].")
@click.option(
    "--max-batch",
    type=Bounded("max_batch"),
    default=8,
    show_default=True,
    help="Most clips batched together.",
)
@click.option(
    "--max-delay-ms",
    type=float,
    default=5.0,
    show_default=True,
    help="How long a request may wait for others to batch with.",
)
@click.option(
    "--instances",
    type=Bounded("instances"),
    default=1,
    show_default=True,
    help="Model instances (processes).",
)
@threads_option("onnxruntime intra-op threads per instance [at most the logical cores].")
def serve_command(
    bundle: Path,
    precision: str,
    host: str,
    http_port: int,
    grpc_port: int | None,
    max_batch: int,
    max_delay_ms: float,
    instances: int,
    threads: int | None,
) -> None:
    """Serve BUNDLE over Triton's HTTP and gRPC protocols with dynamic batching (until Ctrl-C or SIGTERM).

    Runs the tritonserver of the nvidia-pytriton wheel (the `serve` extra, in its own environment).
    """
    from edgeser.serving.server import serving

    grpc = grpc_port if grpc_port is not None else http_port + 1
    with serving(
        bundle,
        precision=precision,
        host=host,
        http_port=http_port,
        grpc_port=grpc,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        instances=instances,
        threads=threads,
    ) as server:
        click.echo(
            f"serving {bundle} ({precision}) as model `edgeser`: HTTP {server.http_url}, gRPC "
            f"{server.grpc_url}; Ctrl-C stops",
            err=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            code = server.wait()
        except KeyboardInterrupt:
            click.echo("stopping", err=True)
            return
        if code:
            raise ServingError(f"tritonserver exited with code {code}: {server.log_tail()}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
