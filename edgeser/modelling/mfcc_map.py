"""STF-Net's fixed MFCC map inside the graph: a 16 kHz clip -> the 3 s window its public code reads -> 48 kHz ->
the 40 x 282 MFCC map -> standardised per element.

The implementation the paper mirrors (IliaZenkov/transformer-cnn-emotion-recognition) loads RAVDESS at its
native 48 kHz with `librosa.load(duration=3, offset=0.5)`, zero-pads to exactly 144,000 samples, and takes
`librosa.feature.mfcc(sr=48000, n_mfcc=40, n_fft=1024, win_length=512, window="hamming", n_mels=128,
fmax=24000)` with librosa's default hop of 512 (centred frames, reflection padding in the librosa of that
time): 1 + 144000 // 512 = 282 frames. A StandardScaler fitted on the training maps (one mean and one
variance per map element, 40 x 282) then standardises them.

Here (edgeser feeds 16 kHz audio): samples [0.5 s, 3.5 s) of the clip (zero beyond its end) are taken at
16 kHz with enough context on both sides for the resampling filter, upsampled by 3 to 48 kHz by a
windowed-sinc polyphase filter (a Conv1d with fixed kernels: one output channel per phase), zeroed beyond
the clip's end, reflection-padded by n_fft // 2 and framed as above. Everything is a fixed linear map or an
element-wise op (Mul, Pad, Slice, Conv, Transpose, Reshape, Gather, MatMul, Log, ReduceMax), so the front end
exports to plain ONNX ops TensorRT runs. A 16 kHz source has nothing above 8 kHz: the mel bands above it sit
at the per-clip `top_db` floor, where RAVDESS at 48 kHz had energy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import lengths_to_mask
from edgeser.modelling.dims import RecipeDims
from edgeser.modelling.frontend import build_frontend

PadMode = Literal["reflect", "constant"]
PAD_MODES: tuple[PadMode, ...] = get_args(PadMode)

# A frame layout step that gives every clip exactly one frame: a "kernel" longer than any clip with a
# one-frame minimum (max((L - K) // 1 + 1, 1) == 1 for every L < K).
ONE_FRAME_STEP = (1 << 62, 1, 0, 1)


def sinc_phases(factor: int, half_width: int, rolloff: float, beta: float) -> np.ndarray:
    """Polyphase kernels `[factor, 2 * half_width + 1]` of a Kaiser-windowed sinc low-pass for upsampling by `factor`.

    Row p, tap i holds g(half_width - i + p / factor), g the low-pass impulse response in input samples with
    cut-off `rolloff / 2` cycles per input sample; each row sums to 1 (unit gain at DC for every phase).
    """
    taps = np.arange(2 * half_width + 1, dtype=np.float64)
    offsets = half_width - taps[None, :] + np.arange(factor, dtype=np.float64)[:, None] / factor
    cutoff = 0.5 * rolloff
    support = half_width + 1.0
    window = np.i0(beta * np.sqrt(np.clip(1.0 - (offsets / support) ** 2, 0.0, None))) / np.i0(beta)
    kernels = 2.0 * cutoff * np.sinc(2.0 * cutoff * offsets) * window
    return kernels / kernels.sum(axis=1, keepdims=True)


class PolyphaseUpsampler(nn.Module):
    """Upsample by an integer `factor`: `[B, S + 2 * half_width]` (with `half_width` context samples on each side)
    -> `[B, factor * S]`, one Conv1d with `factor` fixed output channels, interleaved."""

    def __init__(self, factor: int, half_width: int = 32, rolloff: float = 0.94, beta: float = 8.6) -> None:
        super().__init__()
        if factor < 2:
            raise ModelError(f"upsampling factor must be at least 2, got {factor}")
        self.factor = int(factor)
        self.half_width = int(half_width)
        kernel = torch.from_numpy(sinc_phases(factor, half_width, rolloff, beta)).float().unsqueeze(1)
        self.register_buffer("kernel", kernel, persistent=False)  # [factor, 1, taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[B, S + 2 * half_width]` -> `[B, factor * S]`; output j is the band-limited value at input time j / factor."""
        phases = torch.nn.functional.conv1d(x.unsqueeze(1), self.kernel)  # [B, factor, S]
        return phases.transpose(1, 2).reshape(x.shape[0], -1)


@dataclass(frozen=True, kw_only=True)
class MapDims(RecipeDims):
    """The `map` section of STF-Net's `paper` size (see `FixedMfccMap`); `sample_rate` None: the input's rate."""

    SECTION = "stfnet.map"

    sample_rate: int | None = None
    offset_s: float = 0.5
    duration_s: float = 3.0
    pad_mode: PadMode = "reflect"
    half_width: int = 32
    rolloff: float = 0.94
    beta: float = 8.6


