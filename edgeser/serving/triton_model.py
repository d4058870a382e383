"""The Python-backend models of a written repository; each model's `1/model.py` imports one of these.

`PipelineModel` (the `edgeser` model) takes waveforms and returns label, probabilities, logits and transcript.
Its stages run either as BLS calls to the repository's stage models (`runners: bls`, what `export-triton`
writes) or in its own process through `edgeser.runtime.Pipeline` (`runners: local`, what `edgeser serve`
runs). Either way the steps between stages are `edgeser.stages.StageGraph`'s (frame lengths from the layout,
CTC greedy decoding, tokenisation), so a served clip gets what `Pipeline` gives in-process.

`StageModel` runs one stage graph with onnxruntime inside the Python backend (`export-triton --backend python`,
for a Triton without the ONNX Runtime backend).

`triton_python_backend_utils` exists only inside Triton's Python stub; it is imported where used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from edgeser.audio import check_waveform
from edgeser.bundle import Precision
from edgeser.errors import AudioError, ServingError
from edgeser.serving.repository import (
    LABEL,
    LENGTH,
    LOGITS,
    MAX_CLIP_SECONDS,
    PROBABILITIES,
    TRANSCRIPT,
    WAVEFORM,
)
from edgeser.stages import StageRun

Waves = list[npt.NDArray[np.float32]]


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # present inside Triton's Python backend only

    return pb_utils


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The `parameters` of a model's config.pbtxt, as Triton hands them to `initialize`."""
    config = json.loads(args["model_config"])
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


