"""SASER: semantic-aware SER; CNN and Transformer on spectral features, GRU on the transcript (paper 000).

"Semantic aware speech emotion recognition": a speech module with a CNN (3x3 kernels, stride 2x2,
max-pooling; 3 modules best on IEMOCAP) in parallel with a Transformer (d = 512, 6 layers, 8 heads); a GRU
(hidden 128) on the ASR transcript's word vectors; a semantic embedding support module aligning each speech
frame with the words (attention normalised over words) so text semantics support the speech features; two
key-value attentions fusing speech -> text and text -> speech; FC + softmax/cross-entropy. Adam, lr 1e-4,
weight decay 1e-3, batch 64, 60 epochs, dropout 0.3. IEMOCAP 74.3 %, EMO-DB 72.5 % (60/20/20 split).

The paper's equations did not survive in the text we have, so the pieces are written from its prose:
- speech input: log-mel (64 bands, 25 ms window, 5 ms hop); the CNN's three modules are Conv 3x3 stride
  (2, 2) -> BatchNorm -> ReLU -> MaxPool over frequency (2, 1) -> Dropout, so time is subsampled by 8
  (25 frames/s: enough frames for the character CTC head the edge bundle adds);
- the Transformer runs at the same frame rate: 8 log-mel frames are stacked by a stride-8 convolution
  into its d-dimensional input, plus sinusoidal positions; the two branches are concatenated per frame;
- semantic alignment: a_ij = softmax_j(q(A_i) . k(T_j)), T~_i = sum_j a_ij v(T_j), S = LayerNorm(A + T~);
- key-value attentions (single head, bilinear scores, scaled): M = LayerNorm(S + Att(S -> T)),
  N = LayerNorm(T + Att(T -> S)); masked means of M over frames and N over words, concatenated, dropout, FC.
  The residuals keep a speech-only path when the transcript is empty;
- GRU: unidirectional over right-padded words (padding-safe and exportable, no packing).

Recipe choices: `cnn.channels` sets the number of CNN modules (3, the paper's best on IEMOCAP, in `paper`;
2, its best on EMO-DB, in `paper-emodb`). The paper's "regularization parameter 0.01", listed apart from
Adam's weight decay 1e-3, is read as the lambda of an L2 term on the output FC's weights in the loss
(`training.l2_penalty`, applied by the trainer through `train_hooks.l2_penalty`). Its transcripts come from
speech recognition, so the paper recipes evaluate on the model's own CTC transcript (the paper used an
external ASR; edgeser adds the CTC head for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import fusion_masks, lengths_to_mask, masked_mean
from edgeser.modelling.blocks import (
    MaskedMultiHeadAttention,
    TransformerEncoder,
    conv_out_lengths,
    mask_time,
)
from edgeser.modelling.dims import RecipeDims
from edgeser.modelling.frontend import MaskedFeatureNorm, build_frontend
from edgeser.modelling.words import WordEmbedding, WordFusionModel, WordModelDims, WordTextDims
from edgeser.text import CtcVocab


@dataclass(frozen=True, kw_only=True)
class SaserCnnDims(RecipeDims):
    """`cnn`: one strided CNN module per entry of `channels` (3: the paper's best on IEMOCAP)."""

    channels: tuple[int, ...] = (32, 64, 128)
    dropout: float = 0.3


@dataclass(frozen=True, kw_only=True)
class SaserTransformerDims(RecipeDims):
    """`transformer`: width `dim`, `heads`, feed-forward `ff_dim` (None: 4 x dim), `layers`, `dropout`."""

    dim: int = 512
    heads: int = 8
    ff_dim: int | None = None
    layers: int = 6
    dropout: float = 0.3

    @property
    def feed_forward(self) -> int:
        return self.ff_dim if self.ff_dim is not None else 4 * self.dim


@dataclass(frozen=True, kw_only=True)
class SaserTextDims(WordTextDims):
    """`text`: the word vocabulary and embedding, then a GRU of `gru_hidden` units."""

    gru_hidden: int = 128


@dataclass(frozen=True, kw_only=True)
class SaserFusionDims(RecipeDims):
    """`fusion`: the width `dim` both modalities are projected to, and the dropout."""

    dim: int = 128
    dropout: float = 0.3


@dataclass(frozen=True, kw_only=True)
class SaserDims(WordModelDims):
    """The typed config of a SASER size."""

    SECTION = "saser"

    cnn: SaserCnnDims = field(default_factory=SaserCnnDims)
    transformer: SaserTransformerDims = field(default_factory=SaserTransformerDims)
    text: SaserTextDims = field(default_factory=SaserTextDims)
    fusion: SaserFusionDims = field(default_factory=SaserFusionDims)


class StridedCnn(nn.Module):
    """CNN modules over a `[B, 1, M, T]` spectrogram: Conv 3x3 stride 2 -> BN -> ReLU -> MaxPool (2, 1) -> Dropout.

    Each module halves time (`(L - 1) // 2 + 1`); frames beyond each clip's length are zeroed before every
    convolution. Output: per-frame vectors `[B, T', channels * M']`.
    """

    def __init__(self, in_height: int, channels: list[int], dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        height, previous = in_height, 1
        for out_channels in channels:
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, out_channels, kernel_size=3, stride=2, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                    nn.MaxPool2d(kernel_size=(2, 1), stride=(2, 1)),
                    nn.Dropout(dropout),
                )
            )
            height, previous = ((height - 1) // 2 + 1) // 2, out_channels
        if height < 1:
            raise ModelError(f"saser cnn: {len(channels)} modules leave no frequency bins of {in_height}")
        self.out_dim = previous * height
        self.time_reduction = 2 ** len(channels)

    def forward(self, image: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image `[B, 1, M, T]`, lengths `[B]` -> features `[B, T', out_dim]`, lengths `[B]`."""
        x = image
        for block in self.blocks:
            x = block(mask_time(x, lengths_to_mask(lengths, x.shape[3]), time_dim=3))
            lengths = conv_out_lengths(lengths, 3, 2, 1)
        b, c, h, t = x.shape
        return x.permute(0, 3, 1, 2).reshape(b, t, c * h), lengths


class SaserAudioEncoder(nn.Module):
    """`audio_encoder`: log-mel -> [strided CNN | frame-stacked Transformer] per frame `[B, F, Dc + d]`."""

    def __init__(self, dims: SaserDims) -> None:
        super().__init__()
        self.frontend = build_frontend(dims.frontend, dims.sample_rate)
        n_feat = self.frontend.out_dim
        self.norm = MaskedFeatureNorm(n_feat)
        self.cnn = StridedCnn(n_feat, list(dims.cnn.channels), dims.cnn.dropout)
        self.stack = self.cnn.time_reduction
        tr = dims.transformer
        dim = tr.dim
        self.stacker = nn.Conv1d(n_feat, dim, kernel_size=self.stack, stride=self.stack)
        self.transformer = TransformerEncoder(dim, tr.heads, tr.feed_forward, tr.layers, tr.dropout)
        self.out_dim = self.cnn.out_dim + dim

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """Log-mel framing, then one (3, stride 2, padding 1) conv per CNN block along time."""
        return [*self.frontend.frame_layout(), *[(3, 2, 2, 0)] * len(self.cnn.blocks)]

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]`, lengths `[B]` -> features `[B, F, Dc + d]`, frame_lengths `[B]` (F = ceil(frames / 8))."""
        logmel, mel_lengths = self.frontend(waveform, lengths)
        x = self.norm(logmel, lengths_to_mask(mel_lengths, logmel.shape[1]))  # [B, T, M], zero beyond lengths
        local, frame_lengths = self.cnn(x.transpose(1, 2).unsqueeze(1), mel_lengths)
        stacked = self.stacker(F.pad(x.transpose(1, 2), (0, self.stack - 1))).transpose(
            1, 2
        )  # [B, ceil(T/8), d]
        mask = lengths_to_mask(frame_lengths, stacked.shape[1])
        global_ = self.transformer(stacked, mask)
        return mask_time(torch.cat([local, global_], dim=-1), mask), frame_lengths


class SaserTextEncoder(nn.Module):
    """`text_encoder`: token ids -> word vectors -> unidirectional GRU; `[B, L, hidden]`, zero at padding."""

    def __init__(self, words: list[str], text_config: SaserTextDims) -> None:
        super().__init__()
        self.embedding = WordEmbedding(words, text_config)
        hidden = text_config.gru_hidden
        self.gru = nn.GRU(self.embedding.dim, hidden, batch_first=True)
        self.out_dim = hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids `[B, L]`, attention_mask `[B, L]` -> token_features `[B, L, hidden]`."""
        outputs, _ = self.gru(self.embedding(input_ids, attention_mask))
        return mask_time(outputs, attention_mask != 0)


class SaserFusionHead(nn.Module):
    """`fusion_head`: semantic alignment (frames over words), key-value attention both ways, masked means, FC."""

    def __init__(self, audio_dim: int, text_dim: int, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.speech_proj = nn.Linear(audio_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.align = MaskedMultiHeadAttention(dim, dim, dim, heads=1)
        self.speech_to_text = MaskedMultiHeadAttention(dim, dim, dim, heads=1)
        self.text_to_speech = MaskedMultiHeadAttention(dim, dim, dim, heads=1)
        self.align_norm = nn.LayerNorm(dim)
        self.speech_norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * dim, num_classes)

    def forward(
        self,
        features: torch.Tensor,
        frame_lengths: torch.Tensor,
        token_features: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """features `[B, F, Da]`, frame_lengths `[B]`, token_features `[B, L, Dt]`, attention_mask `[B, L]` -> logits `[B, C]`."""
        audio_mask, text_mask = fusion_masks(features, frame_lengths, attention_mask)
        speech = self.speech_proj(features)
        text = self.text_proj(token_features)
        semantic = self.align_norm(speech + self.align(speech, text, text_mask))  # S: semantic-aware speech
        m = self.speech_norm(semantic + self.dropout(self.speech_to_text(semantic, text, text_mask)))
        n = self.text_norm(text + self.dropout(self.text_to_speech(text, semantic, audio_mask)))
        pooled = torch.cat([masked_mean(m, audio_mask), masked_mean(n, text_mask)], dim=-1)
        return self.classifier(self.dropout(pooled))


class SaserModel(WordFusionModel):
    """SASER with a character CTC head on the speech features and a GloVe word tokenizer."""

    name = "saser"

    def __init__(self, config: dict[str, Any], labels: list[str], vocab: CtcVocab | None) -> None:
        dims = SaserDims.from_recipe(config)
        super().__init__(config, labels, vocab, dims, SaserAudioEncoder, SaserTextEncoder)
        self.fusion_head = SaserFusionHead(
            self.audio_encoder.out_dim,
            self.text_encoder.out_dim,
            len(labels),
            dims.fusion.dim,
            dims.fusion.dropout,
        )