class FixedMfccMap(nn.Module):
    """Waveform `[B, S]` (at `sample_rate`) + lengths -> the fixed `[B, n_mfcc, frames]` MFCC map (see module doc).

    `map_config`: `sample_rate` (the map's rate, an integer multiple of the input rate), `offset_s`,
    `duration_s` (the window read from each clip, zero-padded), `pad_mode` ("reflect" as the implementation's
    librosa, or "constant"), and the resampling filter's `half_width`, `rolloff`, `beta`.
    `frontend_config`: the MFCC front end at the map's rate (see `frontend.build_frontend`); its framing padding
    is done here.
    """

    def __init__(
        self, map_config: MapDims | Mapping[str, Any], frontend_config: dict[str, Any], sample_rate: int
    ) -> None:
        super().__init__()
        dims = MapDims.of(map_config)
        map_rate = dims.sample_rate if dims.sample_rate is not None else int(sample_rate)
        if map_rate % sample_rate:
            raise ModelError(
                f"stfnet map rate {map_rate} Hz is not a multiple of the input rate {sample_rate} Hz"
            )
        self.factor = map_rate // sample_rate
        self.offset = round(dims.offset_s * sample_rate)
        self.length = round(dims.duration_s * sample_rate)
        if self.offset < 0 or self.length <= 0:
            raise ModelError("stfnet map needs offset_s >= 0 and duration_s > 0")
        self.pad_mode = dims.pad_mode
        if self.pad_mode not in PAD_MODES:
            raise ModelError(f"stfnet map pad_mode must be 'reflect' or 'constant', got {self.pad_mode!r}")
        self.resample: PolyphaseUpsampler | None = None
        if self.factor > 1:
            self.resample = PolyphaseUpsampler(self.factor, dims.half_width, dims.rolloff, dims.beta)
        if "pad" in frontend_config:
            raise ModelError(
                "stfnet map: the framing padding is the map's (n_fft // 2, pad_mode); drop frontend.pad"
            )
        self.mfcc = build_frontend({**frontend_config, "pad": 0}, map_rate)
        if self.mfcc.kind != "mfcc":
            raise ModelError("stfnet reads an MFCC map: set frontend.kind to 'mfcc'")
        spectrogram = self.mfcc.spectrogram
        self.pad = spectrogram.n_fft // 2
        samples = self.length * self.factor
        if self.pad_mode == "reflect" and samples <= self.pad:
            raise ModelError(f"stfnet map window of {samples} samples is too short to reflect {self.pad}")
        self.frames = (samples + 2 * self.pad - spectrogram.n_fft) // spectrogram.hop_length + 1
        if self.frames < 1:
            raise ModelError(f"stfnet map window of {samples} samples is shorter than one frame")
        self.n_mfcc = self.mfcc.out_dim
        # numpy's "reflect" (the edge sample not repeated): x[pad], ..., x[1] | x | x[-2], ..., x[-pad - 1]
        left = np.arange(self.pad, 0, -1)
        right = np.arange(samples - 2, samples - 2 - self.pad, -1)
        self.register_buffer("reflect_left", torch.from_numpy(left.astype(np.int64)), persistent=False)
        self.register_buffer("reflect_right", torch.from_numpy(right.astype(np.int64)), persistent=False)

    @property
    def sample_rate(self) -> int:
        return self.mfcc.sample_rate

    def window(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waveform `[B, S]`, lengths `[B]` -> the clip's fixed window at the map's rate `[B, duration * map rate]`."""
        context = self.resample.half_width if self.resample is not None else 0
        x = waveform * lengths_to_mask(lengths, waveform.shape[1]).to(waveform.dtype)
        start = self.offset - context
        # Static pads and slice: zeros before a too-early start and after a too-short clip.
        x = nn.functional.pad(x, (max(-start, 0), self.offset + self.length + context))
        x = x[:, max(start, 0) : max(start, 0) + self.length + 2 * context]
        if self.resample is not None:
            x = self.resample(x)
        valid = (lengths - self.offset).clamp(0, self.length) * self.factor
        return x * lengths_to_mask(valid, x.shape[1]).to(x.dtype)

    def mfcc_of_window(self, window: torch.Tensor) -> torch.Tensor:
        """A fixed window `[B, N]` at the map's rate -> MFCC map `[B, n_mfcc, frames]` (librosa's centred framing)."""
        if self.pad_mode == "reflect":
            padded = torch.cat([window[:, self.reflect_left], window, window[:, self.reflect_right]], dim=1)
        else:
            padded = nn.functional.pad(window, (self.pad, self.pad))
        full = torch.full_like(padded[:, 0], padded.shape[1], dtype=torch.int64)
        features, _ = self.mfcc(padded, full)  # [B, frames, n_mfcc]
        return features.transpose(1, 2)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waveform `[B, S]`, lengths `[B]` -> `[B, n_mfcc, frames]` (40 x 282 for the paper), for any clip length."""
        return self.mfcc_of_window(self.window(waveform, lengths))


class MapScaler(nn.Module):
    """Standardise each element of a fixed `[B, *shape]` map with the training set's mean and variance.

    What the implementation's StandardScaler does, fitted while training instead of in a pass before it: in
    training mode each batch first joins exact pooled statistics (count, mean, population variance over every
    map seen, Chan et al.'s update) and is then scaled by them; evaluation applies the frozen statistics (a
    Sub and a Div in the exported graph). A zero variance scales by 1, as StandardScaler does.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        batch = x.shape[0]
        previous = int(self.count)
        total = previous + batch
        data = x.detach().double()
        mean_b = data.mean(dim=0)
        var_b = data.var(dim=0, unbiased=False)
        mean_a, var_a = self.running_mean.double(), self.running_var.double()
        if previous == 0:
            mean, var = mean_b, var_b
        else:
            delta = mean_b - mean_a
            mean = mean_a + delta * (batch / total)
            var = (var_a * previous + var_b * batch + delta * delta * (previous * batch / total)) / total
        self.running_mean.copy_(mean.float())
        self.running_var.copy_(var.float())
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[B, *shape]` -> standardised `[B, *shape]`."""
        if self.training:
            self._update(x)
        var = self.running_var
        scale = torch.where(var > 1e-12, torch.sqrt(var), torch.ones_like(var))
        return (x - self.running_mean) / scale


def pooled_sizes(size: int, pools: list[int]) -> int:
    """A length after successive floor-dividing max pools."""
    for pool in pools:
        size //= int(pool)
    return size
