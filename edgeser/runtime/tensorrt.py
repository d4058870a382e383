"""A TensorRT stage runner: one serialised engine per stage, tensorrt + cuda-python device buffers, no torch.

    runners = tensorrt_runners(Path("build/cmgi"), manifest, "int8")   # {stage: TensorRTRunner}

Thread safety: a runner may be shared between threads. The deserialised engine is shared (TensorRT allows
creating execution contexts from one engine concurrently); what is not thread-safe, an `IExecutionContext`, its
CUDA stream and its device buffers, is a `ContextSlot` that one `run` holds at a time. With dynamic shapes each
context in concurrent use needs its own optimisation profile (NvInferRuntime.h, `setOptimizationProfileAsync`,
10.x and 11.x), so a runner makes at most one slot per profile of the engine (`build-trt --contexts N` builds N
identical profiles) and assigns slot k profile k: up to N runs go concurrently, more wait for a free slot (an
engine with one profile serialises its runs). Every call sets the runner's GPU first (`cudaSetDevice`: the
current device is per thread); `close()` destroys the streams and frees the buffers.

Frame lengths are never read from an engine: `StageGraph` computes them from the bundle's frame layout. The
shape and buffer bookkeeping (`EngineTensor`, `check_feed`, `output_shape`, `BufferPool`) is plain numpy so it
is tested without TensorRT; `tensorrt` and `cuda` are imported only when an engine is loaded. Written against
the TensorRT 10.x/11.x Python API documentation; not run against TensorRT here.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeser.errors import BundleError, EngineShapeError

# TensorRT DataType member names -> numpy; BF16/FP8/INT4/FP4 engine I/O has no numpy type.
NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


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
        raise EngineShapeError(
            f"engine tensor {tensor} is {type_name}, which has no numpy type; export it as "
            "FP32/FP16/INT32/INT64"
        )
    return np.dtype(NUMPY_TYPES[type_name])


def check_feed(tensor: EngineTensor, value: np.ndarray, stage: str) -> np.ndarray:
    """The feed as a C-contiguous array of the engine's type, after checking rank, fixed axes and the profile."""
    array = np.asarray(value)
    if array.ndim != len(tensor.shape):
        raise EngineShapeError(
            f"{stage}: input {tensor.name} has rank {array.ndim}, the engine expects "
            f"{len(tensor.shape)} {tensor.shape}"
        )
    for axis, (got, want) in enumerate(zip(array.shape, tensor.shape)):
        if want >= 0 and got != want:
            raise EngineShapeError(
                f"{stage}: input {tensor.name} axis {axis} is {got}, the engine fixes it at {want}"
            )
    if tensor.min is not None and tensor.max is not None:
        low = [axis for axis, (got, lo) in enumerate(zip(array.shape, tensor.min)) if got < lo]
        high = [axis for axis, (got, hi) in enumerate(zip(array.shape, tensor.max)) if got > hi]
        if low or high:
            raise EngineShapeError(
                f"{stage}: input {tensor.name} shape {tuple(array.shape)} is outside the engine's optimisation "
                f"profile {tensor.min}..{tensor.max}; rebuild with `edgeser build-trt --profile "
                f"{stage}:{tensor.name}=MIN,OPT,MAX` covering it"
            )
    if array.dtype != tensor.dtype:
        if array.dtype.kind != tensor.dtype.kind and not (
            array.dtype.kind in "iu" and tensor.dtype.kind in "iu"
        ):
            raise EngineShapeError(
                f"{stage}: input {tensor.name} is {array.dtype}, the engine takes {tensor.dtype}"
            )
        if (
            tensor.dtype.kind in "iu"
            and array.size
            and (array.min() < np.iinfo(tensor.dtype).min or array.max() > np.iinfo(tensor.dtype).max)
        ):
            raise EngineShapeError(
                f"{stage}: input {tensor.name} values do not fit the engine's {tensor.dtype}"
            )
        array = array.astype(tensor.dtype)
    return np.ascontiguousarray(array)


