"""Write a Triton Inference Server model repository for a bundle (`edgeser export-triton`).

    OUT/
      audio_encoder/ ctc_head/ text_encoder/ fusion_head/   one model per stage: config.pbtxt + 1/model.onnx
                                                            (onnxruntime_onnx), 1/model.plan (tensorrt_plan),
                                                            or 1/model.onnx + 1/model.py (python backend)
      edgeser/      config.pbtxt + 1/model.py, bundle.json, tokenizer.json: the Python-backend model that takes
                    `waveform` [S] float32 (+ `length`), chains the stage models (BLS) with the runtime's own
                    steps between them, and returns `label`, `probabilities`, `logits`, `transcript`
      README.md     the `tritonserver` command and a client example

Stage configs keep the bundle's tensor names and dynamic axes (a named axis is -1; the batch axis is Triton's);
`[batch]`-shaped tensors (lengths) are `dims: [1]` reshaped to `[]`. Every model batches dynamically; the
`edgeser` model accepts ragged waveforms, so clips of different lengths share a batch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from edgeser.bundle import MANIFEST, PRECISIONS, BundleManifest, TensorSpec, read_manifest, validate_bundle
from edgeser.errors import ServingError
from edgeser.files import atomic_dir, write_text_atomic
from edgeser.stages import STAGE_ORDER

# What runs the stage models: Triton's onnxruntime_onnx or tensorrt_plan platform, or onnxruntime in the Python backend.
TritonBackend = Literal["onnxruntime", "tensorrt", "python"]
BACKENDS: tuple[TritonBackend, ...] = get_args(TritonBackend)
PIPELINE_MODEL = "edgeser"
# The `edgeser` model's tensors (the request and the response of one clip).
WAVEFORM, LENGTH = "waveform", "length"
LABEL, PROBABILITIES, LOGITS, TRANSCRIPT = "label", "probabilities", "logits", "transcript"
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
    "string": "TYPE_STRING",
}
MAX_CLIP_SECONDS = 30.0
DEFAULT_MAX_BATCH = 16
SAMPLE_RATE = 16_000
STAGE_MODEL_PY = "from edgeser.serving.triton_model import StageModel as TritonPythonModel  # noqa: F401\n"
PIPELINE_MODEL_PY = (
    "from edgeser.serving.triton_model import PipelineModel as TritonPythonModel  # noqa: F401\n"
)


@dataclass(frozen=True)
class RepositoryOptions:
    """How the repository's models batch and what the `edgeser` model accepts.

    `max_batch` None: 16, or for TensorRT engines the largest batch their optimisation profiles take.
    """

    max_batch: int | None = None
    max_delay_ms: float = 5.0
    max_seconds: float = MAX_CLIP_SECONDS
    instances: int = 1

    @property
    def batch(self) -> int:
        return DEFAULT_MAX_BATCH if self.max_batch is None else self.max_batch

    def __post_init__(self) -> None:
        from edgeser.runtime.options import bounded

        if self.max_batch is not None:
            bounded("--max-batch", self.max_batch, "max_batch")
        bounded("--instances", self.instances, "instances")
        if self.max_delay_ms < 0:
            raise ServingError(f"--max-delay-ms must be 0 or more, got {self.max_delay_ms}")


@dataclass(frozen=True)
class Repository:
    """What was written: the folder, its models, and the stage backend."""

    path: str
    models: list[str]
    backend: (
        TritonBackend | Literal["local"]
    )  # local: `serve`'s repository, the runtime in the Python backend
    precision: str


# ------------------------------------------------------------------------------------------- config text


def _quote(text: str) -> str:
    return json.dumps(text)


def tensor_block(spec: TensorSpec, *, ragged: bool = False, optional: bool = False) -> str:
    """One `input`/`output` entry: the bundle's shape without its batch axis, named axes as -1."""
    if spec.dtype not in TRITON_DTYPES:
        raise ServingError(f"tensor {spec.name}: dtype {spec.dtype} has no Triton type")
    dims = [-1 if isinstance(d, str) else int(d) for d in spec.shape[1:]]
    parts = [f"name: {_quote(spec.name)}", f"data_type: {TRITON_DTYPES[spec.dtype]}"]
    if dims:
        parts.append(f"dims: [ {', '.join(str(d) for d in dims)} ]")
    else:  # a [batch] tensor: one value per item, seen by the model as [B]
        parts += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
    if ragged:
        parts.append("allow_ragged_batch: true")
    if optional:
        parts.append("optional: true")
    return "{ " + " ".join(parts) + " }"


