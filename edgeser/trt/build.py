"""`edgeser build-trt`: TensorRT engines from a bundle's QDQ INT8 or FP16 graphs, with the TensorRT Python API.

Networks are strongly typed on both supported lines, so precision comes from the graph (Q/DQ nodes, FP16 tensors
and the Casts around what stays FP32) and no precision builder flag is ever set:
- TensorRT 10.x: `create_network(1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED)`; the implicit INT8
  calibrators (deprecated since 10.1) are not used;
- TensorRT 11.x: `create_network(0)` is strongly typed (weak typing, the FP16/INT8 flags and the calibrators are
  removed).
Every engine is built with detailed profiling verbosity so the engine inspector reports per-layer types,
`contexts` identical optimisation profiles per stage (`edgeser.runtime.profiles`; one per concurrent execution
context), and a timing cache that later builds reuse.
Written against the TensorRT 10.x/11.x Python API documentation; not run here (no TensorRT on these machines).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeser.bundle import validate_bundle
from edgeser.errors import EngineError, ProfileError
from edgeser.files import atomic_dir, sha256_of, tool_versions, write_bytes_atomic, write_json_atomic
from edgeser.runtime.engines import (
    ENGINE_MANIFEST,
    ENGINE_SCHEMA,
    current_identity,
    engine_dir,
    import_cudart,
    import_tensorrt,
    timing_cache_path,
)
from edgeser.runtime.profiles import InputProfile, resolve_profiles
from edgeser.trt.inspector import parse_engine_information


@dataclass(frozen=True)
class BuildOptions:
    """What `edgeser build-trt` builds and how."""

    precision: (
        str  # the bundle variant whose graphs are built: "int8-trt" or "fp16" (or another listed variant)
    )
    profiles: tuple[str, ...] = ()  # --profile STAGE:INPUT=MIN,OPT,MAX overrides
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None  # None: BUNDLE/trt/timing-<machine>.cache
    stages: tuple[str, ...] | None = None  # None: every stage of the variant
    # identical optimisation profiles per engine: how many execution contexts may run it concurrently (a
    # context in concurrent use needs its own profile with dynamic shapes); each adds build time and engine size
    contexts: int = 1

    def __post_init__(self) -> None:
        if self.workspace_mb is not None:
            from edgeser.runtime.options import bounded

            bounded("workspace_mb", self.workspace_mb)


def strongly_typed_network(trt: Any, builder: Any) -> Any:
    """A strongly typed network definition on TensorRT 10.x and 11.x."""
    major = int(str(trt.__version__).split(".")[0])
    if major >= 11:
        return builder.create_network(0)  # strongly typed by default; the flag is deprecated there
    return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))


def parse_graph(trt: Any, network: Any, logger: Any, path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
        first = errors[0][:240] if errors else "no error recorded"
        raise EngineError(
            f"{path}: TensorRT's ONNX parser refused the graph ({first}; {len(errors)} error(s)); "
            f"run `edgeser doctor` on the bundle"
        )
    return parser


def builder_config(
    trt: Any, builder: Any, options: BuildOptions, cache_bytes: bytes, profiles: dict[str, InputProfile]
) -> tuple[Any, Any]:
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    for _ in range(max(1, options.contexts)):  # one per concurrent execution context (runtime/tensorrt.py)
        profile = builder.create_optimization_profile()
        for name, shapes in profiles.items():
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        config.add_optimization_profile(profile)
    return config, cache


def inspect_engine(trt: Any, logger: Any, plan: bytes) -> dict[str, Any]:
    """Per-layer precision counts of a serialised engine (engine inspector, JSON)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineError("TensorRT could not deserialise the engine it just built")
    inspector = engine.create_engine_inspector()
    return asdict(parse_engine_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))


def runtime_versions() -> dict[str, Any]:
    """CUDA runtime and driver versions (for the manifest)."""
    from edgeser.runtime.engines import cuda_call

    cudart = import_cudart()
    return {
        "cuda_runtime": int(cuda_call(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
        "cuda_driver": int(cuda_call(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")),
    }


def build_engines(bundle: Path, options: BuildOptions, log: Any = None) -> dict[str, Any]:
    """Build, inspect and write every requested stage's engine; returns the engine manifest."""
    log = log or (lambda message: print(message, file=sys.stderr))
    manifest = validate_bundle(bundle, options.precision)
    files = manifest.precisions[options.precision]
    stages = list(options.stages or files)
    unknown = [s for s in stages if s not in files]
    if unknown:
        raise EngineError(f"{bundle}: the {options.precision} variant has no stage(s) {', '.join(unknown)}")
    identity = current_identity()  # TensorRT, cuda-python and a GPU first: without them nothing else matters
    profiles, missing, profile_source = resolve_profiles(bundle, manifest, stages, options.profiles)
    if missing:
        raise ProfileError(
            f"{bundle}: no optimisation profile for {', '.join(missing)}: run `edgeser calibrate` "
            "(profiles default to the clips' lengths) or pass --profile STAGE:INPUT=MIN,OPT,MAX"
        )
    trt = import_tensorrt()
    logger = trt.Logger(trt.ILogger.Severity.WARNING)
    builder = trt.Builder(logger)
    cache_path = options.timing_cache or timing_cache_path(bundle, identity)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache_reused = bool(cache_bytes)
    folder = engine_dir(bundle, identity, options.precision)
    folder.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "schema": ENGINE_SCHEMA,
        "precision": options.precision,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": identity.as_dict(),
        "versions": {**tool_versions(), "tensorrt": identity.tensorrt, **runtime_versions()},
        "builder": {
            "strongly_typed": True,
            "precision_flags": [],
            "profiling_verbosity": "DETAILED",
            "workspace_mb": options.workspace_mb,
            "timing_cache": str(cache_path),
            "timing_cache_reused": cache_reused,
            "profile_source": profile_source,
            "contexts": options.contexts,
        },
        "stages": {},
    }
    with atomic_dir(folder) as staging:
        for stage in stages:
            source = bundle / files[stage].path
            started = time.perf_counter()
            log(f"building {stage} ({options.precision}) with TensorRT {identity.tensorrt} on {identity.gpu}")
            network = strongly_typed_network(trt, builder)
            parse_graph(trt, network, logger, source)
            config, _ = builder_config(trt, builder, options, cache_bytes, profiles[stage])
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise EngineError(f"{source}: TensorRT failed to build an engine (see its log above)")
            data = bytes(plan)
            engine_path = staging / f"{stage}.engine"
            write_bytes_atomic(engine_path, data)
            cache_bytes = bytes(config.get_timing_cache().serialize())
            record["stages"][stage] = {
                "engine": engine_path.name,
                "sha256": sha256_of(engine_path),
                "bytes": len(data),
                "source": {"path": files[stage].path, "sha256": files[stage].sha256},
                "profiles": {name: p.as_dict() for name, p in profiles[stage].items()},
                "layers": inspect_engine(trt, logger, data),
                "build_seconds": round(time.perf_counter() - started, 1),
            }
        write_json_atomic(staging / ENGINE_MANIFEST, record)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(cache_path, cache_bytes)
    return record
