"""The TensorRT runner's shape, type and buffer logic and its thread rule (with a stand-in engine and device, as
TensorRT cannot run here), the engine factory's refusals, and the onnxruntime provider plans."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from enum import IntEnum
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgeser.errors import (
    BundleError,
    EngineShapeError,
    MissingDependencyError,
    OptionError,
    ProviderError,
    TensorRTUnavailable,
)
from edgeser.runtime.profiles import InputProfile
from edgeser.runtime.providers import CPU, CUDA, TENSORRT, provider_plan
from edgeser.runtime.tensorrt import (
    BufferPool,
    EngineTensor,
    TensorRTRunner,
    check_feed,
    nbytes,
    numpy_dtype,
    output_shape,
    tensorrt_runners,
)
from edgeser.stages import StageRunner

WAVE = EngineTensor("waveform", True, np.dtype(np.float32), (-1, -1), (1, 8000), (4, 64000))
LENS = EngineTensor("lengths", True, np.dtype(np.int32), (-1,), (1,), (4,))
FEATS = EngineTensor("features", False, np.dtype(np.float32), (-1, -1, 4))


def test_feeds_are_checked_against_rank_fixed_axes_and_profile() -> None:
    ok = check_feed(WAVE, np.zeros((2, 16000), np.float64), "audio_encoder")
    assert ok.dtype == np.float32 and ok.flags.c_contiguous
    assert check_feed(LENS, np.array([16000, 9000], np.int64), "audio_encoder").dtype == np.int32
    with pytest.raises(EngineShapeError, match="input waveform has rank 1"):
        check_feed(WAVE, np.zeros(16000, np.float32), "audio_encoder")
    with pytest.raises(
        EngineShapeError,
        match=r"outside the engine's optimisation profile \(1, 8000\)..\(4, 64000\); "
        r"rebuild with `edgeser build-trt --profile audio_encoder:waveform",
    ):
        check_feed(WAVE, np.zeros((1, 70000), np.float32), "audio_encoder")
    with pytest.raises(EngineShapeError, match="engine fixes it at 4"):
        check_feed(EngineTensor("f", True, np.dtype(np.float32), (-1, 4)), np.zeros((1, 5), np.float32), "s")
    with pytest.raises(EngineShapeError, match="is float32, the engine takes int32"):
        check_feed(LENS, np.array([1.5], np.float32), "audio_encoder")
    with pytest.raises(EngineShapeError, match="do not fit the engine's int32"):
        check_feed(LENS, np.array([2**40], np.int64), "audio_encoder")


def test_types_shapes_and_sizes() -> None:
    assert numpy_dtype("HALF", "x") == np.float16 and numpy_dtype("INT64", "x") == np.int64
    with pytest.raises(EngineShapeError, match="BF16, which has no numpy type"):
        numpy_dtype("BF16", "token_features")
    assert output_shape(FEATS, (2, 99, 4), "s") == (2, 99, 4)
    with pytest.raises(EngineShapeError, match="data-dependent shape"):
        output_shape(FEATS, (2, -1, 4), "s")
    assert nbytes((2, 99, 4), np.dtype(np.float16)) == 2 * 99 * 4 * 2 and nbytes((), np.dtype(np.int64)) == 8


class FakeDevice:
    """Host memory standing in for device memory: pointers index a dict of byte arrays."""

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.next = 1
        self.allocs = 0
        self.lock = threading.Lock()
        self.streams: set[int] = set()
        self.current: dict[int, bool] = {}  # thread -> use() was called

    def use(self) -> None:
        self.current[threading.get_ident()] = True

    def alloc(self, size: int) -> int:
        with self.lock:
            pointer, self.next = self.next, self.next + 1
            self.memory[pointer] = bytearray(size)
            self.allocs += 1
        return pointer

    def free(self, pointer: int) -> None:
        del self.memory[pointer]

    def stream(self) -> int:
        assert self.current.get(threading.get_ident()), "stream created before the device was set"
        with self.lock:
            self.next += 1
            self.streams.add(self.next)
            return self.next

    def destroy_stream(self, stream: int) -> None:
        self.streams.remove(stream)

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        self.memory[pointer][: array.nbytes] = array.tobytes()

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        array[...] = np.frombuffer(bytes(self.memory[pointer][: array.nbytes]), dtype=array.dtype).reshape(
            array.shape
        )

    def synchronize(self, stream: int) -> None:
        pass


class FakeContext:
    """An execution context computing features = waveform frames x 4 (mean of 4 channels), to check wiring.

    It fails if two runs overlap on it, or if it runs before it was given an optimisation profile."""

    def __init__(self, device: FakeDevice, log: list) -> None:
        self.device, self.shapes, self.addresses = device, {}, {}
        self.profile: int | None = None
        self.busy = False
        log.append(self)

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        if name == "waveform":  # a run's first call
            assert not self.busy, "two runs share one execution context"
            self.busy = True
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        batch, samples = self.shapes["waveform"]
        return (batch, samples // 100, 4)

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert self.profile is not None
        batch, samples = self.shapes["waveform"]
        wave = np.frombuffer(
            bytes(self.device.memory[self.addresses["waveform"]][: batch * samples * 4]), np.float32
        ).reshape(batch, samples)
        frames = wave[:, : (samples // 100) * 100].reshape(batch, -1, 100).mean(-1)
        out = np.repeat(frames[..., None], 4, axis=-1).astype(np.float32)
        self.device.memory[self.addresses["features"]][: out.nbytes] = out.tobytes()
        time.sleep(0.002)  # long enough for the other threads to try the same context
        self.busy = False
        return True


class FakeEngine:
    def __init__(self, device: FakeDevice, profiles: int = 1) -> None:
        self.device, self.contexts = device, []
        self.num_optimization_profiles = profiles

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self.device, self.contexts)


@pytest.mark.parametrize("profiles", [1, 3])
def test_runner_gives_each_concurrent_run_its_own_context_and_profile(profiles: int) -> None:
    device = FakeDevice()
    engine = FakeEngine(device, profiles)
    runner = TensorRTRunner(engine, [WAVE, LENS, FEATS], "audio_encoder", device)
    assert isinstance(runner, StageRunner) and runner.input_names == ("waveform", "lengths")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal((1 + i % 3, 8000 + 800 * i)).astype(np.float32) for i in range(6)]
    results: dict[int, np.ndarray] = {}
    together = threading.Barrier(6)

    def work(index: int) -> None:
        together.wait()  # all six threads alive at once
        for _ in range(3):
            wave = waves[index]
            results[index] = runner.run({"waveform": wave, "lengths": np.full(len(wave), wave.shape[1])})[
                "features"
            ]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # one context per profile at most, each on its own profile (the FakeContext fails on shared use)
    assert 1 <= len(engine.contexts) <= profiles
    assert sorted(c.profile for c in engine.contexts) == list(range(len(engine.contexts)))
    for index, wave in enumerate(waves):
        frames = wave.shape[1] // 100
        expected = wave[:, : frames * 100].reshape(len(wave), frames, 100).mean(-1)
        np.testing.assert_allclose(results[index][..., 0], expected, rtol=1e-6)
        assert results[index].shape == (len(wave), frames, 4)
    with pytest.raises(EngineShapeError, match="missing input.s. lengths"):
        runner.run({"waveform": waves[0]})
    assert device.streams and device.memory
    runner.close()  # streams destroyed, buffers freed
    assert device.streams == set() and device.memory == {}
    with pytest.raises(BundleError, match="runner is closed"):
        runner.run({"waveform": waves[0], "lengths": np.array([waves[0].shape[1]])})


def test_buffers_grow_only() -> None:
    device = FakeDevice()
    pool = BufferPool(device)
    first = pool.get("x", 1000)
    assert pool.get("x", 900) == first and pool.get("x", 1000) == first and device.allocs == 1
    assert pool.get("x", 1500) != first and device.allocs == 2 and first not in device.memory
    pool.close()
    assert device.memory == {}


def test_runners_without_tensorrt_say_what_is_missing(cmgi_bundle: Path) -> None:
    from edgeser.bundle import read_manifest

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(
        MissingDependencyError,
        match=r"^building or running TensorRT engines needs tensorrt, which is "
        r"not installed: pip install 'edgeser\[trt\]'",
    ):
        tensorrt_runners(cmgi_bundle, read_manifest(cmgi_bundle), "fp32")


def test_provider_plans(tmp_path: Path) -> None:
    assert provider_plan("onnxruntime").providers == [CPU]
    assert provider_plan("cuda", device=1).session_kwargs() == {
        "providers": [CUDA, CPU],
        "provider_options": [{"device_id": "1"}, {}],
    }
    profiles = {
        "waveform": InputProfile((1, 8000), (1, 32000), (8, 64000)),
        "lengths": InputProfile((1,), (1,), (8,)),
    }
    plan = provider_plan(
        "tensorrt-ep", tmp_path, "fp16", stage="audio_encoder", profiles=profiles, workspace_mb=512
    )
    assert plan.providers == [TENSORRT, CUDA, CPU] and len(plan.options) == 3
    options = plan.options[0]
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt" / "ort-ep" / "fp16")
    assert (tmp_path / "trt" / "ort-ep" / "fp16").is_dir()
    assert options["trt_fp16_enable"] == "True" and options["trt_int8_enable"] == "False"
    assert options["trt_profile_max_shapes"] == "waveform:8x64000,lengths:8"
    assert options["trt_max_workspace_size"] == str(512 << 20)
    assert provider_plan("tensorrt-ep", tmp_path, "int8-trt").options[0]["trt_int8_enable"] == "True"
    for cpu_only in ("int8", "int8-dynamic"):  # UINT8 Q/DQ / dynamic INT8: TensorRT's parser refuses them
        with pytest.raises(BundleError, match=f"--precision {cpu_only} with tensorrt-ep: .*use int8-trt"):
            provider_plan("tensorrt-ep", tmp_path, cpu_only)
    with pytest.raises(OptionError, match="unknown backend 'tpu' for onnxruntime"):
        provider_plan("tpu")


def test_ep_engine_cache_is_keyed_by_the_graph_checksum(tmp_path: Path) -> None:
    def prefix(sha: str) -> str:
        return provider_plan(
            "tensorrt-ep", tmp_path, "int8-trt", stage="text_encoder", graph_sha256=sha
        ).options[0]["trt_engine_cache_prefix"]

    assert prefix("ab" * 32) == "text_encoder-" + "ab" * 8
    assert prefix("ab" * 32) != prefix("cd" * 32)  # re-quantised weights or scales: another engine


def test_a_session_without_its_tensorrt_ep_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeser.runtime.providers as providers

    session = SimpleNamespace(get_providers=lambda: [CUDA, CPU])  # what onnxruntime's fallback leaves
    providers.check_providers(session, [CPU], Path("g.onnx"))  # not asked for: fine
    providers.check_providers(
        SimpleNamespace(get_providers=lambda: [TENSORRT, CPU]), [TENSORRT, CPU], Path("g")
    )
    monkeypatch.setattr(providers, "installed_tensorrt_majors", lambda: {11})
    with pytest.raises(
        ProviderError,
        match=r"g.onnx: onnxruntime .* fell back to CUDAExecutionProvider, "
        r"CPUExecutionProvider without its TensorRT EP; this host has TensorRT 11 "
        r"only \(libnvinfer.so.11\)",
    ):
        providers.check_providers(session, [TENSORRT, CUDA, CPU], Path("g.onnx"))
    monkeypatch.setattr(providers, "installed_tensorrt_majors", lambda: set())
    with pytest.raises(ProviderError, match="no TensorRT 10 runtime"):
        providers.check_providers(session, [TENSORRT, CUDA, CPU], Path("g.onnx"))


def test_runtime_modules_stay_light() -> None:
    code = (
        "import sys, edgeser.runtime.tensorrt, edgeser.runtime.providers, edgeser.runtime.engines; "
        "print(sorted(m for m in ('tensorrt', 'cuda', 'torch', 'onnx', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"


class FakeCudaError(IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1


class FakeCudart:
    """cuda-python's runtime module as far as the runner uses it; records (thread, call, args) in `calls`."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, calls: list) -> None:
        self.calls, self.free_error = calls, FakeCudaError.cudaSuccess

    def _record(self, name: str, *args: object) -> None:
        self.calls.append((threading.get_ident(), name, args))

    def cudaSetDevice(self, index: int) -> tuple:
        self._record("cudaSetDevice", index)
        return (FakeCudaError.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple:
        self._record("cudaStreamCreate")
        return FakeCudaError.cudaSuccess, 77

    def cudaStreamDestroy(self, stream: int) -> tuple:
        self._record("cudaStreamDestroy", stream)
        return (FakeCudaError.cudaSuccess,)

    def cudaMalloc(self, size: int) -> tuple:
        self._record("cudaMalloc", size)
        return FakeCudaError.cudaSuccess, 4096

    def cudaFree(self, pointer: int) -> tuple:
        self._record("cudaFree", pointer)
        return (self.free_error,)

    def cudaMemcpyAsync(self, *args: object) -> tuple:
        return (FakeCudaError.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: int) -> tuple:
        return (FakeCudaError.cudaSuccess,)


def fake_tensorrt(calls: list) -> SimpleNamespace:
    """`tensorrt` as far as tensorrt_runners uses it: an engine with one dynamic input and one output."""

    class Context:
        def __init__(self) -> None:
            calls.append((threading.get_ident(), "create_execution_context", ()))

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            return True

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            return (1, 4)

        def set_tensor_address(self, name: str, pointer: int) -> bool:
            return True

        def execute_async_v3(self, stream: int) -> bool:
            return True

    class Engine:
        num_io_tensors, num_optimization_profiles = 2, 1
        names = ("token_ids", "features")

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "token_ids" else "out"

        def get_tensor_dtype(self, name: str) -> SimpleNamespace:
            return SimpleNamespace(name="INT64" if name == "token_ids" else "FLOAT")

        def get_tensor_shape(self, name: str) -> tuple:
            return (-1, -1) if name == "token_ids" else (-1, 4)

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
            return (1, 1), (1, 8), (8, 64)

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            calls.append((threading.get_ident(), "deserialize_cuda_engine", ()))
            return Engine()

    return SimpleNamespace(
        Runtime=Runtime,
        Logger=lambda severity: None,
        ILogger=SimpleNamespace(Severity=SimpleNamespace(WARNING=2)),
        TensorIOMode=SimpleNamespace(INPUT="in"),
    )


def test_runners_set_their_gpu_before_deserialising_and_in_every_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import edgeser.runtime.engines as engines

    calls: list = []
    cudart = FakeCudart(calls)
    monkeypatch.setattr(engines, "import_cudart", lambda: cudart)
    monkeypatch.setattr(engines, "import_tensorrt", lambda: fake_tensorrt(calls))
    monkeypatch.setattr(engines, "current_identity", lambda device: f"gpu{device}")
    monkeypatch.setattr(engines, "find_engine_dir", lambda root, identity, precision: root)
    monkeypatch.setattr(engines, "read_engine_manifest", lambda folder: {"stages": {}})
    monkeypatch.setattr(engines, "check_identity", lambda *args: None)
    monkeypatch.setattr(engines, "check_sources", lambda *args: None)
    monkeypatch.setattr(engines, "verified_engine_bytes", lambda *args: b"plan")
    stage = SimpleNamespace(inputs=[SimpleNamespace(name="token_ids")])
    manifest = SimpleNamespace(
        precisions={"fp16": {"text_encoder": SimpleNamespace(sha256="0" * 64)}},
        stages={"text_encoder": stage},
    )
    runner = tensorrt_runners(Path("bundle"), manifest, "fp16", device=1)["text_encoder"]
    names = [name for _, name, _ in calls]
    assert names.index("cudaSetDevice") < names.index("deserialize_cuda_engine")
    assert ("cudaSetDevice", (1,)) in [(name, args) for _, name, args in calls]
    calls.clear()
    thread = threading.Thread(target=runner.run, args=({"token_ids": np.ones((1, 5), np.int64)},))
    thread.start()
    thread.join()
    mine = [(name, args) for ident, name, args in calls if ident == thread.ident]
    assert mine[0] == ("cudaSetDevice", (1,))  # the new thread's device is set before anything lands on one
    assert [name for name, _ in mine].index("create_execution_context") > 0
    cudart.free_error = FakeCudaError.cudaErrorInvalidValue
    with pytest.raises(TensorRTUnavailable, match="cudaFree failed: cudaErrorInvalidValue"):
        runner.close()  # a failed cudaFree is an error, not ignored
    assert ("cudaStreamDestroy", (77,)) in [(n, a) for _, n, a in calls]  # the stream still goes
