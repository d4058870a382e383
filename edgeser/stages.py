"""The stage contract, written once: which stages a bundle has, what feeds each, and the steps between them.

    waveform, lengths -> audio_encoder -> features (+ frame lengths from the bundle's frame layout)
    features          -> ctc_head      -> log_probs -> CTC greedy decode -> transcripts
    transcripts       -> tokenize      -> input_ids, attention_mask -> text_encoder -> token_features
    features, frame_lengths, token_features, attention_mask -> fusion_head -> logits

Tensors keep one name across every stage graph; a stage is fed the tensors its inputs name. What runs a stage
is a `StageRunner` (onnxruntime, PyTorch, TensorRT, a server): this module never imports any of them, nor torch.
`StageGraph.run` chains the runners it is given, `StageGraph.run_stage` runs one stage on given inputs, so a
check can run runner A and runner B on the same inputs and compare.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from edgeser.errors import BundleError
from edgeser.text import CtcVocab

AUDIO_ENCODER, CTC_HEAD, TEXT_ENCODER, FUSION_HEAD = (
    "audio_encoder",
    "ctc_head",
    "text_encoder",
    "fusion_head",
)
STAGE_ORDER = (AUDIO_ENCODER, CTC_HEAD, TEXT_ENCODER, FUSION_HEAD)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _StageIO(Protocol):
    @property
    def inputs(self) -> Sequence[_Named]: ...

    @property
    def outputs(self) -> Sequence[_Named]: ...


class ManifestView(Protocol):
    """What `StageGraph.from_manifest` reads of a bundle manifest (`edgeser.bundle.BundleManifest`); a
    protocol, so that this module needs nothing of the bundle module, which builds on it."""

    @property
    def stages(self) -> Mapping[str, _StageIO]: ...

    @property
    def frame_layout(self) -> Sequence[Sequence[int]]: ...

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def ctc(self) -> dict[str, Any] | None: ...

    @property
    def tokenizer(self) -> str | None: ...

    @property
    def supports_padded_batch(self) -> bool: ...


# The steps between stages, timed like the stages.
CTC_DECODE, TOKENIZE = "ctc_decode", "tokenize"
STEP_ORDER = (AUDIO_ENCODER, CTC_HEAD, CTC_DECODE, TOKENIZE, TEXT_ENCODER, FUSION_HEAD)


def stage_io(stage: str, uses_text: bool = True) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a stage under the contract (DESIGN section 3)."""
    table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        AUDIO_ENCODER: (("waveform", "lengths"), ("features", "frame_lengths")),
        CTC_HEAD: (("features",), ("log_probs",)),
        TEXT_ENCODER: (("input_ids", "attention_mask"), ("token_features",)),
        FUSION_HEAD: (
            (
                ("features", "frame_lengths", "token_features", "attention_mask")
                if uses_text
                else ("features", "frame_lengths")
            ),
            ("logits",),
        ),
    }
    if stage not in table:
        raise BundleError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_ORDER)}")
    return table[stage]


@runtime_checkable
class StageRunner(Protocol):
    """Runs one stage graph: named numpy arrays in, named numpy arrays out (every output of the stage)."""

    input_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Tokenizer(Protocol):
    """The part of `tokenizers.Tokenizer` the contract uses."""

    def encode_batch(self, texts: list[str]) -> list[Any]: ...


