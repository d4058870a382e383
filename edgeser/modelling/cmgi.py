"""CmGI: HuBERT (SER + CTC ASR) + BERT on the transcript + cross-modal gated interaction (paper 001).

Paper: "multi-level information extraction and interaction" with a cross-modal gated interaction (CmGI)
module; IEMOCAP 4-class UA 79.62 / WA 79.50. Eq. numbers below refer to the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.backbones import FusionDims, PretrainedFusionDims, PretrainedFusionModel
from edgeser.modelling.base import fusion_masks, lengths_to_mask, masked_mean
from edgeser.modelling.blocks import MaskedMultiHeadAttention, masked_std
from edgeser.text import CtcVocab

Gate = Literal["sigmoid_of_linear", "linear_of_sigmoid"]
BOUNDED_GATE: Gate = "sigmoid_of_linear"  # G = sigmoid(f(concat(s, c))), in (0, 1)
LITERAL_GATE: Gate = "linear_of_sigmoid"  # G = f(sigmoid(concat(s, c))), Eq. 6 as printed
GATES: tuple[Gate, ...] = get_args(Gate)


@dataclass(frozen=True, kw_only=True)
class CmgiFusionDims(FusionDims):
    """`fusion`: the common width `dim`, attention `heads` and dropouts, the gate order (see `CmgiFusionHead`;
    a config without one predates the choice and means `LITERAL_GATE`), and `statistics`, edgeser's
    utterance-statistics read-out of the audio features beside the gated fusion (see `StatisticsReadout`)."""

    dim: int = 768
    heads: int = 1
    attention_dropout: float = 0.0
    dropout: float = 0.1
    gate: Gate = LITERAL_GATE
    statistics: bool = False


@dataclass(frozen=True, kw_only=True)
class CmgiDims(PretrainedFusionDims):
    """The typed config of a CmGI size: HuBERT (or Whisper) and BERT / MiniLM specs, the CmGI fusion."""

    SECTION = "cmgi"

    fusion: CmgiFusionDims = field(default_factory=CmgiFusionDims)


class StatisticsReadout(nn.Module):
    """Logits `[B, C]` from the mean and standard deviation over valid frames of every audio feature, each
    standardised by that statistic's mean and variance over every training clip seen so far, then one linear
    layer: the linear probe of a frozen encoder, trained with the model.

    The standardisation is the exact mean and variance of everything seen in training (merged batch by batch,
    Chan et al.), never the batch's own: the trainer's batches are length-bucketed, so a batch is often one
    corpus, and a batch norm's batch statistics would standardise training clips unlike evaluation ones.

    Not in the paper (edgeser's, for frozen backbones): read from every hidden state of Whisper (acoustic
    `layer` "all"), it carries what a linear probe of those states scores, which the gated fusion alone,
    trained on three small corpora, does not reach (models/README.md).
    """

    def __init__(self, audio_dim: int, num_classes: int, dropout: float, eps: float = 1e-5) -> None:
        super().__init__()
        width = 2 * audio_dim
        self.eps = eps
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    @torch.no_grad()
    def observe(self, stats: torch.Tensor) -> None:
        """Merge a batch `[B, 2D]` into the running mean and (population) variance."""
        n, total = float(stats.shape[0]), float(self.count)
        batch_mean = stats.mean(dim=0)
        batch_var = stats.var(dim=0, unbiased=False)
        merged = total + n
        delta = batch_mean - self.mean
        self.var.copy_(
            (self.var * total + batch_var * n + delta * delta * (total * n / merged)) / merged
            if total
            else batch_var
        )
        self.mean.add_(delta * (n / merged))
        self.count.fill_(merged)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features `[B, F, D]`, mask `[B, F]` (valid frames) -> logits `[B, C]`."""
        stats = torch.cat([masked_mean(features, mask), masked_std(features, mask)], dim=-1)
        if self.training:
            self.observe(stats.detach())
        standardised = (stats - self.mean) / torch.sqrt(self.var + self.eps)
        return self.classifier(self.dropout(standardised))


