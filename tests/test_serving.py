"""Serving: the written Triton model repository (configs parsed against the bundle), and a real tritonserver.

The server tests run the tritonserver of the nvidia-pytriton wheel from the separate serve environment
(.venv-serve, built by `make serve-env`; nvidia-pytriton pins numpy < 2), on 127.0.0.1 only, with bounded
request counts. Clients are tritonclient (HTTP and gRPC) in this process; results are compared with
`Pipeline` in this process on the same clips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, tone

from edgeser.bundle import read_manifest
from edgeser.errors import MissingDependencyError, ServingError

pytest.importorskip("tritonclient.grpc", reason="tritonclient absent: install the serve-client extra")

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from edgeser.cli.serving import export_triton_command
from edgeser.serving.repository import PIPELINE_MODEL, RepositoryOptions, write_model_repository

SERVE_PYTHON = Path(os.environ.get("EDGESER_SERVE_PYTHON", REPO / ".venv-serve" / "bin" / "python"))
LOGIT_TOLERANCE = 1e-4


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dims_of(spec_shape: list[str | int]) -> list[int]:
    return [-1 if isinstance(d, str) else d for d in spec_shape[1:]] or [1]


# ------------------------------------------------------------------------------------------- repository


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_exported_repository_configs_match_the_bundle(
    cmgi_bundle: Path, tmp_path: Path, backend: str
) -> None:
    out = tmp_path / "models"
    result = CliRunner().invoke(
        export_triton_command,
        [
            str(cmgi_bundle),
            str(out),
            "--backend",
            backend,
            "--max-batch",
            "12",
            "--max-delay-ms",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(cmgi_bundle)
    assert json.loads(result.output)["models"] == [*manifest.stages, PIPELINE_MODEL]
    dtypes = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}
    for stage, spec in manifest.stages.items():
        config = parse_config(out / stage / "config.pbtxt")
        assert config.name == stage and config.max_batch_size == 12
        assert config.dynamic_batching.max_queue_delay_microseconds == 3000
        if backend == "onnxruntime":
            assert config.platform == "onnxruntime_onnx" and (out / stage / "1" / "model.onnx").is_file()
        else:
            assert config.backend == "python" and (out / stage / "1" / "model.py").is_file()
        for declared, tensors in ((config.input, spec.inputs), (config.output, spec.outputs)):
            assert [t.name for t in declared] == [t.name for t in tensors]
            for entry, tensor in zip(declared, tensors):
                assert entry.data_type == dtypes[tensor.dtype]
                assert list(entry.dims) == dims_of(tensor.shape)
                # `[batch]` tensors (lengths) reach the graph as [B]: dims [1] reshaped to []
                assert entry.HasField("reshape") == (len(tensor.shape) == 1)
        assert (out / stage / "1" / ("model.onnx")).read_bytes() == (
            cmgi_bundle / manifest.precisions["fp32"][stage].path
        ).read_bytes()
    pipeline = parse_config(out / PIPELINE_MODEL / "config.pbtxt")
    assert pipeline.backend == "python"
    assert [(t.name, list(t.dims), t.allow_ragged_batch) for t in pipeline.input] == [
        ("waveform", [-1], True),
        ("length", [1], False),
    ]
    assert [(t.name, list(t.dims)) for t in pipeline.output] == [
        ("label", [1]),
        ("probabilities", [4]),
        ("logits", [4]),
        ("transcript", [1]),
    ]
    assert json.loads(pipeline.parameters["labels"].string_value) == manifest.labels
    assert pipeline.parameters["runners"].string_value == "bls"
    for name in ("bundle.json", "tokenizer.json", "model.py"):
        assert (out / PIPELINE_MODEL / "1" / name).is_file()
    readme = (out / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and 'client.infer("edgeser"' in readme


def test_tensorrt_repository_needs_engines(cmgi_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        export_triton_command, [str(cmgi_bundle), str(tmp_path / "m"), "--backend", "tensorrt"]
    )
    assert result.exit_code != 0 and not (tmp_path / "m").exists()
    assert isinstance(result.exception, ServingError)
    assert "no TensorRT fp32 engines" in str(result.exception) and "\n" not in str(result.exception)


def write_engine_manifest(bundle: Path, folder: Path, batch: int, seconds: int) -> None:
    """The engine manifest `build-trt` writes, reduced to its profiles: batch 1..`batch`, `seconds` of audio."""
    ranges = {
        "batch": (1, 1, batch),
        "samples": (8000, 32000, seconds * 16000),
        "frames": (24, 99, seconds * 50),
        "tokens": (1, 16, 64),
    }
    stages = {}
    for stage, spec in read_manifest(bundle).stages.items():
        stages[stage] = {
            "engine": f"{stage}.engine",
            "profiles": {
                t.name: {
                    k: [ranges[d][i] if isinstance(d, str) else d for d in t.shape]
                    for i, k in enumerate(("min", "opt", "max"))
                }
                for t in spec.inputs
            },
        }
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "stages": stages}))


def test_tensorrt_repository_uses_the_built_engines(cmgi_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(cmgi_bundle, bundle)
    engines = bundle / "trt" / "h200-sm90-trt10.13" / "fp32"
    engines.mkdir(parents=True)
    stages = list(read_manifest(bundle).stages)
    for stage in stages:
        (engines / f"{stage}.engine").write_bytes(stage.encode())  # stands in for a serialised engine
    write_engine_manifest(bundle, engines, batch=8, seconds=7)
    out = tmp_path / "models"
    write_model_repository(bundle, out, backend="tensorrt", options=RepositoryOptions(max_batch=4))
    for stage in stages:
        config = parse_config(out / stage / "config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert (out / stage / "1" / "model.plan").read_bytes() == stage.encode()
    result = CliRunner().invoke(export_triton_command, [str(bundle), str(out), "--backend", "tensorrt"])
    assert result.exit_code == 0, result.output
    for model in [*stages, PIPELINE_MODEL]:  # the engines' batch maximum, not 16
        assert parse_config(out / model / "config.pbtxt").max_batch_size == 8
    # and the clips the engines' samples maximum takes, not 30 s
    assert parse_config(out / PIPELINE_MODEL / "config.pbtxt").parameters["max_seconds"].string_value == "7"
    result = CliRunner().invoke(
        export_triton_command,
        [str(bundle), str(tmp_path / "m16"), "--backend", "tensorrt", "--max-batch", "16"],
    )
    assert result.exit_code != 0 and not (tmp_path / "m16").exists()
    assert "--max-batch 16: the TensorRT engines" in str(result.exception) and "at most 8 clips" in str(
        result.exception
    )
    with pytest.raises(ServingError, match="no TensorRT engines there"):
        write_model_repository(bundle, out, backend="tensorrt", engines="a100-sm80-trt10.13")
    shutil.copytree(engines.parent, bundle / "trt" / "a100-sm80-trt10.13")
    with pytest.raises(ServingError, match="several targets"):
        write_model_repository(bundle, out, backend="tensorrt")
    (engines / "ctc_head.engine").unlink()
    with pytest.raises(ServingError, match="missing TensorRT engine"):
        write_model_repository(bundle, out, backend="tensorrt", engines="h200-sm90-trt10.13")
    assert parse_config(out / "ctc_head" / "config.pbtxt").platform == "tensorrt_plan"  # the old one stays


# ------------------------------------------------------------------------------------------- the server


def serve_env_python() -> Path:
    """The serve environment's Python; skip (fail on CI) where it was not built."""
    if not SERVE_PYTHON.is_file():
        message = f"serve environment absent ({SERVE_PYTHON}): build it with `make serve-env`"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI's `make test` builds it)")
        pytest.skip(message)
    return SERVE_PYTHON


