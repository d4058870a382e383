"""An x-vector branch (Snyder et al. 2018, "X-vectors: robust DNN embeddings for speaker recognition").

MSCNN-SPU-ATT appends x-vectors to its audio SPU vector; the paper extracts them with Kaldi's TDNN pre-trained
for speaker identification on VoxCeleb. No pre-trained x-vector extractor is available offline here, so this is
the x-vector network itself, trained jointly with the emotion loss:

- input: 24 log mel filterbanks (25 ms frames, 10 ms hop; HTK mel scale, 20-7600 Hz as Kaldi's VoxCeleb recipe),
  mean-normalised over a centred sliding window of 3 s (301 frames, clipped at the clip's edges);
- five frame-level TDNN layers with contexts [t-2, t+2], {t-2, t, t+2}, {t-3, t, t+3}, {t}, {t} (Conv1d with
  kernels 5, 3, 3, 1, 1 and dilations 1, 2, 3, 1, 1), 512, 512, 512, 512 and 1500 units, each ReLU then
  batch norm (masked: padding never enters the statistics);
- statistics pooling: mean and standard deviation over the clip's frames (3000-d);
- segment6, the affine layer whose output is the x-vector (512-d). segment7 and the speaker softmax exist only
  for the speaker-ID objective and are left out.

Deviations from Kaldi's extractor: no pre-training (so the embedding is a second emotion-trained acoustic
encoder with the x-vector architecture, not a speaker embedding), edgeser's front end (Hamming window, no
dither, no pre-emphasis, no energy VAD), zero padding at the clip edges instead of edge-frame replication, and
a sliding window clipped at the edges rather than shifted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import lengths_to_mask, masked_mean
from edgeser.modelling.blocks import mask_time, masked_std
from edgeser.modelling.dims import RecipeDims
from edgeser.modelling.frontend import LogMel, MaskedFeatureNorm


class SlidingMeanNorm(nn.Module):
    """Subtract from each frame the mean of the valid frames in a centred window of `window` frames.

    Two fixed box-filter convolutions (sums of features and of the mask), so padded batches equal single clips
    and the graph is plain Conv/Div/Sub. x `[B, T, D]`, mask `[B, T]` -> `[B, T, D]`, zero beyond the mask.
    """

    def __init__(self, dim: int, window: int = 301) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ModelError(f"x-vector cmn_window must be a positive odd frame count, got {window}")
        self.dim = dim
        self.half = window // 2
        self.register_buffer("ones", torch.ones(dim + 1, 1, window), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(x.dtype).unsqueeze(1)  # [B, 1, T]
        stacked = torch.cat([x.transpose(1, 2) * weights, weights], dim=1)  # [B, D + 1, T]
        sums = F.conv1d(stacked, self.ones, padding=self.half, groups=self.dim + 1)
        means = sums[:, : self.dim] / sums[:, self.dim :].clamp_min(1.0)
        return mask_time(x - means.transpose(1, 2), mask)


class TdnnLayer(nn.Module):
    """A frame-level TDNN layer: a dilated Conv1d over time ("same" length), ReLU, masked batch norm."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, dilation: int) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0 or dilation < 1:
            raise ModelError(
                f"x-vector TDNN contexts need odd kernels and dilations >= 1 (got {kernel}, {dilation})"
            )
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, dilation=dilation, padding=dilation * (kernel // 2))
        self.norm = MaskedFeatureNorm(out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x `[B, T, D]` zero beyond the mask -> `[B, T, out_dim]` zero beyond the mask."""
        y = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.norm(y, mask)


@dataclass(frozen=True, kw_only=True)
class XVectorDims(RecipeDims):
    """The `xvector` section of MSCNN-SPU-ATT's `paper` size: Kaldi's VoxCeleb x-vector sizes by default."""

    SECTION = "xvector"

    n_mels: int = 24
    fmin: float = 20.0
    fmax: float = 7600.0
    cmn_window: int = 301
    kernels: tuple[int, ...] = (5, 3, 3, 1, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 1, 1)
    channels: tuple[int, ...] = (512, 512, 512, 512, 1500)
    embedding_dim: int = 512


class XVectorBranch(nn.Module):
    """Power spectrum `[B, F, n_fft // 2 + 1]` (25 ms / 10 ms frames) + frame lengths -> x-vectors `[B, E]`.

    `config`: `n_mels` (24), `fmin` (20), `fmax` (7600), `cmn_window` (301 frames), `kernels` ([5, 3, 3, 1, 1]),
    `dilations` ([1, 2, 3, 1, 1]), `channels` ([512, 512, 512, 512, 1500]), `embedding_dim` (512).
    """

    def __init__(self, sample_rate: int, n_fft: int, config: XVectorDims | Mapping[str, Any]) -> None:
        super().__init__()
        xv = XVectorDims.of(config)
        n_mels = xv.n_mels
        self.fbank = LogMel(sample_rate, n_fft, n_mels, xv.fmin, xv.fmax, htk=True, log="ln", top_db=None)
        self.cmn = SlidingMeanNorm(n_mels, xv.cmn_window)
        kernels, dilations, channels = list(xv.kernels), list(xv.dilations), list(xv.channels)
        if not len(kernels) == len(dilations) == len(channels) or not channels:
            raise ModelError("x-vector kernels, dilations and channels need the same (non-zero) length")
        dims = [n_mels, *channels]
        self.layers = nn.ModuleList(
            TdnnLayer(dims[i], dims[i + 1], kernels[i], dilations[i]) for i in range(len(channels))
        )
        self.out_dim = xv.embedding_dim
        self.segment6 = nn.Linear(2 * channels[-1], self.out_dim)

    def forward(self, power: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """power `[B, F, K]`, frame_lengths `[B]` -> x-vectors `[B, embedding_dim]` (segment6's affine output)."""
        mask = lengths_to_mask(frame_lengths, power.shape[1])
        with torch.autocast(device_type=power.device.type, enabled=False):
            x = self.cmn(self.fbank(power.float(), frame_lengths), mask)
        for layer in self.layers:
            x = layer(x, mask)
        return self.segment6(torch.cat([masked_mean(x, mask), masked_std(x, mask)], dim=-1))
