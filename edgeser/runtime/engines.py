"""Engine folders, manifests and the checks before an engine is loaded. Torch-, onnx- and TensorRT-free at
import: the runtime uses it.

    BUNDLE/trt/<gpu>-sm<cc>-trt<version>/<precision>/
        manifest.json        source graph checksums, profiles, builder settings, versions, layer precisions
        <stage>.engine       serialised TensorRT engines (executable artefacts: loaded only if their SHA-256
                             matches the manifest)
    BUNDLE/trt/timing-<gpu>-sm<cc>-trt<version>.cache   the timing cache reused by later builds

Engines are tied to GPU model, compute capability and exact TensorRT version: a folder is only ever used on a
machine with the same three.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeser.errors import EngineError, MissingDependencyError, TensorRTUnavailable
from edgeser.files import sha256_of

ENGINE_DIR = "trt"
ENGINE_MANIFEST = "manifest.json"
ENGINE_SCHEMA = 1
INSTALL_HINT = (
    "pip install 'edgeser[trt]' --extra-index-url https://pypi.nvidia.com (the tensorrt-cu12 / "
    "tensorrt-cu13 wheels come from NVIDIA's index; on Jetson use JetPack's python3-libnvinfer)"
)


@dataclass(frozen=True)
class DeviceIdentity:
    """What a TensorRT engine is tied to."""

    gpu: str
    compute_capability: tuple[int, int]
    tensorrt: str

    @property
    def folder(self) -> str:
        major, minor = self.compute_capability
        return f"{slug(self.gpu)}-sm{major}{minor}-trt{self.tensorrt}"

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"{self.gpu}, compute capability {major}.{minor}, TensorRT {self.tensorrt}"

    def as_dict(self) -> dict[str, Any]:
        major, minor = self.compute_capability
        return {"gpu": self.gpu, "compute_capability": f"{major}.{minor}", "tensorrt": self.tensorrt}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceIdentity:
        major, _, minor = str(data["compute_capability"]).partition(".")
        return cls(str(data["gpu"]), (int(major), int(minor or 0)), str(data["tensorrt"]))


def slug(name: str) -> str:
    """`NVIDIA GeForce RTX 4090` -> `nvidia-geforce-rtx-4090`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a one-line MissingDependencyError (TensorRTUnavailable: installed, unusable)
    saying how to install it."""
    try:
        import tensorrt
    except ImportError as err:
        if getattr(err, "name", None) in ("tensorrt", None) and "tensorrt" in str(err):
            raise MissingDependencyError(
                "tensorrt", "trt", "building or running TensorRT engines", INSTALL_HINT
            ) from err
        raise TensorRTUnavailable(f"TensorRT cannot be imported ({err}): {INSTALL_HINT}") from err
    except OSError as err:  # the Python package without its libnvinfer libraries
        raise TensorRTUnavailable(f"TensorRT's libraries cannot be loaded ({err}): {INSTALL_HINT}") from err
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's CUDA runtime bindings (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as err:
            raise MissingDependencyError(
                "cuda-python", "trt", "building or running TensorRT engines (their device buffers)"
            ) from err
    return runtime


def cuda_call(result: Any, what: str) -> Any:
    """Unpack cuda-python's `(error, value...)` tuples; raise TensorRTUnavailable on an error code."""
    items = result if isinstance(result, tuple) else (result,)
    error = items[0]
    if int(getattr(error, "value", error) or 0) != 0:
        name = getattr(error, "name", str(error))
        raise TensorRTUnavailable(f"CUDA call {what} failed: {name}")
    rest = items[1:]
    return rest[0] if len(rest) == 1 else (rest or None)