def output_shape(tensor: EngineTensor, resolved: tuple[int, ...], stage: str) -> tuple[int, ...]:
    """An output's shape once the inputs are set; data-dependent (-1) shapes are refused."""
    if any(d < 0 for d in resolved):
        raise EngineShapeError(
            f"{stage}: output {tensor.name} has a data-dependent shape {resolved}; edgeser's "
            "stage graphs have none (rebuild from the bundle's graphs)"
        )
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
        """Free every buffer; the first failed free is raised after the others were tried."""
        buffers, self.buffers = self.buffers, {}
        failed: list[Exception] = []
        for pointer, _ in buffers.values():
            try:
                self.device.free(pointer)
            except Exception as err:
                failed.append(err)
        if failed:
            raise failed[0]


class CudaDevice:
    """The few CUDA runtime calls a runner needs, through cuda-python, on GPU `index`."""

    def __init__(self, index: int = 0) -> None:
        from edgeser.runtime.engines import cuda_call, import_cudart

        self.rt, self.call, self.index = import_cudart(), cuda_call, int(index)

    def use(self) -> None:
        """Make this GPU the calling thread's current device (engines, buffers and streams land there)."""
        self.call(self.rt.cudaSetDevice(self.index), "cudaSetDevice")

    def alloc(self, size: int) -> int:
        return int(self.call(self.rt.cudaMalloc(size), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self.call(self.rt.cudaFree(pointer), "cudaFree")

    def stream(self) -> Any:
        return self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def destroy_stream(self, stream: Any) -> None:
        self.call(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def to_device(self, pointer: int, array: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(
            self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream), "cudaMemcpyAsync"
        )

    def to_host(self, array: np.ndarray, pointer: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(
            self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream), "cudaMemcpyAsync"
        )

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


@dataclass
class ContextSlot:
    """One execution context with its optimisation profile, CUDA stream and device buffers."""

    context: Any
    profile: int
    stream: Any
    buffers: BufferPool


class TensorRTRunner:
    """Runs one stage engine; satisfies `edgeser.stages.StageRunner`. See the module docstring for threads."""

    def __init__(
        self,
        engine: Any,
        tensors: list[EngineTensor],
        stage: str,
        device: Any,
        input_names: tuple[str, ...] | None = None,
    ) -> None:
        self.engine, self.stage, self.device = engine, stage, device
        self.tensors = {t.name: t for t in tensors}
        self.inputs = [t for t in tensors if t.is_input]
        self.outputs = [t for t in tensors if not t.is_input]
        self.input_names = input_names or tuple(t.name for t in self.inputs)
        self.profiles = max(1, int(engine.num_optimization_profiles))
        self.slots: list[ContextSlot] = []  # every slot made, busy or free
        self._free: list[ContextSlot] = []
        self._ready = threading.Condition()
        self._closed = False

    def _new_slot(self, profile: int) -> ContextSlot:
        context = self.engine.create_execution_context()
        if context is None:
            raise BundleError(f"{self.stage}: TensorRT could not create an execution context (GPU memory?)")
        stream = self.device.stream()
        if not context.set_optimization_profile_async(profile, stream):
            self.device.destroy_stream(stream)
            raise BundleError(f"{self.stage}: TensorRT refused optimisation profile {profile}")
        return ContextSlot(context, profile, stream, BufferPool(self.device))

    def _acquire(self) -> ContextSlot:
        """A free slot, a new one while the engine has an unused profile, else wait for one."""
        with self._ready:
            while True:
                if self._closed:
                    raise BundleError(f"{self.stage}: the TensorRT runner is closed")
                if self._free:
                    return self._free.pop()
                if len(self.slots) < self.profiles:
                    slot = self._new_slot(len(self.slots))
                    self.slots.append(slot)
                    return slot
                self._ready.wait()

    def _release(self, slot: ContextSlot) -> None:
        with self._ready:
            self._free.append(slot)
            self._ready.notify()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [t.name for t in self.inputs if t.name not in feeds]
        if missing:
            raise EngineShapeError(f"{self.stage}: missing input(s) {', '.join(missing)}")
        arrays = {t.name: check_feed(t, feeds[t.name], self.stage) for t in self.inputs}
        self.device.use()
        slot = self._acquire()
        try:
            return self._run(slot, arrays)
        finally:
            self._release(slot)

    def _run(self, slot: ContextSlot, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context = slot.context
        for tensor in self.inputs:
            array = arrays[tensor.name]
            if context.set_input_shape(tensor.name, array.shape) is False:
                raise EngineShapeError(
                    f"{self.stage}: TensorRT refused shape {array.shape} for {tensor.name}"
                )
            pointer = slot.buffers.get(tensor.name, array.nbytes)
            self.device.to_device(pointer, array, slot.stream)
            context.set_tensor_address(tensor.name, pointer)
        results: dict[str, np.ndarray] = {}
        for tensor in self.outputs:
            shape = output_shape(tensor, tuple(context.get_tensor_shape(tensor.name)), self.stage)
            results[tensor.name] = np.empty(shape, dtype=tensor.dtype)
            pointer = slot.buffers.get(tensor.name, nbytes(shape, tensor.dtype))
            context.set_tensor_address(tensor.name, pointer)
        if not context.execute_async_v3(slot.stream):
            raise BundleError(f"{self.stage}: TensorRT execution failed (see TensorRT's log)")
        for tensor in self.outputs:
            pointer, _ = slot.buffers.buffers[tensor.name]
            self.device.to_host(results[tensor.name], pointer, slot.stream)
        self.device.synchronize(slot.stream)
        return results

    def close(self) -> None:
        """Wait for running calls, then destroy every context's stream and free its buffers; later runs fail."""
        with self._ready:
            self._closed = True
            while len(self._free) < len(self.slots):
                self._ready.wait()
            slots, self.slots, self._free = self.slots, [], []
        self.device.use()
        failed: list[Exception] = []
        for slot in slots:
            steps: list[Callable[[], None]] = [
                functools.partial(self.device.synchronize, slot.stream),
                slot.buffers.close,
                functools.partial(self.device.destroy_stream, slot.stream),
            ]
            for step in steps:
                try:
                    step()
                except Exception as err:  # free everything else, then report the first failure
                    failed.append(err)
            slot.context = None  # TensorRT frees a context when its last reference goes
        if failed:
            raise failed[0]

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def tensorrt_runners(
    bundle_root: Path, manifest: Any, precision: str, device: int = 0
) -> dict[str, TensorRTRunner]:
    """One TensorRT runner per stage on GPU `device`, from the engine folder built on a machine like this one.

    Refuses a folder built for another GPU / compute capability / TensorRT version, engines built from graphs the
    bundle no longer holds, and engine files whose checksum differs from their manifest.
    """
    from edgeser.runtime.engines import (
        check_identity,
        check_sources,
        current_identity,
        find_engine_dir,
        import_tensorrt,
        read_engine_manifest,
        verified_engine_bytes,
    )

    if precision not in manifest.precisions:
        raise BundleError(
            f"{bundle_root}: no {precision!r} variant (available: {', '.join(manifest.precisions)})"
        )
    identity = current_identity(device)
    folder = find_engine_dir(bundle_root, identity, precision)
    engines = read_engine_manifest(folder)
    check_identity(folder, engines, identity)
    check_sources(
        folder, engines, {stage: entry.sha256 for stage, entry in manifest.precisions[precision].items()}
    )
    trt = import_tensorrt()
    cuda = CudaDevice(device)
    cuda.use()  # deserialised engines live on the current device
    runtime = trt.Runtime(trt.Logger(trt.ILogger.Severity.WARNING))
    runners: dict[str, TensorRTRunner] = {}
    for stage in manifest.precisions[precision]:
        engine = runtime.deserialize_cuda_engine(verified_engine_bytes(folder, engines, stage))
        if engine is None:
            raise BundleError(
                f"{folder / engines['stages'][stage]['engine']}: TensorRT cannot deserialise it"
            )
        names = tuple(t.name for t in manifest.stages[stage].inputs)
        runners[stage] = TensorRTRunner(engine, engine_tensors(engine, trt), stage, cuda, names)
    return runners
