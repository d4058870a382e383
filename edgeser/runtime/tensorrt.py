"""A TensorRT stage runner: one serialised engine per stage, tensorrt + cuda-python device buffers, no torch.

    runners = tensorrt_runners(Path("build/cmgi"), manifest, "int8")   # {stage: TensorRTRunner}

Thread safety: a runner may be shared between threads. The deserialised engine is shared (TensorRT allows
creating execution contexts from one engine concurrently); everything that is not thread-safe, the
`IExecutionContext`, its CUDA stream and its device buffers, exists once per thread (`threading.local`), so
concurrent `run` calls never share a context and never wait on each other.

Frame lengths are never read from an engine: `StageGraph` computes them from the bundle's frame layout. The
shape and buffer bookkeeping (`EngineTensor`, `check_feed`, `output_shape`, `BufferPool`) is plain numpy so it
is tested without TensorRT; `tensorrt` and `cuda` are imported only when an engine is loaded. Written against
the TensorRT 10.x/11.x Python API documentation; not run against TensorRT here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeser.errors import BundleError

# TensorRT DataType member names -> numpy; BF16/FP8/INT4/FP4 engine I/O has no numpy type.
NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
               "BOOL": np.bool_, "UINT8": np.uint8}


class EngineShapeError(BundleError):
    """A feed that does not fit an engine input (name, type, rank, fixed axis or optimisation profile)."""


@dataclass(frozen=True)
class EngineTensor:
    """One engine I/O tensor: name, direction, numpy type, shape (-1 = dynamic) and profile range (inputs)."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    min: tuple[int, ...] | None = None
    max: tuple[int, ...] | None = None


def numpy_dtype(type_name: str, tensor: str) -> np.dtype:
    """numpy type of a TensorRT DataType member name ("FLOAT", "HALF", ...)."""
    if type_name not in NUMPY_TYPES:
        raise EngineShapeError(f"engine tensor {tensor} is {type_name}, which has no numpy type; export it as "
                               "FP32/FP16/INT32/INT64")
    return np.dtype(NUMPY_TYPES[type_name])


def check_feed(tensor: EngineTensor, value: np.ndarray, stage: str) -> np.ndarray:
    """The feed as a C-contiguous array of the engine's type, after checking rank, fixed axes and the profile."""
    array = np.asarray(value)
    if array.ndim != len(tensor.shape):
        raise EngineShapeError(f"{stage}: input {tensor.name} has rank {array.ndim}, the engine expects "
                               f"{len(tensor.shape)} {tensor.shape}")
    for axis, (got, want) in enumerate(zip(array.shape, tensor.shape)):
        if want >= 0 and got != want:
            raise EngineShapeError(f"{stage}: input {tensor.name} axis {axis} is {got}, the engine fixes it at {want}")
    if tensor.min is not None and tensor.max is not None:
        low = [axis for axis, (got, lo) in enumerate(zip(array.shape, tensor.min)) if got < lo]
        high = [axis for axis, (got, hi) in enumerate(zip(array.shape, tensor.max)) if got > hi]
        if low or high:
            raise EngineShapeError(
                f"{stage}: input {tensor.name} shape {tuple(array.shape)} is outside the engine's optimisation "
                f"profile {tensor.min}..{tensor.max}; rebuild with `edgeser build-trt --profile "
                f"{stage}:{tensor.name}=MIN,OPT,MAX` covering it")
    if array.dtype != tensor.dtype:
        if array.dtype.kind != tensor.dtype.kind and not (array.dtype.kind in "iu" and tensor.dtype.kind in "iu"):
            raise EngineShapeError(f"{stage}: input {tensor.name} is {array.dtype}, the engine takes {tensor.dtype}")
        if tensor.dtype.kind in "iu" and array.size and (
                array.min() < np.iinfo(tensor.dtype).min or array.max() > np.iinfo(tensor.dtype).max):
            raise EngineShapeError(f"{stage}: input {tensor.name} values do not fit the engine's {tensor.dtype}")
        array = array.astype(tensor.dtype)
    return np.ascontiguousarray(array)


def output_shape(tensor: EngineTensor, resolved: tuple[int, ...], stage: str) -> tuple[int, ...]:
    """An output's shape once the inputs are set; data-dependent (-1) shapes are refused."""
    if any(d < 0 for d in resolved):
        raise EngineShapeError(f"{stage}: output {tensor.name} has a data-dependent shape {resolved}; edgeser's "
                               "stage graphs have none (rebuild from the bundle's graphs)")
    return tuple(int(d) for d in resolved)


def nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize


