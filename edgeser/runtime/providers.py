"""onnxruntime execution providers for a bundle, their options set in one place.

    plan = provider_plan("tensorrt-ep", Path("build/cmgi"), "fp16", stage="audio_encoder", profiles=...)
    ort.InferenceSession(path, providers=plan.providers, provider_options=plan.options)

Backends:
- `onnxruntime`: CPUExecutionProvider;
- `cuda`: CUDAExecutionProvider on `device`, CPU for what CUDA lacks;
- `tensorrt-ep`: onnxruntime's TensorRT execution provider, then CUDA, then CPU. Its engines and timing cache go
  under `BUNDLE/trt/ort-ep/<precision>/` (never beside the graphs), named `<stage>-<graph sha256>`: the EP's own
  cache key is the file name, I/O names and versions, not the weights or Q/DQ scales, so a re-quantised graph
  would otherwise load the old engine. FP16 kernels are enabled for fp16 and int8-trt-fp16, INT8 for both
  int8-trt variants (TensorRT reads the Q/DQ scales; no calibration table is used); the CPU variants (`int8`:
  UINT8 Q/DQ and onnxruntime contrib ops, `int8-dynamic`) are refused, as TensorRT's parser rejects them and the
  EP would split the graph. With `profiles` (from `edgeser.runtime.profiles`), the explicit min/opt/max shapes edgeser's own
  engines use, so variable-length audio does not rebuild engines. A session that asked for the EP and did not
  get it (onnxruntime falls back to CUDA/CPU quietly) is refused by `check_providers`, naming the TensorRT line
  found: onnxruntime's TensorRT EP links TensorRT 10 (`libnvinfer.so.10`), so a TensorRT 11-only host fails.
The native TensorRT runner (`backend="tensorrt"`) is `edgeser.runtime.tensorrt.tensorrt_runners`, not a provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeser.bundle import CPU_VARIANTS
from edgeser.errors import BundleError, OptionError, ProviderError
from edgeser.runtime.options import BACKENDS, Backend

# The backends that run on onnxruntime's execution providers (`tensorrt` is edgeser's own engines instead).
ORT_BACKENDS: tuple[Backend, ...] = tuple(b for b in BACKENDS if b != "tensorrt")
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
EP_CACHE_DIR = ("trt", "ort-ep")


@dataclass(frozen=True)
class ProviderPlan:
    """Provider names in priority order and one options dict per provider (onnxruntime's two lists)."""

    providers: list[str]
    options: list[dict[str, str]] = field(default_factory=list)

    def session_kwargs(self) -> dict[str, Any]:
        return {"providers": list(self.providers), "provider_options": [dict(o) for o in self.options]}


def _shapes(profiles: dict[str, Any], which: str) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(p, which))}" for name, p in profiles.items())


def provider_plan(
    backend: Backend,
    bundle_root: Path | None = None,
    precision: str = "fp32",
    *,
    stage: str | None = None,
    profiles: dict[str, Any] | None = None,
    device: int = 0,
    workspace_mb: int | None = None,
    graph_sha256: str | None = None,
) -> ProviderPlan:
    """The providers and options for `backend` (see the module docstring); `stage` and `graph_sha256` (the
    stage graph's checksum in bundle.json) name the engine cache."""
    if backend == "onnxruntime":
        return ProviderPlan([CPU], [{}])
    cuda_options = {"device_id": str(device)}
    if backend == "cuda":
        return ProviderPlan([CUDA, CPU], [cuda_options, {}])
    if backend != "tensorrt-ep":
        raise OptionError(
            "backend",
            f"unknown backend {backend!r} for onnxruntime; choose {', '.join(ORT_BACKENDS)} "
            "(or `tensorrt` for edgeser's own engines)",
        )
    if bundle_root is None:
        raise BundleError("the tensorrt-ep backend needs the bundle folder for its engine cache")
    if precision in CPU_VARIANTS:
        raise BundleError(
            f"--precision {precision} with tensorrt-ep: {CPU_VARIANTS[precision]}; TensorRT's parser "
            "refuses it and the EP would split the graph (use int8-trt: `edgeser quantize --int8-trt`)"
        )
    cache = Path(bundle_root, *EP_CACHE_DIR, precision)
    cache.mkdir(parents=True, exist_ok=True)
    prefix = stage or "stage"
    trt_options = {
        "device_id": str(device),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_engine_cache_prefix": f"{prefix}-{graph_sha256[:16]}" if graph_sha256 else prefix,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": str(precision in ("fp16", "int8-trt-fp16")),
        "trt_int8_enable": str(
            precision.startswith("int8")
        ),  # Q/DQ graphs; the CPU variants are refused above
    }
    if workspace_mb:
        trt_options["trt_max_workspace_size"] = str(int(workspace_mb) << 20)
    if profiles:
        trt_options.update(
            trt_profile_min_shapes=_shapes(profiles, "min"),
            trt_profile_opt_shapes=_shapes(profiles, "opt"),
            trt_profile_max_shapes=_shapes(profiles, "max"),
        )
    return ProviderPlan([TENSORRT, CUDA, CPU], [trt_options, cuda_options, {}])


def installed_tensorrt_majors() -> set[int]:
    """TensorRT major versions whose runtime library this process can load (libnvinfer.so.10 / .so.11)."""
    import ctypes

    found = set()
    for major in (10, 11):
        try:
            ctypes.CDLL(f"libnvinfer.so.{major}")
        except OSError:
            continue
        found.add(major)
    return found


def check_providers(session: Any, requested: list[str], path: Path) -> None:
    """Refuse a session that asked for the TensorRT EP and runs without it (onnxruntime's quiet fallback)."""
    if TENSORRT not in requested or TENSORRT in session.get_providers():
        return
    import onnxruntime

    majors = installed_tensorrt_majors()
    if majors == {11}:
        why = (
            "this host has TensorRT 11 only (libnvinfer.so.11), and onnxruntime's TensorRT EP is built against "
            "TensorRT 10 (libnvinfer.so.10): install TensorRT 10 beside it, or build edgeser's own engines "
            "(`edgeser build-trt`, backend tensorrt)"
        )
    elif not majors:
        why = "no TensorRT 10 runtime (libnvinfer.so.10) can be loaded: install TensorRT 10 (pip install tensorrt-cu12)"
    else:
        why = "see onnxruntime's log above for why the EP failed to start"
    raise ProviderError(
        f"{path}: onnxruntime {onnxruntime.__version__} fell back to "
        f"{', '.join(session.get_providers())} without its TensorRT EP; {why}"
    )
