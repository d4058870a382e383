"""Export-friendly feature front ends: raw 16 kHz waveform -> power spectrum -> log-mel -> MFCC (+ deltas).

Every piece is a fixed linear map or an element-wise op, so the exported graph holds only Conv, MatMul,
Mul, Add, Log, Max/Clip, Transpose, Reshape, Pad, Gather (no STFT op, no complex numbers) and runs in
onnxruntime and TensorRT alike:

- STFT: a `Conv1d` whose fixed (buffer) kernels are the windowed real and imaginary DFT bases;
- power spectrum: the squares of the two halves added;
- mel filterbank: a MatMul with a Slaney-style matrix computed here in numpy (librosa's default:
  `htk=False, norm="slaney"`; no librosa at run time);
- log: `10 * log10(max(x, amin))` (dB, as librosa's `power_to_db`) or a floored natural log, with an
  optional per-clip `top_db` floor computed over valid frames only;
- MFCC: a MatMul with the orthonormal DCT-II matrix (as `scipy.fft.dct(type=2, norm="ortho")`);
- deltas: librosa.feature.delta (Savitzky-Golay, width 9, `mode="interp"`) as a fixed Conv2d plus a
  per-clip edge gather, so clip edges are handled per clip in a padded batch.

Framing is center=False-style over the waveform zero-padded by a fixed `pad` samples on each side
(default `n_fft // 2`, i.e. librosa's `center=True, pad_mode="constant"`): frame count
`(S + 2 * pad - n_fft) // hop + 1`, at least one frame for any clip when `pad >= n_fft // 2`. Zero padding
(never reflection) keeps it batch-safe. Samples beyond each clip's length are zeroed before framing and
frames beyond its frame length are zeroed in the output, so a zero-padded batch gives the same per-clip
features as the clips one by one.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import lengths_to_mask

# ------------------------------------------------------------------------------------------- numpy tables


def hz_to_mel(freqs: np.ndarray | float, htk: bool = False) -> np.ndarray:
    """Hz -> mel: HTK `2595 log10(1 + f/700)` or Slaney (linear below 1 kHz, logarithmic above)."""
    f = np.asarray(freqs, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    mels = f / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def mel_to_hz(mels: np.ndarray, htk: bool = False) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    m = np.asarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    slaney_norm: bool = True,
) -> np.ndarray:
    """Triangular mel filters `[n_mels, n_fft // 2 + 1]` (float64), as `librosa.filters.mel` computes them."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if slaney_norm:
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights


FrontendKind = Literal["log_mel", "mfcc"]
FRONTEND_KINDS: tuple[FrontendKind, ...] = get_args(FrontendKind)
LogScale = Literal["db", "ln"]
LOG_SCALES: tuple[LogScale, ...] = get_args(LogScale)
# hamming, hann (alias hanning) or rectangular (aliases ones, boxcar)
Window = Literal["hamming", "hann", "hanning", "rectangular", "ones", "boxcar"]


def window_function(name: Window, length: int) -> np.ndarray:
    """Periodic ("fftbins") window of `length` samples: hamming, hann or rectangular (ones)."""
    n = np.arange(length, dtype=np.float64)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(2.0 * np.pi * n / length)
    if name in ("hann", "hanning"):
        return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)
    if name in ("ones", "rectangular", "boxcar"):
        return np.ones(length)
    raise ModelError(f"unknown window {name!r}; choose hamming, hann or rectangular")


def dct_matrix(n_input: int, n_output: int) -> np.ndarray:
    """Orthonormal DCT-II `[n_output, n_input]`: row k is `scipy.fft.dct(eye, type=2, norm="ortho")[k]`."""
    n = np.arange(n_input, dtype=np.float64)
    k = np.arange(n_output, dtype=np.float64)[:, None]
    basis = np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * n_input)) * math.sqrt(2.0 / n_input)
    basis[0] *= 1.0 / math.sqrt(2.0)
    return basis


def savgol_derivative_weights(width: int, order: int) -> np.ndarray:
    """Correlation weights `w[-h..h]` of the `order`-th derivative of a degree-`order` least-squares fit.

    What `librosa.feature.delta(width, order)` (scipy `savgol_filter(deriv=order, polyorder=order)`)
    applies at every interior frame.
    """
    half = width // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    vandermonde = offsets[:, None] ** np.arange(order + 1)[None, :]
    return math.factorial(order) * np.linalg.pinv(vandermonde)[order]


