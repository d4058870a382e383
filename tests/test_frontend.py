"""The waveform feature front ends: parity with librosa, batch safety, and ONNX export with dynamic shapes.

Tolerances are relative to each feature's dynamic range (max - min over the clip), since log-mel in dB
and MFCC c0 reach magnitudes of ~100: float32 rounding of the DFT conv shows up as ~1e-5 dB absolute.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeser.modelling.frontend import (
    Deltas,
    FeatureFrontend,
    MaskedFeatureNorm,
    PowerSpectrogram,
    build_frontend,
    dct_matrix,
    mel_filterbank,
)

librosa = pytest.importorskip("librosa")

SR = 16_000
LIBROSA_RTOL = 1e-4  # max |ours - librosa| / dynamic range (measured: ~2e-6)
BATCH_RTOL = 1e-5  # padded batch vs single clip, same measure (measured: <= 1e-6)
ONNX_RTOL = 1e-4  # onnxruntime vs torch, same measure (measured: ~3e-6)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Real-ish test audio: two tones (one amplitude-modulated) plus white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = (
        0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t)
        + 0.2 * np.sin(2 * np.pi * 1375 * t) * (1 + np.sin(2 * np.pi * 3 * t))
        + 0.05 * rng.standard_normal(t.size)
    )
    return y.astype(np.float32)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.ptp(ref), 1e-12))


def run(frontend: torch.nn.Module, y: np.ndarray) -> tuple[np.ndarray, int]:
    with torch.no_grad():
        feats, lengths = frontend(torch.from_numpy(y)[None], torch.tensor([y.size]))
    return feats[0].numpy(), int(lengths[0])


@pytest.mark.parametrize("n_mels", [40, 128])
@pytest.mark.parametrize("htk", [False, True])
def test_mel_filterbank_matches_librosa(n_mels: int, htk: bool) -> None:
    ours = mel_filterbank(SR, 1024, n_mels, htk=htk)
    ref = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=n_mels, htk=htk, dtype=np.float64)
    assert np.abs(ours - ref).max() < 1e-8


def test_dct_matrix_is_scipy_ortho_dct() -> None:
    scipy_fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(0).standard_normal((7, 40))
    assert np.allclose(x @ dct_matrix(40, 13).T, scipy_fft.dct(x, type=2, norm="ortho", axis=-1)[:, :13])


@pytest.mark.parametrize(
    ("n_fft", "win_length", "hop", "n_mels", "pad"),
    [(512, 400, 160, 40, 0), (1024, 512, 160, 128, 512), (400, 400, 160, 64, 100)],
)
def test_log_mel_matches_librosa_center_false(
    n_fft: int, win_length: int, hop: int, n_mels: int, pad: int
) -> None:
    y = signal(1.3)
    frontend = FeatureFrontend("log_mel", SR, n_fft, win_length, hop, "hamming", n_mels, top_db=None, pad=pad)
    ours, frames = run(frontend, y)
    mel = librosa.feature.melspectrogram(
        y=np.pad(y, pad),
        sr=SR,
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop,
        window="hamming",
        center=False,
        power=2.0,
        n_mels=n_mels,
        htk=False,
        norm="slaney",
    )
    ref = librosa.power_to_db(mel, top_db=None).T
    assert ours.shape == ref.shape and frames == ref.shape[0] == (y.size + 2 * pad - n_fft) // hop + 1
    assert rel_err(ours, ref) < LIBROSA_RTOL


def test_default_padding_is_librosa_center_with_zeros() -> None:
    y = signal(0.9, seed=1)
    ours, _ = run(FeatureFrontend("log_mel", n_fft=512, win_length=400, n_mels=64, top_db=80.0), y)
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=SR,
        n_fft=512,
        win_length=400,
        hop_length=160,
        window="hamming",
        center=True,
        pad_mode="constant",
        n_mels=64,
    )
    assert rel_err(ours, librosa.power_to_db(mel, top_db=80.0).T) < LIBROSA_RTOL


def test_natural_log_variant() -> None:
    y = signal(1.0)
    ours, _ = run(
        FeatureFrontend("log_mel", n_fft=512, win_length=400, n_mels=40, log="ln", top_db=None, pad=0), y
    )
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=512, win_length=400, hop_length=160, window="hamming", center=False, n_mels=40
    )
    assert rel_err(ours, np.log(np.maximum(mel, 1e-10)).T) < LIBROSA_RTOL


def test_mfcc_and_deltas_match_librosa() -> None:
    """MFCC as librosa.feature.mfcc(y=...) computes it (dB log-mel with top_db=80, ortho DCT-II), then deltas."""
    y = signal(1.3, seed=2)
    frontend = FeatureFrontend(
        "mfcc", SR, 512, 400, 160, "hamming", n_mels=64, n_mfcc=32, deltas=2, top_db=80.0, pad=0
    )
    ours, _ = run(frontend, y)
    mfcc = librosa.feature.mfcc(
        y=y,
        sr=SR,
        n_mfcc=32,
        n_fft=512,
        win_length=400,
        hop_length=160,
        window="hamming",
        center=False,
        n_mels=64,
    )
    parts = [mfcc, librosa.feature.delta(mfcc, width=9), librosa.feature.delta(mfcc, width=9, order=2)]
    assert ours.shape == (mfcc.shape[1], 96)
    for k, ref in enumerate(parts):
        assert rel_err(ours[:, 32 * k : 32 * (k + 1)], ref.T) < LIBROSA_RTOL, f"block {k}"


def test_deltas_per_clip_edges_in_a_batch() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 30, 5)).astype(np.float32)
    lengths = torch.tensor([30, 17])
    x[1, 17:] = 0.0
    with torch.no_grad():
        out = Deltas(order=2, width=9)(torch.from_numpy(x), lengths).numpy()
    for row, n in enumerate(lengths.tolist()):
        clip = x[row, :n].T
        ref = np.concatenate([clip, librosa.feature.delta(clip), librosa.feature.delta(clip, order=2)]).T
        assert np.abs(out[row, :n] - ref).max() < 1e-4
        assert not out[row, n:].any()


def batch_of(seconds: list[float]) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    clips = [signal(s, seed=i) for i, s in enumerate(seconds)]
    lengths = torch.tensor([c.size for c in clips])
    # Garbage beyond each length: the module must zero it itself.
    waveform = torch.randn(len(clips), int(lengths.max()), generator=torch.Generator().manual_seed(0))
    for row, clip in enumerate(clips):
        waveform[row, : clip.size] = torch.from_numpy(clip)
    return clips, waveform, lengths


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "log_mel", "n_mels": 64},
        {"kind": "mfcc", "n_mels": 64, "n_mfcc": 32, "deltas": 2},
        {"kind": "mfcc", "n_fft": 1024, "win_length": 512, "n_mels": 128, "n_mfcc": 40, "pad": 0},
    ],
)
def test_padded_batch_equals_single_clips(options: dict) -> None:
    frontend = build_frontend(options)
    clips, waveform, lengths = batch_of([0.7, 1.3, 2.0])
    with torch.no_grad():
        feats, frame_lengths = frontend(waveform, lengths)
    assert frame_lengths.tolist() == frontend.frame_lengths(lengths).tolist()
    for row, clip in enumerate(clips):
        single, n = run(frontend, clip)
        assert n == int(frame_lengths[row]) == single.shape[0]
        assert rel_err(feats[row, :n].numpy(), single) < BATCH_RTOL
        assert not feats[row, n:].any(), "frames beyond the clip must be zero"


def test_short_clip_still_has_a_frame() -> None:
    frontend = FeatureFrontend("mfcc", n_fft=512, win_length=400, n_mels=40, n_mfcc=13, deltas=2)
    with torch.no_grad():
        feats, frames = frontend(torch.zeros(2, 100), torch.tensor([100, 30]))
    assert feats.shape[1] >= 1 and frames.tolist() == [1, 1]
    assert torch.isfinite(feats).all()


def test_power_spectrogram_conv_is_the_dft() -> None:
    y = signal(0.5)
    spec = PowerSpectrogram(n_fft=512, win_length=400, hop_length=160, window="hann", pad=0)
    with torch.no_grad():
        power, _ = spec(torch.from_numpy(y)[None], torch.tensor([y.size]))
    ref = np.abs(librosa.stft(y, n_fft=512, win_length=400, hop_length=160, window="hann", center=False)) ** 2
    assert rel_err(power[0].numpy(), ref.T) < 1e-5


def test_masked_feature_norm_ignores_padding() -> None:
    norm = MaskedFeatureNorm(3, momentum=1.0)
    x = torch.tensor([[[1.0, 2, 3], [3, 4, 5], [100, 100, 100]]])
    mask = torch.tensor([[True, True, False]])
    out = norm(x, mask)
    assert torch.allclose(norm.running_mean, torch.tensor([2.0, 3, 4]))
    assert not out[0, 2].any()
    norm.eval()
    assert torch.allclose(norm(x[:, :2], mask[:, :2]), out[:, :2], atol=1e-6)


ALLOWED_OPS = {
    "Add", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "Div", "Equal", "Expand", "Gather",
    "GatherElements", "Less", "Log", "MatMul", "Max", "Min", "Mul", "Pad", "Range", "ReduceMax", "Reshape",
    "Shape", "Slice", "Sub", "Transpose", "Unsqueeze", "Where",
}  # fmt: skip


@pytest.mark.parametrize("kind", ["log_mel", "mfcc"])
def test_onnx_export_dynamic_batch_and_time(kind: str, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    frontend = FeatureFrontend(kind, n_mels=64, n_mfcc=32, deltas=2 if kind == "mfcc" else 0).eval()
    _, waveform, lengths = batch_of([0.7, 1.3, 2.0])
    path = tmp_path / "frontend.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            frontend, (waveform, lengths), str(path), input_names=["waveform", "lengths"],
            output_names=["features", "frame_lengths"], opset_version=17, dynamo=False,
            dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"},
                          "features": {0: "batch", 1: "frames"}, "frame_lengths": {0: "batch"}},
        )  # fmt: skip
    graph = onnx.load(str(path))
    ops = {node.op_type for node in graph.graph.node}
    assert ops <= ALLOWED_OPS, f"unexpected ops {ops - ALLOWED_OPS}"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Another batch size and length than traced with.
    _, waveform2, lengths2 = batch_of([1.1, 0.4])
    feats, frame_lengths = session.run(None, {"waveform": waveform2.numpy(), "lengths": lengths2.numpy()})
    with torch.no_grad():
        ref, ref_lengths = frontend(waveform2, lengths2)
    assert feats.shape == tuple(ref.shape)
    assert frame_lengths.tolist() == ref_lengths.tolist()
    assert rel_err(feats, ref.numpy()) < ONNX_RTOL


def test_front_end_stays_float32_under_autocast() -> None:
    _, waveform, lengths = batch_of([0.7, 1.3])
    frontend = FeatureFrontend("mfcc", n_mels=64, n_mfcc=32, deltas=2)
    with torch.no_grad():
        ref, _ = frontend(waveform, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, _ = frontend(waveform, lengths)
    assert feats.dtype == torch.float32 and torch.equal(feats, ref)