def _io_section(kind: str, blocks: Sequence[str]) -> str:
    return f"{kind} [\n  " + ",\n  ".join(blocks) + "\n]"


def _parameters(values: dict[str, str]) -> str:
    entries = [f"{{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}" for k, v in values.items()]
    return "parameters [\n  " + ",\n  ".join(entries) + "\n]"


def _batching(options: RepositoryOptions) -> str:
    return f"dynamic_batching {{ max_queue_delay_microseconds: {round(options.max_delay_ms * 1000)} }}"


def stage_config(
    stage: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    backend: TritonBackend,
    options: RepositoryOptions,
) -> str:
    """config.pbtxt of one stage model."""
    head = {
        "onnxruntime": 'platform: "onnxruntime_onnx"',
        "tensorrt": 'platform: "tensorrt_plan"',
        "python": 'backend: "python"',
    }[backend]
    kind = {"onnxruntime": "KIND_AUTO", "tensorrt": "KIND_GPU", "python": "KIND_CPU"}[backend]
    lines = [
        f"name: {_quote(stage)}",
        head,
        f"max_batch_size: {options.batch}",
        _io_section("input", [tensor_block(t) for t in inputs]),
        _io_section("output", [tensor_block(t) for t in outputs]),
        _batching(options),
        f"instance_group [ {{ kind: {kind} count: {options.instances} }} ]",
    ]
    if backend == "python":
        lines.append(_parameters({"edgeser_stage": stage}))
    return "\n".join(lines) + "\n"