class CmgiFusionHead(nn.Module):
    """Cross-modal gated interaction (Eqs. 3-7): SA per modality, CA both ways, temporal gates, pool, FC.

    s = SA(x) per modality (Eq. 3); c^a = CA(query s^a, key/value s^t), c^t = CA(query s^t, key/value s^a)
    (Eq. 4); a gate G from concat(s, c) per frame/token with f a linear map 2d -> d (Eq. 6); output =
    concat(s * G, c * (1 - G)); logits = FC(concat(mp(output^a), mp(output^t))) with masked mean pooling
    (Eq. 7). Both modalities are first projected to a common `dim` (identity where a modality already has
    it); the paper does not say how HuBERT's 1024 meets BERT's 768.

    `statistics` adds a `StatisticsReadout` of the audio features (before the projection) to the logits.

    `gate` chooses the order of f and the sigmoid:
    - "sigmoid_of_linear": G = sigmoid(f(concat(s, c))), G in (0, 1) so 1 - G is its complement: the gated
      fusion the paper builds on (its Eq. 5 cites a gated-fusion model) and what "gate" means; the recipes'
      choice;
    - "linear_of_sigmoid": G = f(sigmoid(concat(s, c))), Eq. 6 as printed; G is unbounded (an affine map of
      values in (0, 1)) and 1 - G no complement. The default when a config names no gate, so checkpoints
      from before the choice existed (which all used it) rebuild as trained.
    """

    def __init__(
        self,
        audio_dim: int,
        text_dim: int,
        num_classes: int,
        dim: int,
        heads: int = 1,
        attention_dropout: float = 0.0,
        dropout: float = 0.1,
        gate: Gate = LITERAL_GATE,
        statistics: bool = False,
    ) -> None:
        super().__init__()
        if gate not in GATES:
            raise ModelError(f"cmgi fusion.gate must be one of {', '.join(GATES)}, got {gate!r}")
        self.gate = gate
        self.audio_proj: nn.Module = nn.Linear(audio_dim, dim) if audio_dim != dim else nn.Identity()
        self.text_proj: nn.Module = nn.Linear(text_dim, dim) if text_dim != dim else nn.Identity()
        self.audio_self = MaskedMultiHeadAttention(
            dim, dim, dim, heads, dropout=attention_dropout, out_proj=False
        )
        self.text_self = MaskedMultiHeadAttention(
            dim, dim, dim, heads, dropout=attention_dropout, out_proj=False
        )
        self.audio_cross = MaskedMultiHeadAttention(
            dim, dim, dim, heads, dropout=attention_dropout, out_proj=False
        )
        self.text_cross = MaskedMultiHeadAttention(
            dim, dim, dim, heads, dropout=attention_dropout, out_proj=False
        )
        self.audio_gate = nn.Linear(2 * dim, dim)  # f for G^a
        self.text_gate = nn.Linear(2 * dim, dim)  # f for G^t
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * dim, num_classes)
        self.statistics = StatisticsReadout(audio_dim, num_classes, dropout) if statistics else None

    def gate_values(self, s: torch.Tensor, c: torch.Tensor, f: nn.Module) -> torch.Tensor:
        """The temporal-aware gate G `[B, T, d]` of one modality from s, c `[B, T, d]` (see `gate`)."""
        joined = torch.cat([s, c], dim=-1)
        if self.gate == BOUNDED_GATE:
            return torch.sigmoid(f(joined))
        return f(torch.sigmoid(joined))

    def _gated(self, s: torch.Tensor, c: torch.Tensor, f: nn.Module) -> torch.Tensor:
        """Temporal-aware gated fusion of one modality: `[B, T, d]` x2 -> `[B, T, 2d]`."""
        g = self.gate_values(s, c, f)
        return torch.cat([s * g, c * (1.0 - g)], dim=-1)

    def forward(
        self,
        features: torch.Tensor,
        frame_lengths: torch.Tensor,
        token_features: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """features `[B, F, Da]`, frame_lengths `[B]`, token_features `[B, L, Dt]`, attention_mask `[B, L]`
        -> logits `[B, C]`."""
        audio_mask, text_mask = fusion_masks(features, frame_lengths, attention_mask)
        xa = self.audio_proj(features)
        xt = self.text_proj(token_features)
        sa = self.audio_self(xa, xa, audio_mask)
        st = self.text_self(xt, xt, text_mask)
        ca = self.audio_cross(sa, st, text_mask)
        ct = self.text_cross(st, sa, audio_mask)
        out_a = self._gated(sa, ca, self.audio_gate)
        out_t = self._gated(st, ct, self.text_gate)
        pooled = torch.cat([masked_mean(out_a, audio_mask), masked_mean(out_t, text_mask)], dim=-1)
        logits = self.classifier(self.dropout(pooled))
        if self.statistics is not None:
            logits = logits + self.statistics(features, audio_mask)
        return logits


class CmgiModel(PretrainedFusionModel):
    """HuBERT + CTC head + BERT + CmGI fusion, split into the four export stages.

    Config (a recipe size): `acoustic` (backbones.acoustic_backbone spec, type hubert), `text`
    (backbones.text_backbone spec plus `"freeze": bool`), `fusion` (`dim`, `heads`, `dropout`,
    `attention_dropout`, `ctc_dropout`, `gate`, `statistics`). A top-level `"random_weights": true` (e.g.
    `build_model("cmgi", "paper", labels, overrides={"random_weights": True})`) reaches both backbone specs:
    the paper's HuBERT-large and BERT-base are built from the recipe's shipped configs with random weights and
    nothing is read from disk or hub; without it a missing pretrained backbone raises `ModelError`.

    Training (paper): loss `a * CTC + (1 - a) * CE` with a = 0.1, in the two phases the recipe's
    `training.<size>.stages` define (the one definition of them): (1) "acoustic": HuBERT for SER + ASR, BERT
    frozen, with the paper's audio-only SER head (`acoustic_logits`: mean-pooled HuBERT ->
    `acoustic_classifier`; the stage has `uses_text: false`); (2) "joint": CNN feature encoder frozen, HuBERT
    Transformer + CTC head + BERT (ground-truth transcripts) + fusion head for SER, CTC still on HuBERT. The
    small size also freezes the MiniLM text encoder in both. `acoustic_classifier` is not an export stage.
    With `fusion.statistics` (the edge size) the phase-1 audio head is the fusion head's `StatisticsReadout`
    instead, which the exported model keeps; the edge recipe freezes it in phase 2.
    """

    name = "cmgi"

    def __init__(self, config: dict[str, Any], labels: list[str], vocab: CtcVocab | None) -> None:
        # A config without a gate predates the choice: those checkpoints used the literal order. Recording the
        # resolved value keeps every checkpoint saved from here on explicit.
        config.setdefault("fusion", {}).setdefault("gate", LITERAL_GATE)
        dims = CmgiDims.from_recipe(config)
        super().__init__(config, labels, vocab if vocab is not None else CtcVocab(), dims)
        fusion = dims.fusion
        audio_dim = self.audio_encoder.hidden_size
        self.fusion_head = CmgiFusionHead(
            audio_dim,
            self.text_encoder.hidden_size,
            len(self.labels),
            dim=fusion.dim,
            heads=fusion.heads,
            attention_dropout=fusion.attention_dropout,
            dropout=fusion.dropout,
            gate=fusion.gate,
            statistics=fusion.statistics,
        )
        # The phase-1 SER head: the paper's (mean pool + FC, training only), or with `fusion.statistics` the
        # fusion head's statistics read-out, which phase 1 then trains and the exported model keeps.
        self.acoustic_classifier: nn.Module | None = (
            None if fusion.statistics else nn.Linear(audio_dim, len(self.labels))
        )

    @property
    def has_acoustic_head(self) -> bool:
        return True

    def acoustic_logits(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Phase-1 SER logits `[B, C]` from acoustic features `[B, F, Da]` alone (masked mean pool + FC, or the
        statistics read-out)."""
        mask = lengths_to_mask(frame_lengths, features.shape[1])
        if self.acoustic_classifier is None:
            assert self.fusion_head.statistics is not None
            return self.fusion_head.statistics(features, mask)
        return self.acoustic_classifier(masked_mean(features, mask))
