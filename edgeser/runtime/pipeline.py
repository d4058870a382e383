"""`Pipeline`: a bundle's `StageGraph` plus one runner per stage, with audio reading and typed results."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from edgeser.audio import SAMPLE_RATE, check_waveform, is_file_object, load_audio, to_mono_16k
from edgeser.bundle import PRECISIONS, BundleManifest, Precision, validate_bundle
from edgeser.errors import AudioError, BundleError, EdgeserError, OptionError
from edgeser.runtime.options import (
    MAX_CLIP_SECONDS,
    MAX_RECORDING_SECONDS,
    Backend,
    bounded_int,
    check_backend,
    check_threads,
)
from edgeser.runtime.results import Failure, Prediction, Timeline, Utterance, class_probabilities
from edgeser.runtime.segment import SegmentOptions, speech_regions, timeline
from edgeser.runtime.sessions import OrtRunner
from edgeser.runtime.vad import VadOptions, detect_speech, vad_available
from edgeser.stages import FUSION_HEAD, StageGraph, StageRun, StageRunner

# A path, the bytes of a file, a binary file object (read from its start), or (samples, sample_rate).
AudioInput = str | Path | bytes | BinaryIO | tuple[npt.ArrayLike, float]


K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F")


def isolated(
    items: Mapping[K, T],
    one: Callable[[T], R],
    failed: Callable[[T, Exception], F],
    *,
    together: Callable[[list[T]], Sequence[R]] | None = None,
    errors: tuple[type[Exception], ...] = (EdgeserError,),
) -> tuple[dict[K, R], dict[K, F]]:
    """Per-clip failure isolation: `one(item)` of each item, and in a second dict `failed(item, error)` for each
    item whose run raised one of `errors`, so one bad clip (or request) never costs the others theirs.

    With `together`, all items first run as one batch (it returns their results in item order); only where that
    raises one of `errors` does each run alone through `one`, so each failure is its own.
    """
    if together is not None and items:
        try:
            return dict(zip(items, together(list(items.values())))), {}
        except errors:
            pass  # each alone, below
    done: dict[K, R] = {}
    failures: dict[K, F] = {}
    for key, item in items.items():
        try:
            done[key] = one(item)
        except errors as err:
            failures[key] = failed(item, err)
    return done, failures


def describe(audio: object) -> str:
    """A short name for an input in messages."""
    if isinstance(audio, (str, Path)):
        return str(audio)
    if isinstance(audio, bytes):
        return f"<{len(audio)} bytes>"
    if isinstance(audio, tuple):
        return "<array>"
    if is_file_object(audio):
        name = getattr(audio, "name", None)
        return name if isinstance(name, str) else f"<{type(audio).__name__}>"
    return repr(type(audio))


class Pipeline:
    """A bundle variant ready to predict: its stage graph and one `StageRunner` per stage.

    One Pipeline may be shared between threads: it keeps no per-call state, and its runners are safe for
    concurrent calls (onnxruntime's `InferenceSession.run` and `tokenizers.Tokenizer` are). A Pipeline is never
    changed after it is made: `with_runners` returns a new one.
    """

    def __init__(
        self,
        graph: StageGraph,
        runners: Mapping[str, StageRunner],
        *,
        precision: Precision | Literal["pytorch"] = "fp32",
        backend: Backend | Literal["pytorch"] = "onnxruntime",
        root: Path | None = None,
        manifest: BundleManifest | None = None,
    ) -> None:
        missing = [s for s in graph.stages if s not in runners]
        if missing:
            raise BundleError(f"{graph.source}: no runner for stage(s) {', '.join(missing)}")
        self.graph = graph
        self._runners = dict(runners)
        self.precision = precision  # "pytorch": the float reference (`edgeser.checks.reference`)
        self.backend = backend
        self.root = root
        self.manifest = manifest

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        precision: Precision = "fp32",
        *,
        backend: Backend = "onnxruntime",
        providers: list[str] | None = None,
        threads: int | None = None,
        verify_checksums: bool = True,
        device: int | None = None,
        spin: bool = False,
        force_threads: bool = False,
    ) -> Pipeline:
        """Validate the bundle (schema, files, checksums, labels) and open one runner per stage.

        `backend`: "onnxruntime" (CPU, or the given onnxruntime `providers`), "cuda" or "tensorrt-ep"
        (onnxruntime's execution providers, options set in `edgeser.runtime.providers`), or "tensorrt" (the
        engines `edgeser build-trt` made for this GPU and TensorRT version). `device` is the GPU index (0 unless
        given; GPU backends only). An option the backend would not use (`threads`, `providers` or `spin` with
        "tensorrt", `providers` with "cuda"/"tensorrt-ep", `device` with "onnxruntime", `force_threads` without
        `threads`) is refused with an OptionError naming it, never dropped.
        `spin`: onnxruntime workers spin during a stage's run instead of waiting passively (faster on an idle
        CPU, slower beside other busy processes; see `edgeser.runtime.sessions.make_session`).
        `threads` is at most the logical cores (`force_threads`: up to 4 per core; `edgeser.runtime.options`).
        """
        if precision not in PRECISIONS:
            raise OptionError(
                "precision", f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        gpu = check_backend(
            backend,
            providers=providers,
            threads=threads,
            spin=spin,
            force_threads=force_threads,
            device=device,
        )
        if threads is not None:
            threads = check_threads("threads", threads, force_threads)
        root = Path(bundle)
        # Checksums are verified on the bytes each onnxruntime session loads (make_session), not on a first read:
        # a bundle swapped in between would otherwise give stages of two bundles.
        manifest = validate_bundle(root, precision, verify_checksums and backend == "tensorrt")
        graph = StageGraph.from_manifest(manifest, root)
        files = manifest.precisions[precision]
        runners: dict[str, StageRunner]
        if backend == "tensorrt":
            from edgeser.runtime.tensorrt import tensorrt_runners

            runners = dict(tensorrt_runners(root, manifest, precision, gpu))
        else:
            from edgeser.runtime.profiles import resolve_profiles
            from edgeser.runtime.providers import provider_plan

            profiles, missing, _ = (
                resolve_profiles(root, manifest, list(graph.stages))
                if backend == "tensorrt-ep"
                else ({}, [], "")
            )
            runners = {}
            for stage in graph.stages:
                complete = not any(
                    m.startswith(f"{stage}:") for m in missing
                )  # the EP wants every dynamic input
                plan = provider_plan(
                    backend,
                    root,
                    precision,
                    stage=stage,
                    device=gpu,
                    profiles=profiles.get(stage) if complete else None,
                    graph_sha256=files[stage].sha256,
                )
                chosen, options = (
                    (providers, None)
                    if providers and backend == "onnxruntime"
                    else (plan.providers, plan.options)
                )
                runners[stage] = OrtRunner.load(
                    root / files[stage].path,
                    chosen,
                    threads,
                    options,
                    spin,
                    sha256=files[stage].sha256 if verify_checksums else None,
                )
            head = runners[FUSION_HEAD]
            width = (
                head.output_shape(graph.outputs[FUSION_HEAD][0])[-1] if isinstance(head, OrtRunner) else None
            )
            if isinstance(width, int) and width != len(graph.labels):
                raise BundleError(
                    f"{root}: bundle.json lists {len(graph.labels)} labels but the fusion head "
                    f"({files[FUSION_HEAD].path}) outputs {width} classes"
                )
        return cls(graph, runners, precision=precision, backend=backend, root=root, manifest=manifest)

    def with_runners(self, runners: Mapping[str, StageRunner]) -> Pipeline:
        """A new Pipeline with some stages' runners replaced (this one is unchanged)."""
        unknown = [s for s in runners if s not in self.graph.stages]
        if unknown:
            raise BundleError(f"{self.graph.source}: no stage(s) {', '.join(unknown)} to replace")
        return Pipeline(
            self.graph,
            {**self._runners, **runners},
            precision=self.precision,
            backend=self.backend,
            root=self.root,
            manifest=self.manifest,
        )

    @property
    def runners(self) -> Mapping[str, StageRunner]:
        return MappingProxyType(self._runners)

    @property
    def labels(self) -> list[str]:
        return list(self.graph.labels)

    # ------------------------------------------------------------------ inputs

    def read(
        self, audio: AudioInput, max_seconds: float | None = MAX_CLIP_SECONDS
    ) -> npt.NDArray[np.float32]:
        """Any accepted input to checked mono float32 at 16 kHz. Paths, bytes and file objects longer than
        `max_seconds` are refused from their header, before anything is decoded."""
        if isinstance(audio, (str, Path, bytes)) or is_file_object(audio):
            return load_audio(audio, max_duration=max_seconds)
        if isinstance(audio, tuple) and len(audio) == 2:
            samples, rate = audio
            if (
                isinstance(rate, bool)
                or not isinstance(rate, (int, float, np.number))
                or not math.isfinite(rate)
                or rate <= 0
                or int(rate) != rate
            ):
                raise AudioError(
                    "<array>", f"invalid sample rate {rate!r} (expected a positive whole number of Hz)"
                )
            wave = to_mono_16k(np.asarray(samples), int(rate), source="<array>")
            check_waveform(wave, source="<array>", max_duration=max_seconds)
            return wave
        if isinstance(audio, np.ndarray):
            raise AudioError("<array>", "pass arrays as (samples, sample_rate) so the rate is explicit")
        raise AudioError(
            describe(audio),
            "unsupported input: give a path, file bytes, a binary file object or (samples, sample_rate)",
        )

    # ------------------------------------------------------------------ running

    def run_stages(
        self, waves: Sequence[npt.NDArray[np.float32]], *, transcripts: Sequence[str] | None = None
    ) -> StageRun:
        """Every stage on a batch of checked 16 kHz waveforms; all intermediate tensors and timings."""
        return self.graph.run(self._runners, waves, transcripts=transcripts)

    def __call__(self, audio: AudioInput) -> Prediction:
        """Predict one clip (a path, the bytes of a file, or (samples, sample_rate)).

        The result carries the clip's `speech_ratio` (Silero VAD, where installed): near 0 for noise, hum or
        silence, where the label means nothing."""
        started = time.perf_counter()
        wave = self.read(audio)
        read_ms = (time.perf_counter() - started) * 1e3
        ratio, vad_ms = self._speech_ratio(wave)
        return self._predictions([wave], extra={"read": read_ms, **vad_ms}, ratios=[ratio])[0]

    @staticmethod
    def _speech_ratio(wave: npt.NDArray[np.float32]) -> tuple[float | None, dict[str, float]]:
        """The clip's VAD speech ratio and its time, or (None, {}) where silero-vad is not installed."""
        if not vad_available():
            return None, {}
        started = time.perf_counter()
        ratio = detect_speech(wave)[1]
        return round(ratio, 4), {"vad": (time.perf_counter() - started) * 1e3}

    def predict_waveform(self, wave: npt.NDArray[np.float32]) -> Prediction:
        """Predict one already-checked 16 kHz mono waveform."""
        return self._predictions([wave])[0]

    def batch(self, inputs: Sequence[AudioInput], batch_size: int = 8) -> list[Prediction | Failure]:
        """Predict many clips, batching clips of similar length; one result per input, in input order.

        An input that cannot be read gets a `Failure` (its source and the one-line reason); the rest still run.
        """
        batch_size = bounded_int("batch_size", batch_size)
        waves, failures = isolated(
            dict(enumerate(inputs)), self.read, lambda audio, err: Failure(describe(audio), str(err))
        )
        results: dict[int, Prediction | Failure] = dict(failures)
        ratios = {i: self._speech_ratio(wave)[0] for i, wave in waves.items()}
        results.update(self._predict_bucketed(waves, batch_size, ratios))
        return [results[i] for i in range(len(inputs))]

    def long(self, audio: AudioInput, options: VadOptions | SegmentOptions | None = None) -> Timeline:
        """Find the utterances of a long recording with Silero VAD (`VadOptions`), predict each, return a
        `Timeline` with an aggregate. `SegmentOptions` selects the energy splitter instead (it takes any energy
        for speech: noise, hum and DC get segments).

        A recording without speech (silence, noise, hum, clicks) gives a Timeline with no segments and no label.
        """
        if options is not None and not isinstance(options, (VadOptions, SegmentOptions)):
            raise OptionError(
                "options", f"expected VadOptions or SegmentOptions, got {type(options).__name__}"
            )
        try:
            wave = self.read(audio, max_seconds=MAX_RECORDING_SECONDS)
        except AudioError as err:
            if not err.problem.startswith("too long"):
                raise
            held = err.problem.split(";")[0]  # "too long: 18000.0 s (maximum 14400 s)"
            raise AudioError(
                err.source, f"{held}: `long` holds the whole recording in memory; cut it into parts first"
            ) from None
        if isinstance(options, SegmentOptions):
            regions = speech_regions(wave, options)
        else:
            regions = [(r.start, r.end) for r in detect_speech(wave, options)[0]]
        found = self._predict_bucketed({i: wave[a:b] for i, (a, b) in enumerate(regions)})
        return timeline(regions, [found[i] for i in range(len(regions))], self.labels, wave.size)

    def stream(
        self,
        chunks: Iterable[npt.ArrayLike | tuple[npt.ArrayLike, int]],
        sample_rate: int = SAMPLE_RATE,
        *,
        channels: int = 1,
        options: VadOptions | None = None,
    ) -> Iterator[Utterance]:
        """Utterance events from an iterable of audio chunks at `sample_rate`, as they are found: a generator
        over a new `Listener` (see `edgeser.runtime.listener` for its memory bound and bad-stream behaviour).

        A consumer that stops iterating ends the stream: events not yet taken go with it. To keep them, iterate
        `Listener(pipe, ...).events(chunks)` and call the Listener's `flush()` afterwards."""
        from edgeser.runtime.listener import Listener

        return Listener(self, sample_rate, channels=channels, options=options).events(chunks)

    def _predict_bucketed(
        self,
        waves: Mapping[int, npt.NDArray[np.float32]],
        batch_size: int = 8,
        ratios: Mapping[int, float | None] | None = None,
    ) -> dict[int, Prediction]:
        """Predictions keyed like `waves`, run in batches of clips of similar length."""
        order = sorted(waves, key=lambda i: waves[i].size)
        results: dict[int, Prediction] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            found = self._predictions(
                [waves[i] for i in chunk], ratios=[ratios.get(i) for i in chunk] if ratios else None
            )
            results.update(zip(chunk, found))
        return results

    def _predictions(
        self,
        waves: list[npt.NDArray[np.float32]],
        extra: dict[str, float] | None = None,
        ratios: Sequence[float | None] | None = None,
    ) -> list[Prediction]:
        run = self.run_stages(waves)
        probabilities, best = class_probabilities(run.logits)
        timings = {**(extra or {}), **run.timings_ms}
        timings["total"] = sum(timings.values())
        labels = self.graph.labels
        predictions = []
        for row, wave in enumerate(waves):
            top = int(best[row])
            predictions.append(
                Prediction(
                    label=labels[top],
                    confidence=float(probabilities[row, top]),
                    probabilities={label: float(p) for label, p in zip(labels, probabilities[row])},
                    transcript=run.transcripts[row] if run.transcripts is not None else None,
                    duration_s=wave.size / SAMPLE_RATE,
                    timings_ms={k: round(v, 3) for k, v in timings.items()},
                    logits=[float(x) for x in run.logits[row]],
                    speech_ratio=ratios[row] if ratios is not None else None,
                )
            )
        return predictions