def pipeline_config(labels: Sequence[str], options: RepositoryOptions, parameters: dict[str, str]) -> str:
    """config.pbtxt of the `edgeser` model: waveform (+ length) in; label, probabilities, logits, transcript out."""
    classes = len(labels)
    inputs = [
        tensor_block(TensorSpec(WAVEFORM, "float32", ["batch", "samples"]), ragged=True),
        tensor_block(TensorSpec(LENGTH, "int64", ["batch", 1]), optional=True),
    ]
    outputs = [
        tensor_block(TensorSpec(LABEL, "string", ["batch", 1])),
        tensor_block(TensorSpec(PROBABILITIES, "float32", ["batch", classes])),
        tensor_block(TensorSpec(LOGITS, "float32", ["batch", classes])),
        tensor_block(TensorSpec(TRANSCRIPT, "string", ["batch", 1])),
    ]
    params = {"labels": json.dumps(list(labels)), "max_seconds": f"{options.max_seconds:g}", **parameters}
    lines = [
        f"name: {_quote(PIPELINE_MODEL)}",
        'backend: "python"',
        f"max_batch_size: {options.batch}",
        _io_section("input", inputs),
        _io_section("output", outputs),
        _batching(options),
        f"instance_group [ {{ kind: KIND_CPU count: {options.instances} }} ]",
        _parameters(params),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- writing


def _place(source: Path, target: Path) -> None:
    """Hard-link `source` at `target` where the file system allows (graphs can be GBs), else copy it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def engine_folder(bundle: Path, precision: str, target: str | None) -> Path:
    """BUNDLE/trt/<target>/<precision>: the TensorRT engines `edgeser build-trt` wrote (one target chosen)."""
    root = bundle / "trt"
    targets = sorted(p.name for p in root.iterdir() if (p / precision).is_dir()) if root.is_dir() else []
    if target is not None:
        if target not in targets:
            raise ServingError(
                f"{root / target / precision}: no TensorRT engines there "
                f"(targets with {precision} engines: {', '.join(targets) or 'none'})"
            )
        return root / target / precision
    if not targets:
        raise ServingError(
            f"{bundle}: no TensorRT {precision} engines under trt/; build them first with "
            f"`edgeser build-trt {bundle}` on the serving GPU"
        )
    if len(targets) > 1:
        raise ServingError(
            f"{root}: engines for several targets ({', '.join(targets)}); choose one with --engines"
        )
    return root / targets[0] / precision


def engine_limits(folder: Path, manifest: BundleManifest, options: RepositoryOptions) -> RepositoryOptions:
    """`options` with max_batch and max_seconds the engines' optimisation profiles (their manifest) allow.

    Triton's TensorRT backend refuses a model whose max_batch_size exceeds the engine's batch maximum, and the
    stage engines refuse waveforms longer than their `samples` maximum: both come from the engine manifest. An
    explicit max_batch above the engines' is refused.
    """
    from edgeser.errors import EngineError
    from edgeser.runtime.engines import read_engine_manifest

    try:
        engines = read_engine_manifest(folder)
    except EngineError as err:
        raise ServingError(str(err)) from None
    batch: tuple[int, str] | None = None
    samples: tuple[int, str] | None = None
    for stage, spec in manifest.stages.items():
        profiles = engines["stages"].get(stage, {}).get("profiles", {})
        for tensor in spec.inputs:
            if tensor.name not in profiles:
                continue
            high = profiles[tensor.name]["max"]
            for axis, dim in enumerate(tensor.shape):
                where = (int(high[axis]), f"{stage}:{tensor.name}")
                if dim == "batch" and (batch is None or where[0] < batch[0]):
                    batch = where
                if dim == "samples" and (samples is None or where[0] < samples[0]):
                    samples = where
    if batch is None:
        raise ServingError(
            f"{folder / 'manifest.json'}: no batch profile for any stage input; rebuild the engines "
            "with `edgeser build-trt`"
        )
    if options.max_batch is not None and options.max_batch > batch[0]:
        raise ServingError(
            f"--max-batch {options.max_batch}: the TensorRT engines in {folder} take at most "
            f"{batch[0]} clips ({batch[1]} profile); pass --max-batch {batch[0]} or rebuild with "
            f"`edgeser build-trt --profile {batch[1]}=...` for larger batches"
        )
    seconds = options.max_seconds if samples is None else min(options.max_seconds, samples[0] / SAMPLE_RATE)
    return replace(options, max_batch=options.max_batch or batch[0], max_seconds=seconds)


def write_model_repository(
    bundle: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    backend: TritonBackend = "onnxruntime",
    options: RepositoryOptions | None = None,
    engines: str | None = None,
) -> Repository:
    """Write the Triton model repository for one bundle variant at `out` (replaced whole, atomically)."""
    options = options or RepositoryOptions()
    if backend not in BACKENDS:
        raise ServingError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ServingError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    root = Path(bundle)
    manifest = validate_bundle(root, precision)
    stages = [s for s in STAGE_ORDER if s in manifest.stages]
    sources = {s: root / manifest.precisions[precision][s].path for s in stages}
    if backend == "tensorrt":
        folder = engine_folder(root, precision, engines)
        sources = {s: folder / f"{s}.engine" for s in stages}
        missing = [str(p) for p in sources.values() if not p.is_file()]
        if missing:
            raise ServingError(f"{folder}: missing TensorRT engine(s) {', '.join(missing)}")
        options = engine_limits(folder, manifest, options)
    target = Path(out)
    with atomic_dir(target) as staging:
        for stage in stages:
            spec = manifest.stages[stage]
            model = staging / stage
            (model / "1").mkdir(parents=True)
            write_text_atomic(
                model / "config.pbtxt", stage_config(stage, spec.inputs, spec.outputs, backend, options)
            )
            _place(sources[stage], model / "1" / ("model.plan" if backend == "tensorrt" else "model.onnx"))
            if backend == "python":
                write_text_atomic(model / "1" / "model.py", STAGE_MODEL_PY)
        version = staging / PIPELINE_MODEL / "1"
        version.mkdir(parents=True)
        shutil.copyfile(root / MANIFEST, version / MANIFEST)
        if manifest.tokenizer is not None:
            shutil.copyfile(root / manifest.tokenizer, version / Path(manifest.tokenizer).name)
        write_text_atomic(version / "model.py", PIPELINE_MODEL_PY)
        write_text_atomic(
            staging / PIPELINE_MODEL / "config.pbtxt",
            pipeline_config(manifest.labels, options, {"runners": "bls", "precision": precision}),
        )
        write_text_atomic(
            staging / "README.md",
            repository_readme(root, manifest.labels, stages, backend, precision, options),
        )
    return Repository(str(target), [*stages, PIPELINE_MODEL], backend, precision)


def write_serving_repository(
    bundle: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    options: RepositoryOptions | None = None,
    threads: int | None = None,
) -> Repository:
    """A repository with the `edgeser` model only, running the bundle's stages in its own process (onnxruntime).

    This is what `edgeser serve` runs: the tritonserver of the nvidia-pytriton wheel has the Python backend but
    no ONNX Runtime or TensorRT backend.
    """
    from edgeser.runtime.options import check_threads

    if threads is not None:
        threads = check_threads("threads", threads)
    options = options or RepositoryOptions()
    root = Path(bundle).resolve()
    manifest = validate_bundle(root, precision)
    target = Path(out)
    with atomic_dir(target) as staging:
        version = staging / PIPELINE_MODEL / "1"
        version.mkdir(parents=True)
        write_text_atomic(version / "model.py", PIPELINE_MODEL_PY)
        write_text_atomic(
            staging / PIPELINE_MODEL / "config.pbtxt",
            pipeline_config(
                manifest.labels,
                options,
                {
                    "runners": "local",
                    "bundle": str(root),
                    "precision": precision,
                    "threads": str(threads or 0),
                },
            ),
        )
    return Repository(str(target), [PIPELINE_MODEL], "local", precision)


def repository_labels(repository: Path) -> list[str]:
    """The labels of the bundle a written repository serves (from its copy of bundle.json)."""
    return list(read_manifest(repository / PIPELINE_MODEL / "1").labels)


def repository_readme(
    bundle: Path,
    labels: Sequence[str],
    stages: Sequence[str],
    backend: TritonBackend,
    precision: str,
    options: RepositoryOptions,
) -> str:
    """README.md of a written repository: what is in it, the server command, a client example."""
    platform = {
        "onnxruntime": "onnxruntime_onnx",
        "tensorrt": "tensorrt_plan",
        "python": "python (onnxruntime)",
    }
    return f"""# Triton model repository for `{bundle.name}` ({precision})

Written by `edgeser export-triton`. Models:

| model | backend | what it does |
|---|---|---|
{chr(10).join(f"| `{s}` | {platform[backend]} | the bundle's `{s}` stage graph |" for s in stages)}
| `{
        PIPELINE_MODEL
    }` | python | waveform (+ length) -> the stages above (BLS calls) with edgeser's own steps between \
them (frame lengths, CTC greedy decoding, tokenisation) -> label, probabilities, logits, transcript |

Every model batches dynamically (up to {options.batch} items, {options.max_delay_ms:g} ms queue delay);
`{PIPELINE_MODEL}` takes ragged waveforms, so clips of different lengths share a batch.
Labels: {", ".join(labels)}.

## Run it

The `{PIPELINE_MODEL}` model imports `edgeser` (its lean runtime: numpy, onnxruntime, tokenizers, soundfile,
soxr, click), so the server's Python must have it:

    docker run --rm -p 8000:8000 -p 8001:8001 -v $PWD:/models nvcr.io/nvidia/tritonserver:24.10-py3 \\
      bash -c "pip install edgeser && tritonserver --model-repository=/models"

or, where `tritonserver` is installed with the {"TensorRT" if backend == "tensorrt" else "ONNX Runtime"} and \
Python backends:

    tritonserver --model-repository={"$PWD"} --http-port 8000 --grpc-port 8001
{
        ""
        if backend != "tensorrt"
        else chr(10)
        + "TensorRT engines are tied to the GPU model, its compute capability and the TensorRT version they were "
        "built with: serve them with the Triton release that carries that TensorRT version." + chr(10)
    }
## Client

Send 16 kHz mono float32 audio, one clip per request (or several, padded, with their lengths):

```python
import numpy as np, soundfile as sf, tritonclient.http as httpclient

wave, rate = sf.read("clip.wav", dtype="float32")        # 16 kHz mono
client = httpclient.InferenceServerClient("localhost:8000")
inputs = [httpclient.InferInput("{WAVEFORM}", [1, wave.size], "FP32"),
          httpclient.InferInput("{LENGTH}", [1, 1], "INT64")]
inputs[0].set_data_from_numpy(wave[None, :])
inputs[1].set_data_from_numpy(np.array([[wave.size]], dtype=np.int64))
result = client.infer("{PIPELINE_MODEL}", inputs)
print(result.as_numpy("{LABEL}")[0, 0].decode(), result.as_numpy("{PROBABILITIES}")[0],
      result.as_numpy("{TRANSCRIPT}")[0, 0].decode())
```

or with edgeser: `edgeser.serving.client.TritonClient("localhost:8000").predict(wave)`, and the stage models
alone as `StageRunner`s: `edgeser.serving.client.TritonRunner(url, stage)`.
"""
