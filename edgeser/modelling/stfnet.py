"""STFNet: two parallel 2-D CNNs (spatial) + a Transformer encoder (temporal) on an MFCC map (paper 003).

An and Ruan 2021, "Speech emotion recognition algorithm based on deep learning algorithm fusion of temporal
and spatial features": 40 MFCC x 282 frames as a 1-channel image; two parallel CNNs and a Transformer
encoder; concat; FC to 8 classes; AWGN doubling the data (2880 native + 2880 noisy maps); SGD (momentum 0.9,
lr 0.01, batch 16, weight decay 1e-4, up to 200 epochs); RAVDESS hold-out 80.46 %. The paper gives no layer
sizes: they follow the public implementation it mirrors (IliaZenkov/transformer-cnn-emotion-recognition:
same 40 x 282 map, same AWGN scheme): per CNN three blocks of Conv 3x3 (16, 32, 64 channels) -> BatchNorm ->
ReLU -> MaxPool -> Dropout 0.3 with pools 2x2, 4x4, 4x4, flattened (64 x 1 x 8 = 512 each); the Transformer
branch max-pools the map by 4 in time (282 -> 70) and runs 4 encoder layers (d = 40 MFCC, 4 heads,
feed-forward 512, dropout 0.4, no positional encoding) and averages over time; FC 1064 -> classes; AWGN at
an SNR drawn from 15-29 dB (integers).

`paper` size (a `map` section in the config): that network on that map. `audio_encoder` computes the map
in the graph (`mfcc_map.FixedMfccMap`: samples [0.5 s, 3.5 s) of the 16 kHz clip, zero-padded, upsampled x3
to 48 kHz, MFCC with n_fft 1024 / window 512 / hop 512, reflection padding), standardises every map element
with training-set statistics (`MapScaler`, the implementation's StandardScaler) and returns one "frame" per
clip, `[B, 1, 1064]`; `fusion_head` is the FC. Deviations: the input is 16 kHz (nothing above 8 kHz, where
RAVDESS at 48 kHz has energy); the scaler is fitted while training rather than in a pass before it; offline
AWGN noise is scaled to the whole clip, not to the zero-padded 3 s window.

`small` size (no `map`; the shipped checkpoint), changed for edge deployment with dynamic length:
- 16 kHz framing (n_fft 512, 25 ms window, 10 ms hop), variable length;
- the CNN pools keep the frequency sizes (2, 4, 4) but pool time by (2, 2, 1), so both branches share one
  frame rate (/4, 40 ms at a 10 ms hop) and `audio_encoder` returns one per-frame fused sequence
  `[B, F, 64 + 64 + 40]`;
- the CNNs' flatten over a fixed time axis becomes masked mean pooling over frames (in `fusion_head`), as
  the Transformer branch already averaged over time;
- the MFCC map is standardised per coefficient by a masked running-statistics norm;
- AWGN on the fly (probability 0.5 per training clip, SNR uniform in 15-30 dB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import SerModel, lengths_to_mask, masked_mean
from edgeser.modelling.blocks import TransformerEncoder, mask_time
from edgeser.modelling.dims import ModelDims, RecipeDims
from edgeser.modelling.frontend import MaskedFeatureNorm, build_frontend
from edgeser.modelling.mfcc_map import ONE_FRAME_STEP, FixedMfccMap, MapDims, MapScaler, pooled_sizes
from edgeser.modelling.train_hooks import awgn_copies
from edgeser.text import CtcVocab

DEFAULT_SNR_DB = (
    15.0,
    30.0,
)  # the AWGN SNR range of the implementation the paper mirrors (paper: none given)
AwgnMode = Literal["online", "offline", "off"]
AWGN_MODES: tuple[AwgnMode, ...] = get_args(AwgnMode)


@dataclass(frozen=True, kw_only=True)
class StfNetCnnDims(RecipeDims):
    """`cnn`: `branches` parallel CNNs of Conv 3x3 (`channels`) -> BatchNorm -> ReLU -> MaxPool (`freq_pools` x
    `time_pools`) -> Dropout blocks. These time pools are the variable-length encoder's (time / 4 in all)."""

    branches: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    freq_pools: tuple[int, ...] = (2, 4, 4)
    time_pools: tuple[int, ...] = (2, 2, 1)
    dropout: float = 0.3


@dataclass(frozen=True, kw_only=True)
class StfNetMapCnnDims(StfNetCnnDims):
    """`cnn` of the fixed-map encoder: the implementation's pools, 2 x 2, 4 x 4, 4 x 4."""

    time_pools: tuple[int, ...] = (2, 4, 4)