class BlsRunner:
    """A `StageRunner` that runs one stage model of the same server through a BLS request."""

    def __init__(
        self,
        model: str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        per_item: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.per_item = set(per_item)  # `[batch]` tensors, sent and received as [B, 1] (config dims [1])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = _pb()
        tensors = []
        for name in self.input_names:
            value = np.ascontiguousarray(feeds[name])
            tensors.append(pb.Tensor(name, value.reshape(-1, 1) if name in self.per_item else value))
        request = pb.InferenceRequest(
            model_name=self.model, inputs=tensors, requested_output_names=list(self.output_names)
        )
        response = request.exec()
        if response.has_error():
            raise ServingError(f"stage model {self.model}: {response.error().message()}")
        outputs = {}
        for name in self.output_names:
            value = pb.get_output_tensor_by_name(response, name).as_numpy()
            outputs[name] = value.reshape(-1) if name in self.per_item else value
        return outputs


class PipelineModel:
    """The `edgeser` model: clips in, one label, probabilities, logits and transcript per clip out."""

    def initialize(self, args: Mapping[str, str]) -> None:
        params = model_parameters(args)
        self.labels = tuple(json.loads(params["labels"]))
        self.max_seconds = float(params.get("max_seconds") or MAX_CLIP_SECONDS)
        self.run_stages: Callable[[Waves], StageRun] = (
            local_stages(params)
            if params.get("runners") == "local"
            else bls_stages(Path(args["model_repository"]) / args["model_version"])
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """One response per request; a bad request gets an error response and the others still run."""
        from edgeser.runtime.pipeline import isolated

        pb = _pb()
        clips, unread = isolated(dict(enumerate(requests)), self.read_request, lambda _request, err: str(err))
        outcomes: dict[int, Any] = {**unread, **(self.predict(clips) if clips else {})}
        responses = [outcomes[index] for index in range(len(requests))]
        return [pb.InferenceResponse(error=pb.TritonError(r)) if isinstance(r, str) else r for r in responses]

    def read_request(self, request: Any) -> Waves:
        """The checked 16 kHz waveforms of one request (`waveform` [N, S] float32, optional `length` [N, 1])."""
        pb = _pb()
        source = f"request {request.request_id() or '<no id>'}"
        batch = pb.get_input_tensor_by_name(request, WAVEFORM).as_numpy()
        if batch.ndim != 2:
            raise AudioError(source, f"{WAVEFORM} must be [clips, samples], got shape {list(batch.shape)}")
        length_tensor = pb.get_input_tensor_by_name(request, LENGTH)
        lengths = (
            np.full(batch.shape[0], batch.shape[1], dtype=np.int64)
            if length_tensor is None
            else length_tensor.as_numpy().reshape(-1)
        )
        if lengths.size != batch.shape[0]:
            raise AudioError(source, f"{LENGTH} has {lengths.size} values for {batch.shape[0]} waveform(s)")
        waves = []
        for row, length in enumerate(lengths):
            if not 0 <= int(length) <= batch.shape[1]:
                raise AudioError(
                    source, f"{LENGTH}[{row}] = {int(length)} is outside 0..{batch.shape[1]} samples"
                )
            wave = np.ascontiguousarray(batch[row, : int(length)], dtype=np.float32)
            check_waveform(
                wave,
                source=source if batch.shape[0] == 1 else f"{source} clip {row}",
                max_duration=self.max_seconds,
            )
            waves.append(wave)
        return waves

    def predict(self, clips: Mapping[int, Waves]) -> dict[int, Any]:
        """Run every request's clips in one batch; if that fails, each request alone (its error is its own).
        Responses, or error texts, keyed like `clips`."""
        from edgeser.runtime.pipeline import isolated

        def together(requests: list[Waves]) -> list[Any]:
            run = self.run_stages([wave for waves in requests for wave in waves])
            responses, row = [], 0
            for waves in requests:
                responses.append(self.response(run, slice(row, row + len(waves))))
                row += len(waves)
            return responses

        # a request alone is not run twice: its batch's error is its own
        done, failed = isolated(
            clips, self._alone, lambda _waves, err: str(err), together=together if len(clips) > 1 else None
        )
        return {**done, **failed}

    def _alone(self, waves: Waves) -> Any:
        """The response to one request's clips, run on their own."""
        return self.response(self.run_stages(waves), slice(0, len(waves)))

    def response(self, run: StageRun, rows: slice) -> Any:
        from edgeser.runtime.results import class_probabilities

        pb = _pb()
        logits = np.asarray(run.logits[rows], dtype=np.float32)
        probabilities, best = class_probabilities(logits, np.float32)
        labels = np.array([[self.labels[int(i)].encode()] for i in best], dtype=np.object_)
        texts = (run.transcripts or [""] * len(run.logits))[rows]
        transcripts = np.array([[(t or "").encode()] for t in texts], dtype=np.object_)
        return pb.InferenceResponse(
            [
                pb.Tensor(LABEL, labels),
                pb.Tensor(PROBABILITIES, probabilities),
                pb.Tensor(LOGITS, logits),
                pb.Tensor(TRANSCRIPT, transcripts),
            ]
        )


def local_stages(params: Mapping[str, str]) -> Callable[[Waves], StageRun]:
    """The bundle's stages in this process (edgeser's runtime on onnxruntime)."""
    from edgeser.runtime import Pipeline

    threads = int(params.get("threads") or 0) or None
    precision = cast(Precision, params.get("precision") or "fp32")  # Pipeline.load checks it
    pipe = Pipeline.load(params["bundle"], precision, threads=threads)
    return pipe.run_stages


def bls_stages(root: Path) -> Callable[[Waves], StageRun]:
    """The bundle's stages as BLS calls to this repository's stage models; `root` holds bundle.json."""
    from edgeser.bundle import read_manifest
    from edgeser.stages import StageGraph

    manifest = read_manifest(root)
    graph = StageGraph.from_manifest(manifest, root)
    runners = {}
    for stage in graph.stages:
        spec = manifest.stages[stage]
        per_item = [t.name for t in (*spec.inputs, *spec.outputs) if len(t.shape) == 1]
        runners[stage] = BlsRunner(stage, graph.inputs[stage], graph.outputs[stage], per_item)

    def run(waves: Waves) -> StageRun:
        return graph.run(runners, waves)

    return run


class StageModel:
    """One stage graph run by onnxruntime inside the Python backend; same-shaped requests run as one batch."""

    def initialize(self, args: Mapping[str, str]) -> None:
        from edgeser.runtime.sessions import make_session

        config = json.loads(args["model_config"])
        self.session = make_session(Path(args["model_repository"]) / args["model_version"] / "model.onnx")
        self.inputs = [(t["name"], "reshape" in t) for t in config["input"]]
        self.outputs = [(t["name"], "reshape" in t) for t in config["output"]]

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        pb = _pb()
        feeds = []
        for request in requests:
            arrays = {}
            for name, per_item in self.inputs:
                value = pb.get_input_tensor_by_name(request, name).as_numpy()
                arrays[name] = value.reshape(-1) if per_item else value
            feeds.append(arrays)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, arrays in enumerate(feeds):  # only requests whose item shapes agree can be stacked
            groups.setdefault(tuple(arrays[n].shape[1:] for n, _ in self.inputs), []).append(index)
        responses: list[Any] = [None] * len(requests)
        for members in groups.values():
            stacked = {n: np.concatenate([feeds[i][n] for i in members]) for n, _ in self.inputs}
            try:
                outputs = self.session.run([n for n, _ in self.outputs], stacked)
            except Exception as err:  # onnxruntime raises its own types; the message goes back
                for i in members:
                    responses[i] = pb.InferenceResponse(
                        error=pb.TritonError(" ".join(str(err).split())[:300])
                    )
                continue
            row = 0
            for i in members:
                count = feeds[i][self.inputs[0][0]].shape[0]
                tensors = [
                    pb.Tensor(
                        n,
                        np.ascontiguousarray(
                            v[row : row + count].reshape(count, -1) if per_item else v[row : row + count]
                        ),
                    )
                    for (n, per_item), v in zip(self.outputs, outputs)
                ]
                responses[i] = pb.InferenceResponse(tensors)
                row += count
        return responses
