"""The stage contract every edgeser model follows (docs/DESIGN.md section 3).

A model is four `nn.Module` stages, each exported as its own ONNX graph:

| stage           | forward(...)                                                        | returns                                   |
|-----------------|---------------------------------------------------------------------|-------------------------------------------|
| `audio_encoder` | waveform `[B, S]` float32 (16 kHz, zero beyond length), lengths `[B]` int64 | features `[B, F, Da]`, frame_lengths `[B]` int64 |
| `ctc_head`      | features `[B, F, Da]`                                               | log_probs `[B, F, V]` (log-softmax)       |
| `text_encoder`  | input_ids `[B, L]` int64, attention_mask `[B, L]` int64             | token_features `[B, L, Dt]`               |
| `fusion_head`   | features, frame_lengths, token_features, attention_mask             | logits `[B, C]`                           |

Audio-only models have `ctc_head = text_encoder = None` and a fusion head taking
`(features, frame_lengths)` only. Every stage must give the same per-clip outputs for a
zero-padded batch as for the clips run one by one, so frames and tokens beyond the valid
lengths are masked everywhere (pooling, attention, normalisation, recurrences).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeser.errors import ModelError
from edgeser.stages import STAGE_ORDER, StageGraph, stage_io, tokenize
from edgeser.text import CtcVocab


@dataclass
class SerOutput:
    """What a full forward pass returns: emotion logits plus the ASR side when the model has one."""

    logits: torch.Tensor  # [B, C]
    frame_lengths: torch.Tensor  # [B]
    ctc_log_probs: torch.Tensor | None = None  # [B, F, V]


def lengths_to_mask(lengths: torch.Tensor, max_length: int | torch.Tensor) -> torch.Tensor:
    """Boolean `[B, T]` mask, True at valid positions; export-friendly (arange + compare)."""
    positions = torch.arange(max_length, device=lengths.device)  # type: ignore[arg-type]
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def fusion_masks(
    features: torch.Tensor, frame_lengths: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fusion head's boolean masks: valid frames `[B, F]` of `features` and valid tokens `[B, L]`."""
    return lengths_to_mask(frame_lengths, features.shape[1]), attention_mask != 0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `[B, T, D]` over valid time steps given a `[B, T]` mask (bool or 0/1)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class SerModel(nn.Module):
    """A speech emotion recognition model made of the four export stages.

    Subclasses build the stages in `__init__` and keep their resolved config in
    `self.config` (a JSON-serialisable dict) so checkpoints can rebuild them; they read it through
    its typed form, `self.dims` (frozen dataclasses, `edgeser.modelling.dims`).
    `tokenizer` is a `tokenizers.Tokenizer` for the text branch (None for audio-only
    models); the runtime uses its `tokenizer.json` without transformers.
    """

    name: str = ""

    def __init__(self, config: dict[str, Any], labels: list[str], vocab: CtcVocab | None) -> None:
        super().__init__()
        self.config = config
        self.labels = list(labels)
        self.vocab = vocab
        self.tokenizer: Any = None
        self.audio_encoder: nn.Module
        self.ctc_head: nn.Module | None = None
        self.text_encoder: nn.Module | None = None
        self.fusion_head: nn.Module

    @property
    def uses_text(self) -> bool:
        return self.text_encoder is not None

    @property
    def supports_padded_batch(self) -> bool:
        """False for encoders trained without an attention mask (group-norm wav2vec2/HuBERT)."""
        return True

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask `[B, L]` int64 for transcripts, padded to the longest."""
        if self.tokenizer is None:
            raise ModelError(f"model {self.name!r} has no text branch")
        ids, mask = tokenize(self.tokenizer, texts)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    # ------------------------------------------------------------------ hooks (override where a model has them)

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """`[kernel, stride, total padding, min length]` per time-reducing step of the audio encoder."""
        layout = getattr(self.audio_encoder, "frame_layout", None)
        if layout is None:
            raise ModelError(f"{self.name}: audio encoder does not describe its frame layout")
        return [(int(k), int(s), int(p), int(m)) for k, s, p, m in layout()]

    def prepare_for_export(self) -> SerModel:
        """Put the model in its exported form (eval mode; subclasses fold what must not run at inference)."""
        self.eval()
        return self

    def augment_waveform(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The paper's waveform augmentation while training (none by default)."""
        return waveform

    def packaged_weights(self) -> dict[str, str]:
        """State-dict key prefixes whose values come, frozen, from an installed package (a pretrained text
        encoder, word vectors) -> that package's name. Checkpoints reference them instead of copying them."""
        return {}

    @property
    def offline_copies_per_clip(self) -> int:
        """Augmented copies of each training clip the recipe adds once before training (STF-Net paper: 1)."""
        return 0

    def offline_augmentation(self, waves: list[Any], seed: int) -> list[list[Any]]:
        """The `offline_copies_per_clip` augmented copies of each training waveform, in clip order."""
        return [[] for _ in waves]

    @property
    def has_acoustic_head(self) -> bool:
        """True where the paper trains an audio-only SER head first (`acoustic_logits`)."""
        return False

    def acoustic_logits(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Audio-only SER logits `[B, C]`, for training stages with `uses_text: false`."""
        raise ModelError(
            f"{self.name}: no audio-only SER head; a training stage with uses_text false needs one"
        )

    def stage_graph(self) -> StageGraph:
        """The stage contract of this model, as a bundle exported from it describes it."""
        stages = tuple(s for s in STAGE_ORDER if getattr(self, s, None) is not None)
        return StageGraph(
            stages=stages,
            inputs={s: stage_io(s, self.uses_text)[0] for s in stages},
            outputs={s: stage_io(s, self.uses_text)[1] for s in stages},
            frame_layout=tuple(self.frame_layout()),
            labels=tuple(self.labels),
            vocab=self.vocab if self.ctc_head is not None else None,
            tokenizer=self.tokenizer,
            supports_padded_batch=self.supports_padded_batch,
            source=f"model {self.name}",
        )

    def forward(
        self,
        waveform: torch.Tensor,
        lengths: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> SerOutput:
        """Run every stage; text models need token ids (ground truth in training, ASR at inference)."""
        features, frame_lengths = self.audio_encoder(waveform, lengths)
        log_probs = self.ctc_head(features) if self.ctc_head is not None else None
        if self.text_encoder is None:
            return SerOutput(self.fusion_head(features, frame_lengths), frame_lengths, log_probs)
        if input_ids is None or attention_mask is None:
            raise ValueError(f"model {self.name!r} fuses text: pass input_ids and attention_mask")
        token_features = self.text_encoder(input_ids, attention_mask)
        logits = self.fusion_head(features, frame_lengths, token_features, attention_mask)
        return SerOutput(logits, frame_lengths, log_probs)
