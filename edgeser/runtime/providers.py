"""onnxruntime execution providers for a bundle, their options set in one place.

    plan = provider_plan("tensorrt-ep", Path("build/cmgi"), "fp16", stage="audio_encoder", profiles=...)
    ort.InferenceSession(path, providers=plan.providers, provider_options=plan.options)

Backends:
- `onnxruntime` (alias `cpu`): CPUExecutionProvider;
- `cuda`: CUDAExecutionProvider on `device`, CPU for what CUDA lacks;
- `tensorrt-ep`: onnxruntime's TensorRT execution provider, then CUDA, then CPU. Its engines and timing cache go
  under `BUNDLE/trt/ort-ep/<precision>/` (never beside the graphs), FP16 kernels are enabled for the fp16 variant,
  INT8 for QDQ int8 variants (TensorRT reads the Q/DQ scales; no calibration table is used), and, with
  `profiles` (from `edgeser.trt.profiles`), the explicit min/opt/max shapes edgeser's own engines use.
The native TensorRT runner (`backend="tensorrt"`) is `edgeser.runtime.tensorrt.tensorrt_runners`, not a provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeser.errors import BundleError

BACKENDS = ("onnxruntime", "cpu", "cuda", "tensorrt-ep")
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


def provider_plan(backend: str, bundle_root: Path | None = None, precision: str = "fp32", *,
                  stage: str | None = None, profiles: dict[str, Any] | None = None, device: int = 0,
                  workspace_mb: int | None = None) -> ProviderPlan:
    """The providers and options for `backend` (see the module docstring); `stage` names the engine cache."""
    name = backend.lower()
    if name in ("onnxruntime", "cpu"):
        return ProviderPlan([CPU], [{}])
    cuda_options = {"device_id": str(device)}
    if name == "cuda":
        return ProviderPlan([CUDA, CPU], [cuda_options, {}])
    if name != "tensorrt-ep":
        raise BundleError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)} "
                          "(or `tensorrt` for edgeser's own engines)")
    if bundle_root is None:
        raise BundleError("the tensorrt-ep backend needs the bundle folder for its engine cache")
    cache = Path(bundle_root, *EP_CACHE_DIR, precision)
    cache.mkdir(parents=True, exist_ok=True)
    trt_options = {
        "device_id": str(device),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_engine_cache_prefix": stage or "stage",
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": str(precision == "fp16"),
        "trt_int8_enable": str(precision.startswith("int8") and precision != "int8-dynamic"),
    }
    if workspace_mb:
        trt_options["trt_max_workspace_size"] = str(int(workspace_mb) << 20)
    if profiles:
        trt_options.update(trt_profile_min_shapes=_shapes(profiles, "min"),
                           trt_profile_opt_shapes=_shapes(profiles, "opt"),
                           trt_profile_max_shapes=_shapes(profiles, "max"))
    return ProviderPlan([TENSORRT, CUDA, CPU], [trt_options, cuda_options, {}])
