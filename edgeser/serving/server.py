"""Run the `tritonserver` binary that the nvidia-pytriton wheel carries, on a model repository.

The wheel ships Triton Inference Server (2.51) with the Python backend only: no ONNX Runtime or TensorRT
backend. `edgeser serve` therefore serves the `edgeser` Python-backend model with the stages run in-process
(`runners: local`); a repository from `export-triton` with onnxruntime/tensorrt stage models needs a full
Triton (the NGC container). nvidia-pytriton pins numpy < 2: install the `serve` extra in its own environment.

The Python backend's stub embeds the Python of the environment that starts the server (found first on PATH),
and imports edgeser from this process's copy (PYTHONPATH), so the served code is the code that launched it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeser.errors import MissingDependencyError, ServingError
from edgeser.files import staging_dir

SERVE_EXTRA_HINT = (
    "install the `serve` extra in its own environment (nvidia-pytriton pins numpy<2): "
    "python -m venv .venv-serve && .venv-serve/bin/pip install 'edgeser[serve]', "
    "then run .venv-serve/bin/edgeser serve"
)


@dataclass(frozen=True)
class TritonInstall:
    """The tritonserver binary, its Python backend, the stub for this Python, and the libraries they need."""

    binary: Path
    python_backend: Path
    stub: Path
    libraries: Path


def find_tritonserver() -> TritonInstall:
    """The Triton of the nvidia-pytriton wheel installed in this environment, or a one-line error."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "nvidia-pytriton", "serve", "edgeser serve (the tritonserver of its wheel)", SERVE_EXTRA_HINT
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    install = TritonInstall(
        root / "bin" / "tritonserver",
        root / "backends" / "python",
        stub,
        package.parent / "nvidia_pytriton.libs",
    )
    if not install.binary.is_file() or not install.python_backend.is_dir():
        raise ServingError(
            f"{root}: the nvidia-pytriton wheel carries no tritonserver here (a CPU-only or "
            f"non-Linux build?); {SERVE_EXTRA_HINT}"
        )
    if not stub.is_file():
        found = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise ServingError(
            f"{root}: no Python-backend stub for Python {version} (the wheel has {', '.join(found)})"
        )
    return install


def _terminate_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for tests and benchmarks)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TritonServer:
    """A running tritonserver on a model repository: `start()` waits until it is ready, `stop()` ends it."""

    def __init__(
        self,
        repository: Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        workdir: Path,
        install: TritonInstall | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.repository = repository
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.install = install or find_tritonserver()
        self.workdir = workdir
        self.log_path = log_path or workdir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = self.workdir / "backends"
        if not backends.is_dir():  # the backend folder Triton loads from: the python backend plus our stub
            shutil.copytree(self.install.python_backend, backends / "python")
            shutil.copy2(self.install.stub, backends / "python" / "triton_python_backend_stub")
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the stub's Python
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (env.get("LD_LIBRARY_PATH"), str(self.install.libraries)) if p
        )
        package_parent = str(Path(__file__).resolve().parents[2])  # this edgeser, for the stub's imports
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        return env

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the server and wait until it reports ready; a failed start raises with the log's tail.

        The server runs in its own process group (its Python-backend stubs with it), and gets SIGTERM if this
        process dies, so no server outlives the process that started it.
        """
        for port in (self.http_port, self.grpc_port):
            if not port_free(self.host, port):
                raise ServingError(
                    f"{self.host}:{port}: port already in use; choose another with --port/--grpc-port"
                )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )  # it takes no locks (safe beside threads)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServingError(
                    f"tritonserver exited with code {self.process.returncode} while starting: "
                    f"{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServingError(f"tritonserver was not ready after {timeout_s:g} s: {self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        wanted = [line for line in text if line[:1] in "EW" or "error" in line.lower()] or text
        return " | ".join(" ".join(line.split()) for line in wanted[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """Ask the server to exit (SIGTERM), then kill its process group if it does not."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # the stubs a dying server may leave behind
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        if self.process is None:
            return 0
        return self.process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(
    bundle: str | Path,
    *,
    precision: str = "fp32",
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    max_batch: int = 8,
    max_delay_ms: float = 5.0,
    instances: int = 1,
    threads: int | None = None,
    timeout_s: float = 180.0,
) -> Iterator[TritonServer]:
    """Serve a bundle with the pytriton wheel's tritonserver for the duration of the block (ready on entry)."""
    from edgeser.serving.repository import RepositoryOptions, write_serving_repository

    install = find_tritonserver()
    options = RepositoryOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, instances=instances)
    with staging_dir(Path(tempfile.gettempdir()), "edgeser-serve") as workdir:
        write_serving_repository(
            bundle, workdir / "models", precision=precision, options=options, threads=threads
        )
        server = TritonServer(
            workdir / "models",
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            workdir=workdir,
            install=install,
        )
        with server:
            yield server
