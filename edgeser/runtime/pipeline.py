"""`Pipeline`: waveform -> audio encoder -> CTC greedy decode -> tokenizer -> text encoder -> fusion."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from edgeser.audio import SAMPLE_RATE, check_waveform, load_audio, to_mono_16k
from edgeser.bundle import PRECISIONS, BundleManifest, validate_bundle
from edgeser.errors import AudioError, BundleError
from edgeser.runtime.sessions import make_session
from edgeser.text import CtcVocab

# A path, the bytes of a file, or (samples, sample_rate).
AudioInput = Union[str, Path, bytes, tuple[npt.ArrayLike, int]]
MAX_CLIP_SECONDS = 30.0


@dataclass(frozen=True)
class Prediction:
    """One clip's result."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    transcript: str | None
    duration_s: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    logits: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class StageRun:
    """Raw outputs of one pass (used by parity and quantisation checks)."""

    features: np.ndarray
    frame_lengths: np.ndarray
    log_probs: np.ndarray | None
    transcripts: list[str] | None
    input_ids: np.ndarray | None
    attention_mask: np.ndarray | None
    token_features: np.ndarray | None
    logits: np.ndarray
    timings_ms: dict[str, float]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def pad_batch(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad mono waveforms to `[B, S]` float32 with int64 lengths."""
    lengths = np.array([w.size for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
    for row, wave in enumerate(waves):
        batch[row, : wave.size] = wave
    return batch, lengths


class Pipeline:
    """A loaded bundle variant, ready to predict; see the package docstring for thread safety."""

    def __init__(self, root: Path, manifest: BundleManifest, precision: str, providers: list[str] | None,
                 threads: int | None) -> None:
        self.root = root
        self.manifest = manifest
        self.precision = precision
        self.labels = list(manifest.labels)
        self.vocab = CtcVocab.from_dict(manifest.ctc) if manifest.ctc else None
        self.tokenizer = Tokenizer.from_file(str(root / manifest.tokenizer)) if manifest.tokenizer else None
        files = manifest.precisions[precision]
        self.sessions = {stage: make_session(root / entry.path, providers, threads) for stage, entry in files.items()}
        self._input_names = {stage: {i.name for i in s.get_inputs()} for stage, s in self.sessions.items()}

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        precision: str = "fp32",
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        verify_checksums: bool = True,
    ) -> Pipeline:
        """Validate the bundle (schema, files, checksums) and open one session per stage."""
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        root = Path(bundle)
        manifest = validate_bundle(root, precision, verify_checksums)
        return cls(root, manifest, precision, providers, threads)

    # ------------------------------------------------------------------ inputs

    def read(self, audio: AudioInput, max_seconds: float | None = MAX_CLIP_SECONDS) -> np.ndarray:
        """Any accepted input to checked mono float32 at 16 kHz."""
        if isinstance(audio, (str, Path, bytes)):
            return load_audio(audio, max_duration=max_seconds)
        if isinstance(audio, tuple) and len(audio) == 2:
            samples, rate = audio
            wave = to_mono_16k(np.asarray(samples), int(rate), source="<array>")
            check_waveform(wave, source="<array>", max_duration=max_seconds)
            return wave
        if isinstance(audio, np.ndarray):
            raise AudioError("<array>", "pass arrays as (samples, sample_rate) so the rate is explicit")
        raise AudioError(repr(type(audio)), "unsupported input: give a path, file bytes or (samples, sample_rate)")

    # ------------------------------------------------------------------ core

    def run_stages(self, waves: Sequence[np.ndarray]) -> StageRun:
        """Chain every stage on a batch of 16 kHz waveforms (padded together when the bundle allows)."""
        if not self.manifest.supports_padded_batch and len(waves) > 1:
            runs = [self.run_stages([w]) for w in waves]
            return _stack_runs(runs)
        timings: dict[str, float] = {}
        batch, lengths = pad_batch(waves)
        frame_lengths = self.manifest.frame_lengths(lengths)
        features = self._run("audio_encoder", {"waveform": batch, "lengths": lengths}, timings)[0]
        log_probs = transcripts = ids = mask = token_features = None
        if "ctc_head" in self.sessions and self.vocab is not None:
            log_probs = self._run("ctc_head", {"features": features}, timings)[0]
            started = time.perf_counter()
            transcripts = [self.vocab.decode_log_probs(log_probs[i], int(frame_lengths[i])) for i in range(len(waves))]
            timings["ctc_decode"] = (time.perf_counter() - started) * 1e3
        if "text_encoder" in self.sessions:
            started = time.perf_counter()
            ids, mask = self.tokenize(transcripts or [""] * len(waves))
            timings["tokenize"] = (time.perf_counter() - started) * 1e3
            token_features = self._run("text_encoder", {"input_ids": ids, "attention_mask": mask}, timings)[0]
            feeds = {"features": features, "frame_lengths": frame_lengths, "token_features": token_features,
                     "attention_mask": mask}
        else:
            feeds = {"features": features, "frame_lengths": frame_lengths}
        logits = self._run("fusion_head", feeds, timings)[0]
        return StageRun(features, frame_lengths, log_probs, transcripts, ids, mask, token_features, logits, timings)

    def _run(self, stage: str, feeds: dict[str, np.ndarray], timings: dict[str, float]) -> list[np.ndarray]:
        wanted = self._input_names[stage]
        started = time.perf_counter()
        outputs = self.sessions[stage].run(None, {k: v for k, v in feeds.items() if k in wanted})
        timings[stage] = (time.perf_counter() - started) * 1e3
        return outputs

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask `[B, L]` int64 (L >= 1), as the text encoder was exported."""
        if self.tokenizer is None:
            raise BundleError(f"{self.root}: bundle has a text encoder but no tokenizer")
        encodings = self.tokenizer.encode_batch(list(texts))
        length = max(1, max(len(e.ids) for e in encodings))
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask

    # ------------------------------------------------------------------ public API

    def __call__(self, audio: AudioInput) -> Prediction:
        """Predict one clip (path, file bytes, or (samples, sample_rate))."""
        started = time.perf_counter()
        wave = self.read(audio)
        read_ms = (time.perf_counter() - started) * 1e3
        return self._predictions([wave], extra={"read": read_ms})[0]

    def predict_waveform(self, wave: np.ndarray) -> Prediction:
        """Predict one already-checked 16 kHz mono waveform."""
        return self._predictions([wave])[0]

    def batch(self, inputs: Sequence[AudioInput], batch_size: int = 8) -> list[Prediction]:
        """Predict many clips, batching clips of similar length together; results keep input order."""
        waves = [self.read(a) for a in inputs]
        order = sorted(range(len(waves)), key=lambda i: waves[i].size)
        results: dict[int, Prediction] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for index, prediction in zip(chunk, self._predictions([waves[i] for i in chunk])):
                results[index] = prediction
        return [results[i] for i in range(len(waves))]

    def long(self, audio: AudioInput, **segment_options: float):  # type: ignore[no-untyped-def]
        """Split a long recording at pauses, predict each segment, return a `Timeline` with an aggregate."""
        from edgeser.runtime.segment import predict_timeline

        wave = self.read(audio, max_seconds=None)
        return predict_timeline(self, wave, **segment_options)

    def _predictions(self, waves: list[np.ndarray], extra: dict[str, float] | None = None) -> list[Prediction]:
        run = self.run_stages(waves)
        probabilities = softmax(run.logits.astype(np.float64))
        timings = {**(extra or {}), **run.timings_ms}
        timings["total"] = sum(timings.values())
        predictions = []
        for row, wave in enumerate(waves):
            best = int(np.argmax(probabilities[row]))
            predictions.append(
                Prediction(
                    label=self.labels[best],
                    confidence=float(probabilities[row, best]),
                    probabilities={label: float(p) for label, p in zip(self.labels, probabilities[row])},
                    transcript=run.transcripts[row] if run.transcripts is not None else None,
                    duration_s=wave.size / SAMPLE_RATE,
                    timings_ms={k: round(v, 3) for k, v in timings.items()},
                    logits=[float(x) for x in run.logits[row]],
                )
            )
        return predictions


def _stack_runs(runs: list[StageRun]) -> StageRun:
    """Join single-clip runs (bundles whose encoder must not see padding) into one batch-shaped run."""

    def pad_stack(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        if arrays[0] is None:
            return None
        longest = max(a.shape[1] for a in arrays)  # type: ignore[union-attr]
        out = np.zeros((len(arrays), longest, *arrays[0].shape[2:]), dtype=arrays[0].dtype)  # type: ignore[union-attr]
        for row, array in enumerate(arrays):
            out[row, : array.shape[1]] = array[0]  # type: ignore[union-attr]
        return out

    timings: dict[str, float] = {}
    for run in runs:
        for key, value in run.timings_ms.items():
            timings[key] = timings.get(key, 0.0) + value
    return StageRun(
        features=pad_stack([r.features for r in runs]),  # type: ignore[arg-type]
        frame_lengths=np.concatenate([r.frame_lengths for r in runs]),
        log_probs=pad_stack([r.log_probs for r in runs]),
        transcripts=[t for r in runs for t in (r.transcripts or [])] or None,
        input_ids=pad_stack([r.input_ids for r in runs]),
        attention_mask=pad_stack([r.attention_mask for r in runs]),
        token_features=pad_stack([r.token_features for r in runs]),
        logits=np.concatenate([r.logits for r in runs]),
        timings_ms=timings,
    )
