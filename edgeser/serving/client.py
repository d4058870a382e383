"""Clients of a Triton server that serves a bundle: the `edgeser` model, or one stage model as a `StageRunner`.

    from edgeser.serving.client import TritonClient, TritonRunner
    client = TritonClient("localhost:8000")                 # or ("localhost:8001", protocol="grpc")
    result = client.predict(wave)                           # wave: 16 kHz mono float32
    runners = {s: TritonRunner("localhost:8000", s) for s in graph.stages}
    graph.run(runners, waves)                               # remote stages, local steps between them

Needs `tritonclient[http,grpc]` (the `serve-client` extra), imported on first use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from edgeser.errors import MissingDependencyError, ServingError
from edgeser.serving.repository import (
    LABEL,
    LENGTH,
    LOGITS,
    PIPELINE_MODEL,
    PROBABILITIES,
    TRANSCRIPT,
    WAVEFORM,
)
from edgeser.stages import pad_batch

if TYPE_CHECKING:
    from tritonclient.utils import InferenceServerException

TritonProtocol = Literal["http", "grpc"]
PROTOCOLS: tuple[TritonProtocol, ...] = get_args(TritonProtocol)
NUMPY_TO_TRITON = {
    "float32": "FP32",
    "float16": "FP16",
    "int64": "INT64",
    "int32": "INT32",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}


def triton_module(protocol: TritonProtocol) -> Any:
    """tritonclient.http or tritonclient.grpc, or a one-line error naming the extra."""
    if protocol not in PROTOCOLS:
        raise ServingError(f"unknown protocol {protocol!r}; choose http or grpc")
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as err:
        raise MissingDependencyError("tritonclient", "serve-client", "talking to a Triton server") from err
    return module


def _exception_type() -> type[InferenceServerException]:
    from tritonclient.utils import InferenceServerException

    exception: type[InferenceServerException] = InferenceServerException  # tritonclient ships no types
    return exception


@dataclass(frozen=True)
class RemotePrediction:
    """One clip's result from the server."""

    label: str
    probabilities: dict[str, float]
    logits: list[float]
    transcript: str


class _Connection:
    """A tritonclient client for one model, with its config (as JSON) and one-line errors."""

    def __init__(self, url: str, model: str, protocol: TritonProtocol, timeout_s: float) -> None:
        self.module = triton_module(protocol)
        self.url, self.model, self.protocol = url, model, protocol
        try:
            if protocol == "http":
                self.client = self.module.InferenceServerClient(
                    url, network_timeout=timeout_s, connection_timeout=timeout_s
                )
                self.config = self.client.get_model_config(model)
            else:
                self.client = self.module.InferenceServerClient(url)
                self.config = self.client.get_model_config(model, as_json=True)["config"]
        except _exception_type() as err:
            raise ServingError(f"{url}: cannot use model {model!r} ({err.message()})") from err
        self.timeout_s = timeout_s

    def infer(self, arrays: Mapping[str, np.ndarray], outputs: list[str]) -> Any:
        inputs = []
        for name, value in arrays.items():
            if value.dtype.name not in NUMPY_TO_TRITON:
                raise ServingError(f"{name}: dtype {value.dtype} cannot be sent to Triton")
            tensor = self.module.InferInput(name, list(value.shape), NUMPY_TO_TRITON[value.dtype.name])
            tensor.set_data_from_numpy(np.ascontiguousarray(value))
            inputs.append(tensor)
        wanted = [self.module.InferRequestedOutput(name) for name in outputs]
        try:
            if self.protocol == "http":
                return self.client.infer(self.model, inputs, outputs=wanted)
            return self.client.infer(self.model, inputs, outputs=wanted, client_timeout=self.timeout_s)
        except _exception_type() as err:
            raise ServingError(
                f"{self.url} model {self.model}: {' '.join(str(err.message()).split())}"
            ) from err

    def close(self) -> None:
        self.client.close()


def _parameter(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    return None if value is None else value.get("string_value", value.get("stringValue"))


class TritonClient:
    """Predict 16 kHz mono clips with a served `edgeser` model; may be shared between threads.

    tritonclient's clients must not be shared between threads (the HTTP one runs on gevent), so each thread
    gets its own connection on first use.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: TritonProtocol = "http",
        model: str = PIPELINE_MODEL,
        timeout_s: float = 120.0,
    ) -> None:
        self._args = (url, model, protocol, timeout_s)
        self._local = threading.local()
        labels = _parameter(self.connection.config, "labels")
        if labels is None:
            raise ServingError(f"{url}: model {model!r} is not an edgeser model (no labels in its config)")
        self.labels: list[str] = json.loads(labels)

    def predict(self, wave: npt.NDArray[np.float32]) -> RemotePrediction:
        """One clip (16 kHz mono float32) to its label, probabilities, logits and transcript."""
        return self.predict_batch([wave])[0]

    def predict_batch(self, waves: list[npt.NDArray[np.float32]]) -> list[RemotePrediction]:
        """Several clips in one request (zero-padded together, with their lengths)."""
        if not waves:
            return []
        batch, lengths = pad_batch([np.asarray(w, dtype=np.float32).reshape(-1) for w in waves])
        result = self.connection.infer(
            {WAVEFORM: batch, LENGTH: lengths.reshape(-1, 1)}, [LABEL, PROBABILITIES, LOGITS, TRANSCRIPT]
        )
        labels, texts = result.as_numpy(LABEL), result.as_numpy(TRANSCRIPT)
        probabilities, logits = result.as_numpy(PROBABILITIES), result.as_numpy(LOGITS)
        return [
            RemotePrediction(
                label=labels[row, 0].decode(),
                probabilities={k: float(p) for k, p in zip(self.labels, probabilities[row])},
                logits=[float(x) for x in logits[row]],
                transcript=texts[row, 0].decode(),
            )
            for row in range(len(waves))
        ]

    @property
    def connection(self) -> _Connection:
        """This thread's connection."""
        if getattr(self._local, "connection", None) is None:
            self._local.connection = _Connection(*self._args)
        return self._local.connection  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close this thread's connection."""
        if getattr(self._local, "connection", None) is not None:
            self._local.connection.close()
            self._local.connection = None


class TritonRunner:
    """A `StageRunner` that runs one stage model on a Triton server: `StageGraph.run` can chain remote stages."""

    def __init__(
        self, url: str, stage: str, *, protocol: TritonProtocol = "http", timeout_s: float = 120.0
    ) -> None:
        self.connection = _Connection(url, stage, protocol, timeout_s)
        config = self.connection.config
        self.input_names = tuple(t["name"] for t in config["input"])
        self.output_names = tuple(t["name"] for t in config["output"])
        self.per_item = {t["name"] for t in (*config["input"], *config["output"]) if "reshape" in t}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {
            name: feeds[name].reshape(-1, 1) if name in self.per_item else feeds[name]
            for name in self.input_names
        }
        result = self.connection.infer(arrays, list(self.output_names))
        outputs = {}
        for name in self.output_names:
            value = result.as_numpy(name)
            outputs[name] = value.reshape(-1) if name in self.per_item else value
        return outputs