def start(command: list[str], http_port: int, log: Path, timeout_s: float = 180.0) -> subprocess.Popen[bytes]:
    """Run a server command from the serve environment (this checkout's edgeser first); wait until ready."""
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2
            ) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    pytest.fail(f"server not ready after {timeout_s} s: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def ports() -> tuple[int, int]:
    from edgeser.serving.server import free_port

    return free_port(), free_port()


@pytest.fixture(scope="module")
def served(cmgi_bundle: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """`edgeser serve` on the tiny cmgi bundle: (http url, grpc url)."""
    python = serve_env_python()
    http_port, grpc_port = ports()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [
        str(python),
        "-c",
        "from edgeser.cli.serving import serve_command; serve_command()",
        str(cmgi_bundle),
        "--port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--max-batch",
        "8",
        "--max-delay-ms",
        "20",
        "--threads",
        "1",
    ]
    process = start(command, http_port, log)
    yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    stop(process)
    assert process.returncode == 0, log.read_text()[-2000:]


def clips(data: Path | None) -> list[np.ndarray]:
    """Clips of different lengths: synthetic, plus a few real EMO-DB clips where the corpora are present."""
    from edgeser.audio import load_audio

    waves = [tone(0.4 + 0.37 * i, freq=150.0 + 40 * i, seed=i) for i in range(6)]
    if data is not None:
        waves += [
            load_audio(p, max_duration=30.0) for p in sorted((data / "emodb" / "wav").glob("03a0*.*"))[:4]
        ]
    return waves


def test_served_results_equal_the_pipeline(served: tuple[str, str], cmgi_bundle: Path) -> None:
    from conftest import data_root

    from edgeser.runtime import Pipeline
    from edgeser.serving.client import TritonClient

    pipe = Pipeline.load(cmgi_bundle)
    waves = clips(data_root())
    expected = [pipe((w, 16_000)) for w in waves]
    for protocol, url in zip(("http", "grpc"), served):
        client = TritonClient(url, protocol=protocol)
        with ThreadPoolExecutor(len(waves)) as pool:  # concurrent clients, one request each, several rounds
            got = [r for _ in range(2) for r in pool.map(client.predict, waves)]
        for result, reference in zip(got, expected * 2):
            assert result.label == reference.label
            assert result.transcript == reference.transcript
            np.testing.assert_allclose(result.logits, reference.logits, atol=LOGIT_TOLERANCE, rtol=0)
            assert result.probabilities == pytest.approx(reference.probabilities, abs=1e-5)
        several = client.predict_batch(waves[:3])  # one request with three padded clips and their lengths
        assert [r.label for r in several] == [e.label for e in expected[:3]]
        np.testing.assert_allclose(
            [r.logits for r in several], [e.logits for e in expected[:3]], atol=LOGIT_TOLERANCE, rtol=0
        )
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(served[0]).get_inference_statistics(PIPELINE_MODEL)
    model = stats["model_stats"][0]
    assert model["inference_count"] >= 4 * len(waves)
    assert (
        model["execution_count"] < model["inference_count"]
    )  # the server batched concurrent clients together


def raw_infer(url: str, waveform: np.ndarray, length: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    dtype = {"float32": "FP32", "float64": "FP64", "int64": "INT64"}[waveform.dtype.name]
    inputs = [httpclient.InferInput("waveform", list(waveform.shape), dtype)]
    inputs[0].set_data_from_numpy(waveform)
    if length is not None:
        inputs.append(httpclient.InferInput("length", list(length.shape), "INT64"))
        inputs[1].set_data_from_numpy(length)
    return client.infer(PIPELINE_MODEL, inputs)


def test_bad_requests_get_errors_and_the_server_keeps_serving(
    served: tuple[str, str], cmgi_bundle: Path
) -> None:
    from tritonclient.utils import InferenceServerException

    from edgeser.runtime import Pipeline
    from edgeser.serving.client import TritonClient

    url = served[0]
    good = tone(1.0, seed=7)
    bad = {
        "wrong dtype": (good[None, :].astype(np.float64), None, "FP64"),
        "empty audio": (np.zeros((1, 0), dtype=np.float32), None, "empty audio"),
        "too long": (tone(31.0, seed=1)[None, :], None, "too long"),
        "length beyond the samples": (good[None, :], np.array([[good.size + 5]], dtype=np.int64), "outside"),
        "silent": (np.zeros((1, 16_000), dtype=np.float32), None, "silent"),
    }
    for waveform, length, message in bad.values():
        with pytest.raises(InferenceServerException, match=message):
            raw_infer(url, waveform, length)
    # bad and good requests arriving together: the good ones are answered, each bad one gets its own error
    client = TritonClient(url)
    reference = Pipeline.load(cmgi_bundle)((good, 16_000))

    def send(index: int) -> object:
        if index % 2:
            try:
                return raw_infer(url, np.zeros((1, 0), dtype=np.float32))
            except InferenceServerException as err:
                return err
        return client.predict(good)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, range(8)))
    for index, outcome in enumerate(outcomes):
        if index % 2:
            assert isinstance(outcome, InferenceServerException) and "empty audio" in str(outcome)
        else:
            assert outcome.label == reference.label  # type: ignore[attr-defined]
            np.testing.assert_allclose(outcome.logits, reference.logits, atol=LOGIT_TOLERANCE)  # type: ignore[attr-defined]


def test_exported_repository_runs_in_triton(cmgi_bundle: Path, tmp_path: Path) -> None:
    """The BLS model chains the stage models inside Triton (stages in the Python backend: the pytriton
    tritonserver has no ONNX Runtime backend); TritonRunner chains the same stage models from the client."""
    from edgeser.runtime import Pipeline
    from edgeser.serving.client import TritonClient, TritonRunner
    from edgeser.stages import StageGraph

    python = serve_env_python()
    repository = tmp_path / "models"
    write_model_repository(
        cmgi_bundle, repository, backend="python", options=RepositoryOptions(max_delay_ms=20)
    )
    http_port, grpc_port = ports()
    script = (
        "import sys, signal, time; from pathlib import Path; from edgeser.serving.server import TritonServer; "
        "s = TritonServer(Path(sys.argv[1]), http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), "
        "workdir=Path(sys.argv[4])); s.start(); "
        "signal.signal(signal.SIGTERM, lambda *a: (s.stop(), sys.exit(0))); s.wait()"
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    process = start(
        [str(python), "-c", script, str(repository), str(http_port), str(grpc_port), str(workdir)],
        http_port,
        tmp_path / "server.log",
    )
    try:
        pipe = Pipeline.load(cmgi_bundle)
        waves = clips(None)[:4]
        client = TritonClient(f"127.0.0.1:{grpc_port}", protocol="grpc")
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(client.predict, waves))
        expected = [pipe((w, 16_000)) for w in waves]
        assert [g.label for g in got] == [e.label for e in expected]
        assert [g.transcript for g in got] == [e.transcript for e in expected]
        np.testing.assert_allclose(
            [g.logits for g in got], [e.logits for e in expected], atol=LOGIT_TOLERANCE
        )
        graph = StageGraph.from_manifest(read_manifest(cmgi_bundle), cmgi_bundle)
        runners = {stage: TritonRunner(f"127.0.0.1:{http_port}", stage) for stage in graph.stages}
        remote = graph.run(runners, waves)
        np.testing.assert_allclose(remote.logits, pipe.run_stages(waves).logits, atol=LOGIT_TOLERANCE)
        assert remote.transcripts == pipe.run_stages(waves).transcripts
    finally:
        stop(process)
    assert not list(workdir.glob("*.lock"))


def test_serve_without_pytriton_names_the_extra() -> None:
    import importlib.util

    from edgeser.serving.server import find_tritonserver

    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("nvidia-pytriton is installed in this environment")
    with pytest.raises(
        MissingDependencyError,
        match=r"edgeser serve .*needs nvidia-pytriton, .*`serve` extra in its own environment",
    ):
        find_tritonserver()