class BufferPool:
    """Grow-only device buffers per tensor name: reallocated only when a larger shape arrives."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity bytes)

    def get(self, name: str, size: int) -> int:
        pointer, capacity = self.buffers.get(name, (0, 0))
        if size > capacity:
            if pointer:
                self.device.free(pointer)
            capacity = max(size, 2 * capacity, 256)
            pointer = self.device.alloc(capacity)
            self.buffers[name] = (pointer, capacity)
        return pointer

    def close(self) -> None:
        for pointer, _ in self.buffers.values():
            self.device.free(pointer)
        self.buffers.clear()


class CudaDevice:
    """The few CUDA runtime calls a runner needs, through cuda-python."""

    def __init__(self) -> None:
        from edgeser.trt.engines import cuda_call, import_cudart

        self.rt, self.call = import_cudart(), cuda_call

    def alloc(self, size: int) -> int:
        return int(self.call(self.rt.cudaMalloc(size), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self.rt.cudaFree(pointer)

    def stream(self) -> Any:
        return self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def to_device(self, pointer: int, array: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream), "cudaMemcpyAsync")

    def to_host(self, array: np.ndarray, pointer: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream), "cudaMemcpyAsync")

    def synchronize(self, stream: Any) -> None:
        self.call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def engine_tensors(engine: Any, trt: Any) -> list[EngineTensor]:
    """I/O tensors of a deserialised engine (profile 0 ranges for inputs)."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = numpy_dtype(engine.get_tensor_dtype(name).name, name)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        low = high = None
        if is_input and any(d < 0 for d in shape):  # dynamic inputs carry profile 0's min/opt/max
            low, _, high = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
        tensors.append(EngineTensor(name, is_input, dtype, shape, low, high))
    return tensors


class TensorRTRunner:
    """Runs one stage engine; satisfies `edgeser.stages.StageRunner`. See the module docstring for threads."""

    def __init__(self, engine: Any, tensors: list[EngineTensor], stage: str, device: Any,
                 input_names: tuple[str, ...] | None = None) -> None:
        self.engine, self.stage, self.device = engine, stage, device
        self.tensors = {t.name: t for t in tensors}
        self.inputs = [t for t in tensors if t.is_input]
        self.outputs = [t for t in tensors if not t.is_input]
        self.input_names = input_names or tuple(t.name for t in self.inputs)
        self._local = threading.local()

    def _state(self) -> Any:
        state = self._local
        if not hasattr(state, "context"):
            state.context = self.engine.create_execution_context()
            state.stream = self.device.stream()
            state.buffers = BufferPool(self.device)
        return state

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [t.name for t in self.inputs if t.name not in feeds]
        if missing:
            raise EngineShapeError(f"{self.stage}: missing input(s) {', '.join(missing)}")
        state = self._state()
        arrays = {t.name: check_feed(t, feeds[t.name], self.stage) for t in self.inputs}
        for tensor in self.inputs:
            array = arrays[tensor.name]
            if state.context.set_input_shape(tensor.name, array.shape) is False:
                raise EngineShapeError(f"{self.stage}: TensorRT refused shape {array.shape} for {tensor.name}")
            pointer = state.buffers.get(tensor.name, array.nbytes)
            self.device.to_device(pointer, array, state.stream)
            state.context.set_tensor_address(tensor.name, pointer)
        results: dict[str, np.ndarray] = {}
        for tensor in self.outputs:
            shape = output_shape(tensor, tuple(state.context.get_tensor_shape(tensor.name)), self.stage)
            results[tensor.name] = np.empty(shape, dtype=tensor.dtype)
            pointer = state.buffers.get(tensor.name, nbytes(shape, tensor.dtype))
            state.context.set_tensor_address(tensor.name, pointer)
        if not state.context.execute_async_v3(state.stream):
            raise BundleError(f"{self.stage}: TensorRT execution failed (see TensorRT's log)")
        for tensor in self.outputs:
            pointer, _ = state.buffers.buffers[tensor.name]
            self.device.to_host(results[tensor.name], pointer, state.stream)
        self.device.synchronize(state.stream)
        return results


def tensorrt_runners(bundle_root: Path, manifest: Any, precision: str, device: int = 0) -> dict[str, TensorRTRunner]:
    """One TensorRT runner per stage from the engine folder built on a machine like this one.

    Refuses a folder built for another GPU / compute capability / TensorRT version, engines built from graphs the
    bundle no longer holds, and engine files whose checksum differs from their manifest.
    """
    from edgeser.trt.engines import (
        check_identity,
        check_sources,
        current_identity,
        find_engine_dir,
        import_tensorrt,
        read_engine_manifest,
        verified_engine_bytes,
    )

    if precision not in manifest.precisions:
        raise BundleError(f"{bundle_root}: no {precision!r} variant (available: {', '.join(manifest.precisions)})")
    identity = current_identity(device)
    folder = find_engine_dir(bundle_root, identity, precision)
    engines = read_engine_manifest(folder)
    check_identity(folder, engines, identity)
    check_sources(folder, engines, {stage: entry.sha256 for stage, entry in manifest.precisions[precision].items()})
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.ILogger.Severity.WARNING))
    cuda = CudaDevice()
    runners: dict[str, TensorRTRunner] = {}
    for stage in manifest.precisions[precision]:
        engine = runtime.deserialize_cuda_engine(verified_engine_bytes(folder, engines, stage))
        if engine is None:
            raise BundleError(f"{folder / engines['stages'][stage]['engine']}: TensorRT cannot deserialise it")
        names = tuple(t.name for t in manifest.stages[stage].inputs)
        runners[stage] = TensorRTRunner(engine, engine_tensors(engine, trt), stage, cuda, names)
    return runners