@dataclass(frozen=True, kw_only=True)
class StfNetTransformerDims(RecipeDims):
    """`transformer`: the temporal branch over the MFCC frames (d = the MFCC count)."""

    heads: int = 4
    ff_dim: int = 512
    layers: int = 4
    dropout: float = 0.4
    positional_encoding: bool = False


@dataclass(frozen=True, kw_only=True)
class StfNetMapTransformerDims(StfNetTransformerDims):
    """`transformer` of the fixed-map encoder: the map is max-pooled by `time_pool` in time first (282 -> 70)."""

    time_pool: int = 4


@dataclass(frozen=True, kw_only=True)
class AwgnDims(RecipeDims):
    """`awgn`: the paper's noise augmentation (see `StfNetModel`)."""

    mode: AwgnMode = "online"
    probability: float = 0.5
    snr_db: tuple[float, ...] = DEFAULT_SNR_DB
    copies: int = 1
    integer_snr: bool = False


@dataclass(frozen=True, kw_only=True)
class StfNetDims(ModelDims):
    """A config without `map` (`small`): the variable-length encoder. `frontend` holds `FeatureFrontend`'s
    arguments (`frontend.build_frontend` checks them)."""

    SECTION = "stfnet"

    sample_rate: int = 16_000
    frontend: dict[str, Any] = field(default_factory=dict)
    cnn: StfNetCnnDims = field(default_factory=StfNetCnnDims)
    transformer: StfNetTransformerDims = field(default_factory=StfNetTransformerDims)
    awgn: AwgnDims = field(default_factory=AwgnDims)


@dataclass(frozen=True, kw_only=True)
class StfNetMapDims(StfNetDims):
    """A config with a `map` section (`paper`): the fixed 40 x 282 MFCC map encoder."""

    map: MapDims
    cnn: StfNetMapCnnDims = field(default_factory=StfNetMapCnnDims)
    transformer: StfNetMapTransformerDims = field(default_factory=StfNetMapTransformerDims)


def stfnet_dims(config: dict[str, Any]) -> StfNetDims:
    """The typed sizes of an STF-Net config: `StfNetMapDims` when it has a `map` section, else `StfNetDims`."""
    return (StfNetMapDims if "map" in config else StfNetDims).from_recipe(config)


def awgn(
    waveform: torch.Tensor,
    lengths: torch.Tensor,
    snr_db: tuple[float, float] = DEFAULT_SNR_DB,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add white Gaussian noise at a per-clip SNR drawn uniformly from `snr_db` (dB); zero beyond lengths stays zero.

    The signal power is measured over each clip's valid samples. waveform `[B, S]`, lengths `[B]` -> `[B, S]`.
    """
    mask = lengths_to_mask(lengths, waveform.shape[1]).to(waveform.dtype)
    power = (waveform * waveform * mask).sum(dim=1) / lengths.clamp_min(1).to(waveform.dtype)
    low, high = float(snr_db[0]), float(snr_db[1])
    snr = low + (high - low) * torch.rand(waveform.shape[0], generator=generator, device=waveform.device)
    noise_std = torch.sqrt(power / torch.pow(10.0, snr / 10.0)).to(waveform.dtype)
    noise = torch.randn(waveform.shape, generator=generator, device=waveform.device, dtype=waveform.dtype)
    return (waveform + noise * noise_std.unsqueeze(1)) * mask


def stfnet_transformer(n_feat: int, tr: StfNetTransformerDims) -> TransformerEncoder:
    """STF-Net's temporal branch: a Transformer encoder over the MFCC frames (recipe `transformer` block)."""
    if n_feat % tr.heads:
        raise ModelError(f"stfnet transformer: {n_feat} MFCC features are not divisible by {tr.heads} heads")
    return TransformerEncoder(
        n_feat, tr.heads, tr.ff_dim, tr.layers, tr.dropout, positional=tr.positional_encoding
    )


class SpatialCnn(nn.Module):
    """Conv 3x3 -> BatchNorm -> ReLU -> MaxPool -> Dropout blocks over a `[B, 1, C, T]` feature image.

    Frames beyond each clip's length are zeroed before every convolution; pooling floors lengths, so a
    valid output frame only ever sees valid input frames. Output: per-frame vectors `[B, T', channels * C']`.
    """

    def __init__(
        self,
        in_height: int,
        channels: list[int],
        freq_pools: list[int],
        time_pools: list[int],
        dropout: float,
    ) -> None:
        super().__init__()
        if not len(channels) == len(freq_pools) == len(time_pools):
            raise ModelError("stfnet cnn: channels, freq_pools and time_pools need the same length")
        self.time_pools = [int(p) for p in time_pools]
        self.blocks = nn.ModuleList()
        height, previous = in_height, 1
        for out_channels, fp, tp in zip(channels, freq_pools, time_pools):
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, out_channels, kernel_size=3, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                    nn.MaxPool2d(kernel_size=(fp, tp), stride=(fp, tp)),
                    nn.Dropout(dropout),
                )
            )
            height, previous = height // fp, out_channels
        if height < 1:
            raise ModelError(
                f"stfnet cnn: frequency pools {freq_pools} leave nothing of {in_height} features"
            )
        self.out_dim = previous * height

    def maps(self, image: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image `[B, 1, C, T]`, lengths `[B]` -> feature maps `[B, channels, C', T']`, lengths `[B]`."""
        x = image
        for block, pool in zip(self.blocks, self.time_pools):
            x = block(mask_time(x, lengths_to_mask(lengths, x.shape[3]), time_dim=3))
            lengths = torch.div(lengths, pool, rounding_mode="trunc")  # lengths >= 0: trunc == floor
        return x, lengths

    def forward(self, image: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image `[B, 1, C, T]`, lengths `[B]` -> features `[B, T', out_dim]`, lengths `[B]`."""
        x, lengths = self.maps(image, lengths)
        b, c, h, t = x.shape
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * h)
        return x, lengths


