"""The TensorRT runner's shape, type and buffer logic and its thread rule (with a stand-in engine and device, as
TensorRT cannot run here), the engine factory's refusals, and the onnxruntime provider plans."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeser.runtime.providers import CPU, CUDA, TENSORRT, provider_plan
from edgeser.runtime.tensorrt import (
    BufferPool,
    EngineShapeError,
    EngineTensor,
    TensorRTRunner,
    check_feed,
    nbytes,
    numpy_dtype,
    output_shape,
    tensorrt_runners,
)
from edgeser.stages import StageRunner
from edgeser.trt.engines import TensorRTUnavailable
from edgeser.trt.profiles import InputProfile

WAVE = EngineTensor("waveform", True, np.dtype(np.float32), (-1, -1), (1, 8000), (4, 64000))
LENS = EngineTensor("lengths", True, np.dtype(np.int32), (-1,), (1,), (4,))
FEATS = EngineTensor("features", False, np.dtype(np.float32), (-1, -1, 4))


def test_feeds_are_checked_against_rank_fixed_axes_and_profile() -> None:
    ok = check_feed(WAVE, np.zeros((2, 16000), np.float64), "audio_encoder")
    assert ok.dtype == np.float32 and ok.flags.c_contiguous
    assert check_feed(LENS, np.array([16000, 9000], np.int64), "audio_encoder").dtype == np.int32
    with pytest.raises(EngineShapeError, match="input waveform has rank 1"):
        check_feed(WAVE, np.zeros(16000, np.float32), "audio_encoder")
    with pytest.raises(EngineShapeError, match=r"outside the engine's optimisation profile \(1, 8000\)..\(4, 64000\); "
                                               r"rebuild with `edgeser build-trt --profile audio_encoder:waveform"):
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

    def alloc(self, size: int) -> int:
        with self.lock:
            pointer, self.next = self.next, self.next + 1
            self.memory[pointer] = bytearray(size)
            self.allocs += 1
        return pointer

    def free(self, pointer: int) -> None:
        del self.memory[pointer]

    def stream(self) -> int:
        return 0

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        self.memory[pointer][: array.nbytes] = array.tobytes()

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        array[...] = np.frombuffer(bytes(self.memory[pointer][: array.nbytes]), dtype=array.dtype).reshape(array.shape)

    def synchronize(self, stream: int) -> None:
        pass


class FakeContext:
    """An execution context computing features = waveform frames x 4 (mean of 4 channels), to check wiring."""

    def __init__(self, device: FakeDevice, log: list) -> None:
        self.device, self.shapes, self.addresses = device, {}, {}
        log.append(threading.get_ident())

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        batch, samples = self.shapes["waveform"]
        return (batch, samples // 100, 4)

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return True

    def execute_async_v3(self, stream: int) -> bool:
        batch, samples = self.shapes["waveform"]
        wave = np.frombuffer(bytes(self.device.memory[self.addresses["waveform"]][: batch * samples * 4]),
                             np.float32).reshape(batch, samples)
        frames = wave[:, : (samples // 100) * 100].reshape(batch, -1, 100).mean(-1)
        out = np.repeat(frames[..., None], 4, axis=-1).astype(np.float32)
        self.device.memory[self.addresses["features"]][: out.nbytes] = out.tobytes()
        return True


class FakeEngine:
    def __init__(self, device: FakeDevice) -> None:
        self.device, self.contexts = device, []

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self.device, self.contexts)


def test_runner_runs_and_keeps_one_context_per_thread() -> None:
    device = FakeDevice()
    engine = FakeEngine(device)
    runner = TensorRTRunner(engine, [WAVE, LENS, FEATS], "audio_encoder", device)
    assert isinstance(runner, StageRunner) and runner.input_names == ("waveform", "lengths")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal((1 + i % 3, 8000 + 800 * i)).astype(np.float32) for i in range(6)]
    results: dict[int, np.ndarray] = {}
    used: dict[int, set[int]] = {}
    together = threading.Barrier(6)

    def work(index: int) -> None:
        together.wait()  # all six threads alive at once
        for _ in range(3):
            wave = waves[index]
            results[index] = runner.run({"waveform": wave, "lengths": np.full(len(wave), wave.shape[1])})["features"]
            used.setdefault(index, set()).add(id(runner._local.context))
        together.wait()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(engine.contexts) == len(set(engine.contexts)) == 6  # one context per thread...
    assert all(len(ids) == 1 for ids in used.values()) and len(set().union(*used.values())) == 6  # ...kept, unshared
    for index, wave in enumerate(waves):
        frames = wave.shape[1] // 100
        expected = wave[:, : frames * 100].reshape(len(wave), frames, 100).mean(-1)
        np.testing.assert_allclose(results[index][..., 0], expected, rtol=1e-6)
        assert results[index].shape == (len(wave), frames, 4)
    with pytest.raises(EngineShapeError, match="missing input.s. lengths"):
        runner.run({"waveform": waves[0]})


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
    with pytest.raises(TensorRTUnavailable, match=r"^TensorRT is not installed: pip install 'edgeser\[trt\]'"):
        tensorrt_runners(cmgi_bundle, read_manifest(cmgi_bundle), "fp32")


def test_provider_plans(tmp_path: Path) -> None:
    assert provider_plan("onnxruntime").providers == [CPU]
    assert provider_plan("cuda", device=1).session_kwargs() == {
        "providers": [CUDA, CPU], "provider_options": [{"device_id": "1"}, {}]}
    profiles = {"waveform": InputProfile((1, 8000), (1, 32000), (8, 64000)), "lengths": InputProfile((1,), (1,), (8,))}
    plan = provider_plan("tensorrt-ep", tmp_path, "fp16", stage="audio_encoder", profiles=profiles, workspace_mb=512)
    assert plan.providers == [TENSORRT, CUDA, CPU] and len(plan.options) == 3
    options = plan.options[0]
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt" / "ort-ep" / "fp16")
    assert (tmp_path / "trt" / "ort-ep" / "fp16").is_dir()
    assert options["trt_fp16_enable"] == "True" and options["trt_int8_enable"] == "False"
    assert options["trt_profile_max_shapes"] == "waveform:8x64000,lengths:8"
    assert options["trt_max_workspace_size"] == str(512 << 20)
    assert provider_plan("tensorrt-ep", tmp_path, "int8").options[0]["trt_int8_enable"] == "True"
    with pytest.raises(Exception, match="unknown backend 'tpu'"):
        provider_plan("tpu")


def test_runtime_modules_stay_light() -> None:
    code = ("import sys, edgeser.runtime.tensorrt, edgeser.runtime.providers, edgeser.trt.engines; "
            "print(sorted(m for m in ('tensorrt', 'cuda', 'torch', 'onnx', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
