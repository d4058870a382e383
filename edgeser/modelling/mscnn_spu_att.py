"""MSCNN-SPU-ATT: multi-scale CNNs on MFCC and on word embeddings, statistical pooling, audio-context attention (paper 002).

Peng et al. 2021, "Efficient speech emotion recognition using multi-scale CNN and attention": audio is
MFCC 32 + delta + delta-delta (96-d, 25 ms Hamming window, 10 ms hop); text is GloVe word embeddings
(300-d in the paper); each goes through a multi-scale CNN (parallel single-layer convolutions whose kernels
span the whole feature dimension, ReLU, 128 filters per scale); a statistical pooling unit (SPU: max, mean
and standard deviation over time) summarises each modality; SWEM-max/avg of the word embeddings are
appended; an attention uses each audio SPU vector e_g (g in max/avg/std) as the context over the text
feature maps h_k: s_k = softmax_k(e_g . h_k), S_g = sum_k s_k h_k (Eqs. 4-6); everything is concatenated,
reduced by an FC layer and classified (softmax + cross-entropy). Adam lr 5e-4, gradient clipping 1,
dropout 0.3, batch 64. IEMOCAP 4-class, 10-fold: WA 80.3 / UA 81.4 (ground-truth text).

X-vectors (Snyder et al. 2018) are appended to the audio SPU vector (Table 2: ~1 point without them).

Stage split: `audio_encoder` = MFCC front end + audio multi-scale CNN, per-frame maps `[B, F, Da]`, and
with an `xvector` config (the `paper` size) the x-vector branch on the same STFT, whose `[B, 512]` vector
is repeated on every valid frame: `[B, F, Da + 512]`; `ctc_head` = FC + log-softmax on the maps (so the
model runs speech-only end to end); `text_encoder` = embedding lookup + text multi-scale CNN, returning
`[h | word vectors]` per token `[B, L, Dt + E]` (the word vectors feed SWEM); `fusion_head` = SPUs
(+ x-vector) + SWEM + attention + FC.

Choices where the paper is silent or cannot be followed here: kernel sizes (audio 5/7/9/11, text 2/3/4/5,
as in a public re-implementation); "same" padding so maps keep the sequence length; the hidden FC size
(256) with ReLU; the attention scores are scaled by 1/sqrt(Dt) (unscaled dot products of 512-d ReLU
maps saturate the softmax) and go through a learned projection only when audio and text widths differ;
the x-vector extractor is the x-vector TDNN trained jointly with the emotion loss, not Kaldi's VoxCeleb
model (no pre-trained extractor is available offline; see `xvector.py`), and the `small` size has none;
GloVe is 50-d, the only size packaged here (the paper: 300-d; `text.embedding_dim` is a recipe field and
must match the installed vectors); MFCC standardised by a masked running-statistics norm; the paper's ASR
transcripts come from Google's API, edgeser's from the model's own CTC head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import fusion_masks, lengths_to_mask, masked_mean
from edgeser.modelling.blocks import NEG_INF, mask_time, masked_max, masked_std
from edgeser.modelling.dims import PARSE, RecipeDims
from edgeser.modelling.frontend import MaskedFeatureNorm, build_frontend
from edgeser.modelling.words import WordEmbedding, WordFusionModel, WordModelDims, WordTextDims
from edgeser.modelling.xvector import XVectorBranch, XVectorDims
from edgeser.text import CtcVocab


@dataclass(frozen=True, kw_only=True)
class MscnnAudioDims(RecipeDims):
    """`audio`: the audio multi-scale CNN (kernel sizes in frames, filters per kernel)."""

    kernels: tuple[int, ...] = (5, 7, 9, 11)
    filters: int = 128


@dataclass(frozen=True, kw_only=True)
class MscnnTextDims(WordTextDims):
    """`text`: the word vocabulary and embedding, then the text multi-scale CNN (kernel sizes in words)."""

    kernels: tuple[int, ...] = (2, 3, 4, 5)
    filters: int = 128


@dataclass(frozen=True, kw_only=True)
class MscnnFusionDims(RecipeDims):
    """`fusion`: the hidden FC size and the dropout."""

    hidden: int = 256
    dropout: float = 0.3


def _optional_xvector(value: Any, where: str) -> XVectorDims | None:
    """An empty or null `xvector` section means no x-vector branch (the `small` size has none)."""
    return XVectorDims.from_recipe(value, where) if value else None


@dataclass(frozen=True, kw_only=True)
class MscnnDims(WordModelDims):
    """The typed config of an MSCNN-SPU-ATT size; `xvector` (the `paper` size) adds the x-vector branch."""

    SECTION = "mscnn_spu_att"

    audio: MscnnAudioDims = field(default_factory=MscnnAudioDims)
    text: MscnnTextDims = field(default_factory=MscnnTextDims)
    xvector: XVectorDims | None = field(default=None, metadata={PARSE: _optional_xvector})
    fusion: MscnnFusionDims = field(default_factory=MscnnFusionDims)


class MultiScaleCnn(nn.Module):
    """Parallel single-layer 1-D convolutions (kernel spanning all input features) + ReLU, concatenated.

    Input `[B, T, D]` zero beyond lengths -> `[B, T, filters * len(kernels)]`, zero beyond lengths. Each
    kernel of size k sees `(k - 1) // 2` steps before and `k // 2` after ("same" length).
    """

    def __init__(self, in_dim: int, kernels: list[int], filters: int) -> None:
        super().__init__()
        if not kernels or min(kernels) < 1:
            raise ModelError(f"multi-scale CNN needs positive kernel sizes, got {kernels}")
        self.kernels = [int(k) for k in kernels]
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, filters, k) for k in self.kernels)
        self.out_dim = filters * len(self.kernels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x `[B, T, D]`, mask `[B, T]` -> `[B, T, out_dim]`."""
        channels_first = x.transpose(1, 2)
        maps = [
            torch.relu(conv(F.pad(channels_first, ((k - 1) // 2, k // 2))))
            for conv, k in zip(self.convs, self.kernels)
        ]
        return mask_time(torch.cat(maps, dim=1).transpose(1, 2), mask)


class MscnnAudioEncoder(nn.Module):
    """`audio_encoder`: waveform -> MFCC + deltas (96-d) -> audio multi-scale CNN maps `[B, F, Da]` at the MFCC rate;
    with an `xvector` config, the clip's x-vector (from the same STFT) follows each valid frame's maps:
    `[B, F, Da + E]` (zero beyond the frames; the CTC head reads the first Da columns only)."""

    def __init__(self, dims: MscnnDims) -> None:
        super().__init__()
        sample_rate = dims.sample_rate
        self.frontend = build_frontend(dims.frontend, sample_rate)
        self.norm = MaskedFeatureNorm(self.frontend.out_dim)
        self.cnn = MultiScaleCnn(self.frontend.out_dim, list(dims.audio.kernels), dims.audio.filters)
        self.xvector: XVectorBranch | None = None
        if dims.xvector is not None:
            self.xvector = XVectorBranch(sample_rate, self.frontend.spectrogram.n_fft, dims.xvector)
        self.maps_dim = self.cnn.out_dim
        self.xvector_dim = self.xvector.out_dim if self.xvector is not None else 0
        self.out_dim = self.maps_dim + self.xvector_dim
        self.ctc_dim = self.maps_dim

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """The multi-scale CNN keeps the MFCC frame rate ("same" padding): the front end's framing only."""
        return self.frontend.frame_layout()

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]`, lengths `[B]` -> features `[B, F, Da]`, frame_lengths `[B]`."""
        features, frame_lengths, power = self.frontend.forward_with_power(waveform, lengths)
        mask = lengths_to_mask(frame_lengths, features.shape[1])
        maps = self.cnn(self.norm(features, mask), mask)
        if self.xvector is None:
            return maps, frame_lengths
        vectors = self.xvector(power, frame_lengths).unsqueeze(1).expand(-1, maps.shape[1], -1)
        return torch.cat([maps, mask_time(vectors, mask)], dim=-1), frame_lengths


class MscnnTextEncoder(nn.Module):
    """`text_encoder`: token ids -> word vectors -> text multi-scale CNN; returns `[h | word vectors]` `[B, L, Dt + E]`."""

    def __init__(self, words: list[str], text_config: MscnnTextDims) -> None:
        super().__init__()
        self.embedding = WordEmbedding(words, text_config)
        self.cnn = MultiScaleCnn(self.embedding.dim, list(text_config.kernels), text_config.filters)
        self.cnn_dim = self.cnn.out_dim
        self.embedding_dim = self.embedding.dim
        self.out_dim = self.cnn_dim + self.embedding_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids `[B, L]`, attention_mask `[B, L]` -> token_features `[B, L, Dt + E]` (zero at padding)."""
        mask = attention_mask != 0
        vectors = self.embedding(input_ids, attention_mask)
        return torch.cat([self.cnn(vectors, mask), vectors], dim=-1)


class MscnnFusionHead(nn.Module):
    """`fusion_head`: audio SPU, text SPU, SWEM max/avg, audio-context attention over text maps; FC, ReLU, FC."""

    def __init__(
        self,
        audio_dim: int,
        text_dim: int,
        embedding_dim: int,
        num_classes: int,
        hidden: int,
        dropout: float,
        xvector_dim: int = 0,
    ) -> None:
        super().__init__()
        self.audio_dim = audio_dim
        self.xvector_dim = xvector_dim
        self.text_dim = text_dim
        # e_g . h_k needs equal widths; a learned map bridges them only when the configs differ.
        self.context: nn.Module = (
            nn.Linear(audio_dim, text_dim, bias=False) if audio_dim != text_dim else nn.Identity()
        )
        in_dim = 3 * audio_dim + xvector_dim + 3 * text_dim + 2 * embedding_dim + 3 * text_dim
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def attend(self, context: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eqs. 4-5: context `[B, Da]`, text maps `[B, L, Dt]`, mask `[B, L]` -> attended vector `[B, Dt]`."""
        query = self.context(context)
        scores = torch.matmul(maps, query.unsqueeze(-1)).squeeze(-1) * (self.text_dim**-0.5)  # [B, L]
        scores = scores.masked_fill(~mask, NEG_INF)
        weights = torch.softmax(scores, dim=-1) * mask.to(scores.dtype)  # all-masked (empty text) -> zeros
        return torch.matmul(weights.unsqueeze(1), maps).squeeze(1)

    def forward(
        self,
        features: torch.Tensor,
        frame_lengths: torch.Tensor,
        token_features: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """features `[B, F, Da]`, frame_lengths `[B]`, token_features `[B, L, Dt + E]`, attention_mask `[B, L]` -> logits `[B, C]`."""
        audio_mask, text_mask = fusion_masks(features, frame_lengths, attention_mask)
        maps = token_features[..., : self.text_dim]
        vectors = token_features[..., self.text_dim :]
        audio_maps = features[..., : self.audio_dim]
        audio_spu = [
            masked_max(audio_maps, audio_mask),
            masked_mean(audio_maps, audio_mask),
            masked_std(audio_maps, audio_mask),
        ]
        # The x-vector is repeated on every valid frame; every clip has at least one frame.
        xvector = [features[:, 0, self.audio_dim :]] if self.xvector_dim else []
        text_spu = [masked_max(maps, text_mask), masked_mean(maps, text_mask), masked_std(maps, text_mask)]
        swem = [masked_max(vectors, text_mask), masked_mean(vectors, text_mask)]
        attended = [self.attend(e, maps, text_mask) for e in audio_spu]
        return self.classifier(torch.cat([*audio_spu, *xvector, *text_spu, *swem, *attended], dim=-1))


class MscnnSpuAttModel(WordFusionModel):
    """MSCNN-SPU-ATT with a character CTC head on the audio maps and a GloVe word tokenizer."""

    name = "mscnn_spu_att"

    def __init__(self, config: dict[str, Any], labels: list[str], vocab: CtcVocab | None) -> None:
        dims = MscnnDims.from_recipe(config)
        super().__init__(config, labels, vocab, dims, MscnnAudioEncoder, MscnnTextEncoder)
        self.fusion_head = MscnnFusionHead(
            self.audio_encoder.maps_dim,
            self.text_encoder.cnn_dim,
            self.text_encoder.embedding_dim,
            len(labels),
            dims.fusion.hidden,
            dims.fusion.dropout,
            xvector_dim=self.audio_encoder.xvector_dim,
        )