class StfNetAudioEncoder(nn.Module):
    """`audio_encoder`: MFCC map -> [CNN 1 | CNN 2 | Transformer] per frame at 1/4 of the MFCC frame rate."""

    def __init__(self, dims: StfNetDims) -> None:
        super().__init__()
        self.frontend = build_frontend(dims.frontend, dims.sample_rate)
        if self.frontend.kind != "mfcc":
            raise ModelError("stfnet reads an MFCC map: set frontend.kind to 'mfcc'")
        n_feat = self.frontend.out_dim
        cnn = dims.cnn
        self.time_reduction = 1
        for pool in cnn.time_pools:
            self.time_reduction *= pool
        self.norm = MaskedFeatureNorm(n_feat)
        self.cnns = nn.ModuleList(
            SpatialCnn(n_feat, list(cnn.channels), list(cnn.freq_pools), list(cnn.time_pools), cnn.dropout)
            for _ in range(cnn.branches)
        )
        self.positional = dims.transformer.positional_encoding
        self.transformer = stfnet_transformer(n_feat, dims.transformer)
        self.out_dim = sum(c.out_dim for c in self.cnns) + n_feat

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """MFCC framing, then time pooling by `time_reduction` with at least one frame per clip."""
        r = self.time_reduction
        return [*self.frontend.frame_layout(), (r, r, 0, 1)]

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]`, lengths `[B]` -> features `[B, F, out_dim]`, frame_lengths `[B]` (F = MFCC frames // 4)."""
        mfcc, mfcc_lengths = self.frontend(waveform, lengths)
        x = self.norm(mfcc, lengths_to_mask(mfcc_lengths, mfcc.shape[1]))  # [B, T, C], zero beyond lengths
        r = self.time_reduction
        # Pad r - 1 zero frames so even the shortest clip keeps one pooled frame (same for batch and single).
        x = F.pad(x, (0, 0, 0, r - 1))
        frame_lengths = torch.div(mfcc_lengths, r, rounding_mode="trunc").clamp_min(1)
        image = x.transpose(1, 2).unsqueeze(1)  # [B, 1, C, T + r - 1]
        branches = [cnn(image, mfcc_lengths)[0] for cnn in self.cnns]
        temporal = F.max_pool1d(x.transpose(1, 2), r, r).transpose(1, 2)  # [B, F, C]
        mask = lengths_to_mask(frame_lengths, temporal.shape[1])
        branches.append(self.transformer(temporal, mask))
        features = torch.cat(branches, dim=-1)
        return mask_time(features, mask), frame_lengths


class StfNetMapEncoder(nn.Module):
    """`audio_encoder` of the `paper` size: the fixed 40 x 282 MFCC map, the two CNNs flattened and the Transformer
    averaged over time, as the implementation; one "frame" per clip `[B, 1, 2 * 512 + 40]`, frame length 1."""

    def __init__(self, dims: StfNetMapDims) -> None:
        super().__init__()
        self.frontend = FixedMfccMap(dims.map, dims.frontend, dims.sample_rate)
        n_feat, frames = self.frontend.n_mfcc, self.frontend.frames
        self.scaler = MapScaler((n_feat, frames))
        cnn = dims.cnn
        time_pools = list(cnn.time_pools)
        self.cnns = nn.ModuleList(
            SpatialCnn(n_feat, list(cnn.channels), list(cnn.freq_pools), time_pools, cnn.dropout)
            for _ in range(cnn.branches)
        )
        cnn_frames = pooled_sizes(frames, time_pools)
        self.time_pool = dims.transformer.time_pool
        if cnn_frames < 1 or frames // self.time_pool < 1:
            raise ModelError(f"stfnet: time pools leave nothing of the {frames}-frame map")
        self.transformer = stfnet_transformer(n_feat, dims.transformer)
        self.out_dim = sum(c.out_dim * cnn_frames for c in self.cnns) + n_feat

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """One frame for every clip, whatever its length."""
        return [ONE_FRAME_STEP]

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]`, lengths `[B]` -> features `[B, 1, out_dim]`, frame_lengths `[B]` (all 1)."""
        image = self.scaler(self.frontend(waveform, lengths))  # [B, C, T], the whole window is valid
        full = torch.full_like(lengths, image.shape[2])
        # torch.flatten of [B, channels, C', T'] as the implementation: channel-major.
        spatial = [torch.flatten(cnn.maps(image.unsqueeze(1), full)[0], 1) for cnn in self.cnns]
        pooled = F.max_pool1d(image, self.time_pool, self.time_pool).transpose(1, 2)  # [B, T // 4, C]
        temporal = self.transformer(pooled, torch.ones_like(pooled[..., 0], dtype=torch.bool)).mean(dim=1)
        features = torch.cat([*spatial, temporal], dim=-1).unsqueeze(1)
        return features, torch.ones_like(lengths)


class StfNetFusionHead(nn.Module):
    """`fusion_head` of an audio-only model: masked mean over frames, then one FC to the classes."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """features `[B, F, D]`, frame_lengths `[B]` -> logits `[B, C]`."""
        return self.classifier(masked_mean(features, lengths_to_mask(frame_lengths, features.shape[1])))


class StfNetModel(SerModel):
    """Audio-only STFNet: the fixed-map encoder when the config has a `map` section (`paper`), else the
    variable-length one (`small`, the shipped checkpoint); the paper's AWGN augmentation in training.

    `awgn.mode`: "online" (each training clip gets noise with probability `awgn.probability`, default), "offline"
    (the paper: `awgn.copies` noisy copies of every training clip added to the data once, by the trainer through
    `offline_augmentation`) or "off". SNRs are drawn from `awgn.snr_db`, as integers when `awgn.integer_snr`.
    """

    name = "stfnet"

    def __init__(self, config: dict[str, Any], labels: list[str], vocab: CtcVocab | None) -> None:
        super().__init__(config, labels, vocab)
        self.dims = dims = stfnet_dims(config)
        self.audio_encoder = (
            StfNetMapEncoder(dims) if isinstance(dims, StfNetMapDims) else StfNetAudioEncoder(dims)
        )
        self.fusion_head = StfNetFusionHead(self.audio_encoder.out_dim, len(labels))
        awgn_config = dims.awgn
        self.awgn_mode = awgn_config.mode
        if self.awgn_mode not in AWGN_MODES:
            raise ModelError(f"stfnet awgn.mode must be 'online', 'offline' or 'off', got {self.awgn_mode!r}")
        self.awgn_probability = awgn_config.probability
        self.awgn_snr_db = awgn_config.snr_db
        self.awgn_copies = awgn_config.copies
        self.awgn_integer_snr = awgn_config.integer_snr

    def augment_waveform(
        self, waveform: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training-time AWGN ("online" mode): each clip gets noise with probability `awgn.probability` (default
        0.5: on average the share of noisy clips the paper's doubling gives) at an SNR in `awgn.snr_db` (default
        15-30 dB). Identity in eval mode and in the other modes. waveform `[B, S]`, lengths `[B]` -> `[B, S]`."""
        if not self.training or self.awgn_mode != "online" or self.awgn_probability <= 0.0:
            return waveform
        noisy = awgn(waveform, lengths, self.awgn_snr_db, generator)  # type: ignore[arg-type]
        chosen = (
            torch.rand(waveform.shape[0], generator=generator, device=waveform.device) < self.awgn_probability
        )
        return torch.where(chosen.unsqueeze(1), noisy, waveform)

    @property
    def offline_copies_per_clip(self) -> int:
        return self.awgn_copies if self.awgn_mode == "offline" else 0

    def offline_augmentation(self, waves: list[np.ndarray], seed: int) -> list[list[np.ndarray]]:
        """The noisy copies ("offline" mode) to add to the training clips once: `awgn.copies` per clip, in clip
        order (the paper: 2880 native + 2880 noisy maps); empty lists in the other modes."""
        if self.awgn_mode != "offline":
            return [[] for _ in waves]
        return awgn_copies(
            waves,
            copies=self.awgn_copies,
            snr_db=self.awgn_snr_db,
            integer_snr=self.awgn_integer_snr,
            seed=seed,
        )