def current_identity(device: int = 0) -> DeviceIdentity:
    """This machine's GPU, compute capability and TensorRT version; one-line error when any is missing."""
    trt = import_tensorrt()
    cudart = import_cudart()
    try:
        count = cuda_call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except TensorRTUnavailable as err:
        raise TensorRTUnavailable(
            f"no CUDA GPU visible ({err}); TensorRT engines need an NVIDIA GPU"
        ) from None
    if not count or device >= int(count):
        raise TensorRTUnavailable(f"no CUDA GPU {device} visible ({count or 0} found)")
    props = cuda_call(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceIdentity(
        name.strip("\x00 ").strip(), (int(props.major), int(props.minor)), str(trt.__version__)
    )


def engine_dir(bundle: Path, identity: DeviceIdentity, precision: str) -> Path:
    return bundle / ENGINE_DIR / identity.folder / precision


def timing_cache_path(bundle: Path, identity: DeviceIdentity) -> Path:
    return bundle / ENGINE_DIR / f"timing-{identity.folder}.cache"


def read_engine_manifest(folder: Path) -> dict[str, Any]:
    path = folder / ENGINE_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineError(
            f"{folder}: no {ENGINE_MANIFEST}; an incomplete engine folder, rebuild it with "
            "`edgeser build-trt`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineError(f"{path}: corrupt engine manifest ({err})") from err
    if not isinstance(data, dict) or data.get("schema") != ENGINE_SCHEMA or "stages" not in data:
        raise EngineError(f"{path}: not an edgeser engine manifest (schema {data.get('schema')!r})")
    return data


def check_identity(folder: Path, manifest: dict[str, Any], identity: DeviceIdentity) -> None:
    """Refuse engines built for another GPU, compute capability or TensorRT version."""
    built = DeviceIdentity.from_dict(manifest["device"])
    problems = []
    if built.gpu != identity.gpu:
        problems.append(f"GPU {built.gpu!r} (this machine: {identity.gpu!r})")
    if built.compute_capability != identity.compute_capability:
        problems.append(
            "compute capability {}.{} (this machine: {}.{})".format(
                *built.compute_capability, *identity.compute_capability
            )
        )
    if built.tensorrt != identity.tensorrt:
        problems.append(f"TensorRT {built.tensorrt} (this machine: {identity.tensorrt})")
    if problems:
        raise EngineError(
            f"{folder}: engines were built for {'; '.join(problems)}; TensorRT engines only run "
            "where they were built: rebuild with `edgeser build-trt` on this machine"
        )


def check_sources(folder: Path, manifest: dict[str, Any], graphs: dict[str, str]) -> None:
    """Refuse engines built from graphs other than the bundle's current ones (`graphs`: stage -> sha256)."""
    for stage, sha in graphs.items():
        entry = manifest["stages"].get(stage)
        if entry is None:
            raise EngineError(f"{folder}: no engine for stage {stage}; rebuild with `edgeser build-trt`")
        if entry["source"]["sha256"] != sha:
            raise EngineError(
                f"{folder}: the {stage} engine was built from another {entry['source']['path']} "
                "than the bundle holds now; rebuild with `edgeser build-trt`"
            )


def verified_engine_bytes(folder: Path, manifest: dict[str, Any], stage: str) -> bytes:
    """The engine file's bytes, only when its SHA-256 and size match the manifest."""
    entry = manifest["stages"].get(stage)
    if entry is None:
        raise EngineError(f"{folder}: manifest lists no {stage} engine")
    path = folder / entry["engine"]
    if not path.is_file():
        raise EngineError(f"{path}: engine listed in {ENGINE_MANIFEST} is missing")
    if path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
        raise EngineError(
            f"{path}: checksum does not match {ENGINE_MANIFEST}; an engine is executable code, "
            "refusing to load a changed one (rebuild with `edgeser build-trt`)"
        )
    data: bytes = path.read_bytes()
    return data


def find_engine_dir(bundle: Path, identity: DeviceIdentity, precision: str) -> Path:
    """The engine folder of `precision` built on a machine like this one, or an error naming what exists."""
    folder = engine_dir(bundle, identity, precision)
    if (folder / ENGINE_MANIFEST).is_file():
        check_identity(folder, read_engine_manifest(folder), identity)
        return folder
    found = sorted(
        p.parent.relative_to(bundle / ENGINE_DIR).as_posix()
        for p in (bundle / ENGINE_DIR).glob(f"*/*/{ENGINE_MANIFEST}")
    )
    listing = f"found only {', '.join(found)}" if found else "none built yet"
    raise EngineError(
        f"{bundle}: no TensorRT {precision} engines for this machine ({identity.describe()}; "
        f"{listing}); build them here with `edgeser build-trt {bundle} --{precision.split('-')[0]}`"
    )