def pad_batch(
    arrays: Sequence[npt.NDArray[Any]], dtype: Any = np.float32
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    """Zero-pad arrays along their first axis into `[B, max_len, ...]`, with the lengths `[B]` int64."""
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    longest = int(lengths.max()) if len(arrays) else 0
    batch = np.zeros((len(arrays), longest, *arrays[0].shape[1:]) if len(arrays) else (0, 0), dtype=dtype)
    for row, array in enumerate(arrays):
        batch[row, : array.shape[0]] = array
    return batch, lengths


def apply_frame_layout(
    sample_lengths: npt.ArrayLike, layout: Iterable[Sequence[int]]
) -> npt.NDArray[np.int64]:
    """Frame lengths through time-reducing steps `[kernel, stride, total_padding, min_length]`:
    `max((L + total_padding - kernel) // stride + 1, min_length)`, never below 0."""
    lengths = np.asarray(sample_lengths, dtype=np.int64)
    for kernel, stride, total_padding, min_length in layout:
        lengths = np.maximum((lengths + total_padding - kernel) // stride + 1, max(min_length, 0))
    return lengths


def tokenize(
    tokenizer: Tokenizer, texts: Sequence[str]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Token ids and attention mask `[B, L]` int64, zero-padded to the longest (L >= 1; empty text: no tokens)."""
    encodings = tokenizer.encode_batch([t or "" for t in texts])
    length = max(1, max((len(e.ids) for e in encodings), default=1))
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    return ids, mask


@dataclass(frozen=True)
class StageRun:
    """Every named tensor of one pass through the stages (batch-shaped), the transcripts, and timings (ms)."""

    values: dict[str, np.ndarray]
    transcripts: list[str] | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    raw: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # stage -> its outputs as returned

    def get(self, name: str) -> np.ndarray | None:
        return self.values.get(name)

    @property
    def features(self) -> np.ndarray:
        return self.values["features"]

    @property
    def frame_lengths(self) -> np.ndarray:
        return self.values["frame_lengths"]

    @property
    def log_probs(self) -> np.ndarray | None:
        return self.values.get("log_probs")

    @property
    def input_ids(self) -> np.ndarray | None:
        return self.values.get("input_ids")

    @property
    def attention_mask(self) -> np.ndarray | None:
        return self.values.get("attention_mask")

    @property
    def token_features(self) -> np.ndarray | None:
        return self.values.get("token_features")

    @property
    def logits(self) -> np.ndarray:
        return self.values["logits"]


@dataclass(frozen=True)
class StageGraph:
    """The stages of one model and the steps between them; see the module docstring."""

    stages: tuple[str, ...]
    inputs: dict[str, tuple[str, ...]]
    outputs: dict[str, tuple[str, ...]]
    frame_layout: tuple[tuple[int, int, int, int], ...]
    labels: tuple[str, ...]
    vocab: CtcVocab | None = None
    tokenizer: Tokenizer | None = None
    supports_padded_batch: bool = True
    source: str = "<model>"

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if unknown:
            raise BundleError(f"{self.source}: unknown stage(s) {', '.join(unknown)}")
        for required in (AUDIO_ENCODER, FUSION_HEAD):
            if required not in self.stages:
                raise BundleError(f"{self.source}: no {required} stage")
        if TEXT_ENCODER in self.stages and self.tokenizer is None:
            raise BundleError(f"{self.source}: has a text encoder but no tokenizer")

    @classmethod
    def from_manifest(cls, manifest: ManifestView, root: Path | None = None) -> StageGraph:
        """The graph a bundle manifest describes (stage I/O names, frame layout, CTC vocabulary, tokenizer)."""
        source = str(root) if root is not None else "bundle"
        tokenizer = None
        if manifest.tokenizer is not None and root is not None:
            from tokenizers import Tokenizer as HfTokenizer

            try:
                tokenizer = HfTokenizer.from_file(str(root / manifest.tokenizer))
            except Exception as err:  # the tokenizers library raises plain Exception on a bad file
                raise BundleError(f"{root / manifest.tokenizer}: unreadable tokenizer ({err})") from err
        stages = tuple(s for s in STAGE_ORDER if s in manifest.stages)
        return cls(
            stages=stages,
            inputs={s: tuple(t.name for t in manifest.stages[s].inputs) for s in stages},
            outputs={s: tuple(t.name for t in manifest.stages[s].outputs) for s in stages},
            frame_layout=tuple(tuple(int(v) for v in step) for step in manifest.frame_layout),  # type: ignore[misc]
            labels=tuple(manifest.labels),
            vocab=CtcVocab.from_dict(manifest.ctc) if manifest.ctc else None,
            tokenizer=tokenizer,
            supports_padded_batch=bool(manifest.supports_padded_batch),
            source=source,
        )

    @property
    def uses_text(self) -> bool:
        return TEXT_ENCODER in self.stages

    @property
    def decodes(self) -> bool:
        return CTC_HEAD in self.stages and self.vocab is not None

    # ------------------------------------------------------------------ steps between stages

    def frame_lengths(self, sample_lengths: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Valid encoder frames of clips of these lengths (samples), from the layout, never from engine outputs."""
        return apply_frame_layout(sample_lengths, self.frame_layout)

    def decode(self, log_probs: np.ndarray, frame_lengths: np.ndarray) -> list[str]:
        """Greedy CTC decode of each clip's valid frames."""
        if self.vocab is None:
            raise BundleError(f"{self.source}: no CTC vocabulary to decode with")
        return [
            self.vocab.decode_log_probs(log_probs[i], int(frame_lengths[i])) for i in range(len(log_probs))
        ]

    def tokenize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Token ids and attention mask `[B, L]` int64 (L >= 1), as the text encoder was exported."""
        if self.tokenizer is None:
            raise BundleError(f"{self.source}: no tokenizer")
        return tokenize(self.tokenizer, texts)

    # ------------------------------------------------------------------ running

    def feeds(self, stage: str, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs of `stage` taken by name from `values`."""
        missing = [n for n in self.inputs[stage] if n not in values]
        if missing:
            raise BundleError(
                f"{self.source}: stage {stage} needs {', '.join(missing)}, which nothing produced"
            )
        return {name: values[name] for name in self.inputs[stage]}

    def run_stage(
        self, runners: Mapping[str, StageRunner], stage: str, values: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run one stage on the named tensors in `values` (e.g. a reference run's), returning its outputs."""
        if stage not in runners:
            raise BundleError(f"{self.source}: no runner for stage {stage}")
        return runners[stage].run(self.feeds(stage, values))

    def run(
        self,
        runners: Mapping[str, StageRunner],
        waves: Sequence[npt.NDArray[np.float32]],
        *,
        transcripts: Sequence[str] | None = None,
    ) -> StageRun:
        """Chain the stages on a batch of 16 kHz mono waveforms (zero-padded together where the model allows).

        `transcripts` replace the CTC transcripts as the text input (ground-truth text evaluation).
        """
        if not waves:
            raise BundleError(f"{self.source}: no waveforms to run")
        if not self.supports_padded_batch and len(waves) > 1:
            return stack_runs(
                [
                    self.run(runners, [wave], transcripts=None if transcripts is None else [transcripts[i]])
                    for i, wave in enumerate(waves)
                ]
            )
        timings: dict[str, float] = {}
        raw: dict[str, dict[str, np.ndarray]] = {}
        batch, lengths = pad_batch(waves)
        values: dict[str, np.ndarray] = {"waveform": batch, "lengths": lengths}
        texts: list[str] | None = None  # what the CTC head said
        for stage in self.stages:
            if stage == TEXT_ENCODER:
                started = time.perf_counter()
                text_input = list(transcripts) if transcripts is not None else texts
                values["input_ids"], values["attention_mask"] = self.tokenize(text_input or [""] * len(waves))
                timings[TOKENIZE] = (time.perf_counter() - started) * 1e3
            started = time.perf_counter()
            outputs = self.run_stage(runners, stage, values)
            timings[stage] = (time.perf_counter() - started) * 1e3
            raw[stage] = outputs
            values.update(outputs)
            if stage == AUDIO_ENCODER:  # the layout decides valid frames, never an engine's output
                values["frame_lengths"] = self.frame_lengths(lengths)
            elif stage == CTC_HEAD and self.vocab is not None:
                started = time.perf_counter()
                texts = self.decode(values["log_probs"], values["frame_lengths"])
                timings[CTC_DECODE] = (time.perf_counter() - started) * 1e3
        return StageRun(values, texts, timings, raw)


def stack_padded(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate arrays along axis 0, zero-padding axis 1 (time, tokens) to the widest; 1-D arrays as they are."""
    if arrays[0].ndim < 2:
        return np.concatenate(arrays)
    longest = max(a.shape[1] for a in arrays)
    out = np.zeros((sum(a.shape[0] for a in arrays), longest, *arrays[0].shape[2:]), dtype=arrays[0].dtype)
    row = 0
    for array in arrays:
        out[row : row + array.shape[0], : array.shape[1]] = array
        row += array.shape[0]
    return out


def stack_runs(runs: Sequence[StageRun]) -> StageRun:
    """Join single-clip runs into one batch-shaped run (zero-padded along axis 1), timings summed."""
    values = {name: stack_padded([r.values[name] for r in runs]) for name in runs[0].values}
    timings: dict[str, float] = {}
    for run in runs:
        for key, value in run.timings_ms.items():
            timings[key] = timings.get(key, 0.0) + value
    transcripts = (
        [t for r in runs for t in (r.transcripts or [])] if runs[0].transcripts is not None else None
    )
    return StageRun(values, transcripts, timings)