# ----------------------------------------------------------------------------------------------- modules


class PowerSpectrogram(nn.Module):
    """Waveform `[B, S]` -> power spectrum `[B, F, n_fft // 2 + 1]` by a Conv1d with fixed windowed DFT kernels."""

    def __init__(
        self,
        n_fft: int = 512,
        win_length: int | None = None,
        hop_length: int = 160,
        window: Window = "hamming",
        pad: int | None = None,
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else int(win_length)
        if not 0 < win_length <= n_fft or hop_length <= 0:
            raise ModelError(
                f"front end needs 0 < win_length <= n_fft and hop > 0 (got {win_length}, {n_fft}, {hop_length})"
            )
        self.n_fft = int(n_fft)
        self.win_length = win_length
        self.hop_length = int(hop_length)
        self.pad = self.n_fft // 2 if pad is None else int(pad)
        self.n_bins = self.n_fft // 2 + 1
        # The window is centred in the n_fft frame (librosa's pad_center); the kernel spans only its support.
        self.support_start = (self.n_fft - win_length) // 2
        self.support_end_trim = self.n_fft - win_length - self.support_start
        positions = np.arange(self.support_start, self.support_start + win_length, dtype=np.float64)
        window_values = window_function(window, win_length)
        angles = 2.0 * np.pi * np.outer(np.arange(self.n_bins), positions) / self.n_fft
        kernel = np.concatenate([np.cos(angles), -np.sin(angles)], axis=0) * window_values[None, :]
        self.register_buffer("kernel", torch.from_numpy(kernel).float().unsqueeze(1), persistent=False)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames per clip: `(L + 2 * pad - n_fft) // hop + 1`, 0 where the padded clip is shorter than n_fft.

        Written as `max(L + 2 * pad - n_fft + hop, 0) // hop` so the (non-negative) division exports as a plain Div.
        """
        numerator = (lengths + (2 * self.pad - self.n_fft + self.hop_length)).clamp_min(0)
        return torch.div(numerator, self.hop_length, rounding_mode="trunc")

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]`, lengths `[B]` -> power `[B, F, n_fft // 2 + 1]`, frame_lengths `[B]` int64."""
        x = waveform * lengths_to_mask(lengths, waveform.shape[1]).to(waveform.dtype)
        left = self.pad - self.support_start
        right = self.pad - self.support_end_trim
        x = F.pad(x, (max(left, 0), max(right, 0)))
        if left < 0 or right < 0:
            x = x[:, max(-left, 0) : x.shape[1] - max(-right, 0)]
        spectrum = F.conv1d(x.unsqueeze(1), self.kernel, stride=self.hop_length)  # [B, 2K, F]
        squared = spectrum * spectrum
        power = (squared[:, : self.n_bins] + squared[:, self.n_bins :]).transpose(1, 2)  # [B, F, K]
        frame_lengths = self.frame_lengths(lengths)
        return power, frame_lengths


class LogMel(nn.Module):
    """Power spectrum `[B, F, K]` -> log-mel `[B, F, n_mels]`: MatMul with a fixed mel matrix, floored log.

    `log="db"`: `10 log10(max(mel, amin))` (librosa `power_to_db(ref=1.0)`); `log="ln"`: `ln(max(mel, amin))`.
    `top_db`: also floor each clip at its own maximum (over valid frames) minus `top_db`, as `power_to_db`
    does per spectrogram (librosa.feature.mfcc uses 80 dB); None disables it.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        n_mels: int,
        fmin: float = 0.0,
        fmax: float | None = None,
        htk: bool = False,
        log: LogScale = "db",
        amin: float = 1e-10,
        top_db: float | None = None,
    ) -> None:
        super().__init__()
        if log not in LOG_SCALES:
            raise ModelError(f"unknown log scale {log!r}; choose 'db' or 'ln'")
        fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk)
        self.register_buffer("mel_matrix", torch.from_numpy(fb.T.copy()).float(), persistent=False)  # [K, M]
        self.amin = float(amin)
        self.scale = 10.0 / math.log(10.0) if log == "db" else 1.0
        self.top_db = (
            None if top_db is None else float(top_db) * (1.0 if log == "db" else math.log(10.0) / 10.0)
        )

    def forward(self, power: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """power `[B, F, K]`, frame_lengths `[B]` -> log-mel `[B, F, M]` (zero beyond each clip's frames)."""
        mel = torch.matmul(power, self.mel_matrix)
        logmel = torch.log(torch.clamp(mel, min=self.amin)) * self.scale
        mask = lengths_to_mask(frame_lengths, logmel.shape[1]).unsqueeze(-1)
        if self.top_db is not None:
            peak = torch.where(mask, logmel, torch.full_like(logmel, -1e4)).amax(dim=(1, 2), keepdim=True)
            logmel = torch.maximum(logmel, peak - self.top_db)
        return logmel * mask.to(logmel.dtype)


class Deltas(nn.Module):
    """Append deltas up to `order` along features: `[B, T, C]` -> `[B, T, C * (order + 1)]`.

    Matches `librosa.feature.delta(x, width, order=k)` for each k: the interior is a fixed Savitzky-Golay
    correlation (a Conv2d with a `[1, width]` kernel); frames closer than `width // 2` to a clip's edge
    take the value of the nearest interior frame (what `mode="interp"` gives for polyorder == order),
    gathered per clip from its own length. Clips shorter than `width` frames get a defined but
    librosa-less value (librosa raises there).
    """

    def __init__(self, order: int = 2, width: int = 9) -> None:
        super().__init__()
        if width < 3 or width % 2 == 0 or order < 1:
            raise ModelError(
                f"deltas need an odd width >= 3 and order >= 1 (got width {width}, order {order})"
            )
        self.order = int(order)
        self.half = width // 2
        weights = np.stack([savgol_derivative_weights(width, k) for k in range(1, order + 1)])
        self.register_buffer("weights", torch.from_numpy(weights).float()[:, None, None, :], persistent=False)

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """x `[B, T, C]`, frame_lengths `[B]` -> `[B, T, C * (order + 1)]`: `[x, delta, delta2, ...]`."""
        h = self.half
        image = F.pad(x.transpose(1, 2).unsqueeze(1), (0, h))  # [B, 1, C, T + h]
        deltas = F.conv2d(image, self.weights, padding=(0, h))  # [B, order, C, T + h]
        steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # [1, T]
        last_interior = (frame_lengths - 1 - h).clamp_min(h).unsqueeze(1)  # [B, 1]
        index = torch.minimum(steps.clamp_min(h), last_interior)  # [B, T]
        index = index[:, None, None, :].expand(-1, deltas.shape[1], deltas.shape[2], -1)
        picked = torch.gather(deltas, 3, index)  # [B, order, C, T]
        picked = picked.permute(0, 3, 1, 2).reshape(x.shape[0], x.shape[1], self.order * x.shape[2])
        out = torch.cat([x, picked], dim=-1)
        return out * lengths_to_mask(frame_lengths, x.shape[1]).unsqueeze(-1).to(out.dtype)


class FeatureFrontend(nn.Module):
    """Waveform `[B, S]` + lengths -> features `[B, F, out_dim]` + frame lengths: log-mel or MFCC (+ deltas).

    `kind="log_mel"` gives `n_mels` features; `kind="mfcc"` gives `n_mfcc` (the DCT of the log-mel), and
    `deltas=k` appends k orders of librosa-style deltas.
    """

    def __init__(
        self,
        kind: FrontendKind = "log_mel",
        sample_rate: int = 16_000,
        n_fft: int = 512,
        win_length: int | None = None,
        hop_length: int = 160,
        window: Window = "hamming",
        n_mels: int = 64,
        fmin: float = 0.0,
        fmax: float | None = None,
        htk: bool = False,
        n_mfcc: int = 40,
        deltas: int = 0,
        delta_width: int = 9,
        log: LogScale = "db",
        amin: float = 1e-10,
        top_db: float | None = 80.0,
        pad: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in FRONTEND_KINDS:
            raise ModelError(f"unknown front end kind {kind!r}; choose 'log_mel' or 'mfcc'")
        self.kind = kind
        self.sample_rate = int(sample_rate)
        self.spectrogram = PowerSpectrogram(n_fft, win_length, hop_length, window, pad)
        self.log_mel = LogMel(sample_rate, n_fft, n_mels, fmin, fmax, htk, log, amin, top_db)
        base_dim = n_mels
        if kind == "mfcc":
            if not 0 < n_mfcc <= n_mels:
                raise ModelError(f"n_mfcc must be in 1..n_mels ({n_mels}), got {n_mfcc}")
            dct = dct_matrix(n_mels, n_mfcc)
            self.register_buffer("dct_matrix", torch.from_numpy(dct.T.copy()).float(), persistent=False)
            base_dim = n_mfcc
        self.deltas: nn.Module | None = Deltas(deltas, delta_width) if deltas > 0 else None
        self.out_dim = base_dim * (1 + max(int(deltas), 0))

    @property
    def hop_length(self) -> int:
        return self.spectrogram.hop_length

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames per clip for sample lengths `[B]` (the same formula the forward pass uses)."""
        return self.spectrogram.frame_lengths(lengths)

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """The framing as one (kernel, stride, total padding, min length) step (see `edgeser.bundle`)."""
        spec = self.spectrogram
        return [(spec.n_fft, spec.hop_length, 2 * spec.pad, 0)]

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]` float32, lengths `[B]` int64 -> features `[B, F, out_dim]`, frame_lengths `[B]`.

        Always float32, also under a training autocast: low-precision power spectra and mel sums lose the
        quiet bands (see docs/DESIGN.md: keep the whole front end out of reduced precision).
        """
        features, frame_lengths, _ = self.forward_with_power(waveform, lengths)
        return features, frame_lengths

    def forward_with_power(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward`, also returning the power spectrum `[B, F, n_fft // 2 + 1]` it was computed from."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power, frame_lengths = self.spectrogram(waveform.float(), lengths)
            features = self.features_from_power(power, frame_lengths)
        return features, frame_lengths, power

    def features_from_power(self, power: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """The rest of the front end on a power spectrum `[B, F, K]` (so a second feature set can share one STFT)."""
        features = self.log_mel(power, frame_lengths)
        if self.kind == "mfcc":
            features = torch.matmul(features, self.dct_matrix)  # zero rows stay zero
        if self.deltas is not None:
            features = self.deltas(features, frame_lengths)
        return features


def build_frontend(config: dict[str, Any], sample_rate: int = 16_000) -> FeatureFrontend:
    """A front end from a recipe's `frontend` dict (keys are `FeatureFrontend`'s arguments)."""
    known = set(inspect.signature(FeatureFrontend.__init__).parameters) - {"self"}
    unknown = set(config) - known
    if unknown:
        raise ModelError(f"unknown front end options: {', '.join(sorted(unknown))}")
    options = {"sample_rate": sample_rate, **config}
    return FeatureFrontend(**options)


class MaskedFeatureNorm(nn.Module):
    """Per-feature standardisation with running statistics, like BatchNorm1d but masked.

    Training uses the mean/variance of the valid frames of the batch (padding never enters the statistics)
    and updates running estimates; evaluation applies the running estimates, a fixed affine map, so the
    exported graph is a Sub/Mul/Add and padded batches equal single clips. Plays the role of the global
    feature scaler the papers' pipelines fit on the training set.
    """

    def __init__(self, dim: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x `[B, T, D]`, mask `[B, T]` bool -> normalised `[B, T, D]`, zero beyond the valid frames."""
        weights = mask.unsqueeze(-1).to(x.dtype)
        if self.training:
            mean, var = self.batch_moments(x, weights)
            with torch.no_grad():
                # The first batch sets the estimates outright (the initial 0/1 are arbitrary for dB features).
                momentum = 1.0 if int(self.num_batches_tracked) == 0 else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach(), momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        return ((x - mean) * scale + self.bias) * weights

    def batch_moments(self, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (biased) variance per feature over the valid frames (`weights` `[B, T, 1]`) of the batch."""
        count = weights.sum().clamp_min(1.0)
        mean = (x * weights).sum(dim=(0, 1)) / count
        var = (((x - mean) ** 2) * weights).sum(dim=(0, 1)) / count
        return mean, var
