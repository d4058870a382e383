"""What `edgeser bench` runs: each row is a `VariantSpec` (plain data, so a subprocess can rebuild it), loaded into
something that chains a bundle's stages on a batch of waveforms and returns per-stage timings.

Rows:
- the bundle's own precisions through the runtime's public API (`Pipeline.load(...).run_stages`);
- `pytorch float`: the bundle's source model (checkpoint, or the same seeded random weights) stage by stage;
- `quantize_dynamic`: onnxruntime's `quantize_dynamic(model, out)` with its defaults on the fp32 graphs;
- `openvino fp32` / `openvino nncf int8`: the fp32 graphs compiled by OpenVINO (when installed).

Non-runtime rows are chained by the same `StageGraph` (CTC decoding and tokenisation included), so every row
does the same work between stages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from edgeser.bundle import Precision, read_manifest
from edgeser.errors import BundleError, MissingDependencyError

PYTORCH = "pytorch float"
QUANTIZE_DYNAMIC = "quantize_dynamic"
OPENVINO = "openvino fp32"
OPENVINO_NNCF = "openvino nncf int8"


@dataclass(frozen=True)
class VariantSpec:
    """One benchmark row, as plain JSON-able data."""

    name: str
    kind: str  # runtime | pytorch | graphs (onnxruntime on given files) | openvino
    bundle: str
    precision: str = "fp32"
    backend: str = "onnxruntime"
    providers: tuple[str, ...] | None = None
    paths: dict[str, str] = field(default_factory=dict)  # stage -> graph file (graphs, openvino)
    bytes: int | None = None
    note: str = ""
    spin: bool = False  # onnxruntime workers spin during runs (runtime and graphs rows)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantSpec:
        values = dict(data)
        if values.get("providers") is not None:
            values["providers"] = tuple(values["providers"])
        return cls(**values)


class Chain(Protocol):
    """A loaded row: runs a batch of 16 kHz waveforms through every stage; returns its features, logits and
    per-step timings (ms)."""

    def __call__(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]: ...


def load_chain(spec: VariantSpec, threads: int) -> Chain:
    """Load one row for `threads` intra-op threads."""
    if spec.kind == "runtime":
        return runtime_chain(spec, threads)
    if spec.kind == "pytorch":
        return stage_graph_chain(spec.bundle, torch_runners(Path(spec.bundle), threads))
    if spec.kind == "graphs":
        return stage_graph_chain(
            spec.bundle, onnxruntime_runners(spec.paths, threads, spec.providers, spec.spin)
        )
    if spec.kind == "openvino":
        return stage_graph_chain(spec.bundle, openvino_runners(spec.paths, threads))
    raise BundleError(f"benchmark row {spec.name!r}: unknown kind {spec.kind!r}")


# ------------------------------------------------------------------------------------------ the runtime


def runtime_chain(spec: VariantSpec, threads: int) -> Chain:
    """The bundle's own variant through `edgeser.runtime.Pipeline` (what an application embeds)."""
    from edgeser.runtime import Pipeline

    # edgeser's TensorRT engines take no onnxruntime threads (the runtime refuses them); a spin asked for stays.
    options: dict[str, Any] = (
        {"spin": spec.spin} if spec.backend == "tensorrt" else {"threads": threads, "spin": spec.spin}
    )
    if spec.providers:
        options["providers"] = list(spec.providers)
    if spec.backend not in ("onnxruntime", ""):
        options["backend"] = spec.backend
    pipeline = Pipeline.load(
        spec.bundle, cast(Precision, spec.precision), **options
    )  # Pipeline.load checks it

    def run(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        result = pipeline.run_stages(list(waves))
        return result.features, result.logits, dict(result.timings_ms)

    return run


# ------------------------------------------------------------------------------------------ other runners


def stage_graph_chain(bundle: str, runners: Mapping[str, Any]) -> Chain:
    from edgeser.stages import StageGraph

    root = Path(bundle)
    graph = StageGraph.from_manifest(read_manifest(root), root)

    def run(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        result = graph.run(runners, list(waves))
        return result.features, result.logits, dict(result.timings_ms)

    return run


def onnxruntime_runners(
    paths: Mapping[str, str], threads: int, providers: Sequence[str] | None, spin: bool = False
) -> dict[str, Any]:
    """The runtime's onnxruntime stage runner (its session settings) on each given graph file."""
    from edgeser.runtime.sessions import OrtRunner

    return {
        stage: OrtRunner.load(Path(path), list(providers) if providers else None, threads, spin=spin)
        for stage, path in paths.items()
    }


def torch_runners(bundle: Path, threads: int) -> dict[str, Any]:
    """The bundle's PyTorch source model, one runner per stage: the float reference every check uses."""
    from edgeser.checks.reference import float_pipeline

    return dict(float_pipeline(bundle, threads=threads).runners)


def torch_parameter_bytes(bundle: Path) -> int:
    from edgeser.checks.reference import reference_model

    model = reference_model(bundle, None)
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


@dataclass
class OpenVinoRunner:
    """A stage compiled by OpenVINO for the CPU, as a `StageRunner`."""

    compiled: Any
    input_names: tuple[str, ...]
    request: Any = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.request is None:
            self.request = self.compiled.create_infer_request()
        results = self.request.infer({n: feeds[n] for n in self.input_names})
        return {output.get_any_name(): np.asarray(value) for output, value in results.items()}


def openvino_runners(paths: Mapping[str, str], threads: int) -> dict[str, OpenVinoRunner]:
    core = openvino_core()
    runners = {}
    for stage, path in paths.items():
        compiled = core.compile_model(
            path, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        )
        runners[stage] = OpenVinoRunner(compiled, tuple(i.get_any_name() for i in compiled.inputs))
    return runners


def openvino_core() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise MissingDependencyError(
            "openvino", "bench", "an OpenVINO row of `edgeser bench --compare`"
        ) from err
    return openvino.Core()


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


# ------------------------------------------------------------------------------------------ comparison graphs


def write_quantize_dynamic(bundle: Path, workdir: Path) -> dict[str, str]:
    """`quantize_dynamic(fp32, out)` with onnxruntime's defaults (every supported op type), per stage."""
    from onnxruntime.quantization import quantize_dynamic

    from edgeser.quantize.variants import quiet_ort_logging

    manifest = read_manifest(bundle)
    paths = {}
    for stage, entry in manifest.precisions["fp32"].items():
        out = workdir / f"{stage}.quantize_dynamic.onnx"
        with quiet_ort_logging():
            quantize_dynamic(str(bundle / entry.path), str(out))
        paths[stage] = str(out)
    return paths


def write_openvino_nncf(bundle: Path, workdir: Path, waves: Sequence[np.ndarray]) -> dict[str, str]:
    """OpenVINO IR of each fp32 stage, INT8-quantised by NNCF on the stage inputs of `waves` (real speech)."""
    try:
        import nncf
    except ImportError as err:
        raise MissingDependencyError(
            "nncf", "bench", "the NNCF row of `edgeser bench --compare --nncf`"
        ) from err
    import openvino

    from edgeser.stages import StageGraph

    logging.getLogger("nncf").setLevel(logging.ERROR)
    manifest = read_manifest(bundle)
    fp32 = {stage: str(bundle / e.path) for stage, e in manifest.precisions["fp32"].items()}
    graph = StageGraph.from_manifest(manifest, bundle)
    samples: dict[str, list[dict[str, np.ndarray]]] = {stage: [] for stage in graph.stages}
    runners = onnxruntime_runners(fp32, 0, None)
    for wave in waves:
        values = graph.run(runners, [wave]).values
        for stage in graph.stages:
            samples[stage].append(graph.feeds(stage, values))
    core = openvino.Core()
    paths = {}
    for stage, path in fp32.items():
        model = core.read_model(path)
        quantised = nncf.quantize(model, nncf.Dataset(samples[stage]), subset_size=len(samples[stage]))
        out = workdir / f"{stage}.nncf.xml"
        openvino.save_model(quantised, str(out))
        paths[stage] = str(out)
    return paths
