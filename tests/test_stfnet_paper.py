"""STF-Net's `paper` size against its paper and public implementation; the shipped `small` checkpoint unchanged."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeser.checkpoint import load_checkpoint
from edgeser.export.exporter import write_bundle
from edgeser.modelling.mfcc_map import FixedMfccMap, MapScaler, PolyphaseUpsampler
from edgeser.modelling.registry import build_model, load_recipe, resolve_size
from edgeser.modelling.train_hooks import awgn_copies
from edgeser.stages import apply_frame_layout
from edgeser.training import TrainConfig
from tests.test_models_small import clip

LABELS8 = ["surprised", "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust"]
SR = 16_000

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def batch_of(seconds: list[float]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    clips = [clip(s, i) for i, s in enumerate(seconds)]
    lengths = torch.tensor([c.numel() for c in clips])
    waveform = torch.zeros(len(clips), int(lengths.max()))
    for row, c in enumerate(clips):
        waveform[row, : c.numel()] = c
    return clips, waveform, lengths


def paper_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("stfnet", "paper", LABELS8)


def paper_map() -> FixedMfccMap:
    config = resolve_size(load_recipe("stfnet"), "paper")
    return FixedMfccMap(config["map"], config["frontend"], SR)


def band_limited(sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A sum of 40 sines below 6.5 kHz, slowly modulated: the same signal at any sample rate."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    freqs, amps, phases = rng.uniform(80, 6500, 40), rng.uniform(0.01, 0.1, 40), rng.uniform(0, 2 * np.pi, 40)
    tones = sum(a * np.sin(2 * np.pi * f * t + p) for f, a, p in zip(freqs, amps, phases))
    return (0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t)) * tones


def test_shipped_small_checkpoint_computes_as_before() -> None:
    """Logits of the first shipped stfnet checkpoint (EMO-DB fold 0, kept in tests/data) recorded before the
    paper size existed (same clips as test_models_small's batch); the small architecture and its weights'
    meaning must not move, so checkpoints trained earlier keep their meaning."""
    model = load_checkpoint(Path(__file__).parent / "data" / "stfnet-small-emodb-fold0")
    _, waveform, lengths = batch_of([0.7, 1.3, 2.0])
    with torch.no_grad():
        out = model(waveform, lengths)
    expected = torch.tensor([
        [-3.29315, 0.68871, -1.13896, 2.41397, -3.09093, 4.40981, 0.09753],
        [-0.64571, 5.23522, -3.10092, -0.46501, -3.21317, -2.04614, 3.41399],
        [-3.47882, 3.83612, 4.06588, -2.40710, -2.69481, -1.08181, 1.27696],
    ])  # fmt: skip
    assert out.frame_lengths.tolist() == [17, 32, 50]
    torch.testing.assert_close(out.logits, expected, atol=2e-4, rtol=0)


def test_paper_map_is_40_by_282_for_any_length() -> None:
    fixed = paper_map()
    assert (fixed.n_mfcc, fixed.frames, fixed.sample_rate) == (40, 282, 48_000)
    for samples in (0, 100, 8_000, 9_000, 56_000, 100_000):
        out = fixed(torch.zeros(1, max(samples, 1)), torch.tensor([samples]))
        assert out.shape == (1, 40, 282)


def test_paper_map_is_librosas_mfcc_of_the_implementation() -> None:
    """At 48 kHz the map is librosa.feature.mfcc with the implementation's settings (hop 512: 282 frames);
    from 16 kHz through the in-graph upsampler it matches that map of the same band-limited signal."""
    librosa = pytest.importorskip("librosa")
    options = {"sr": 48_000, "n_mfcc": 40, "n_fft": 1024, "win_length": 512, "window": "hamming",
               "hop_length": 512, "n_mels": 128, "fmax": 24_000, "pad_mode": "reflect"}  # fmt: skip
    fixed = paper_map()
    window48 = band_limited(48_000, 3.0)
    with torch.no_grad():
        direct = fixed.mfcc_of_window(torch.tensor(window48, dtype=torch.float32)[None])[0].numpy()
    reference = librosa.feature.mfcc(y=window48, **options)
    assert reference.shape == direct.shape == (40, 282)
    np.testing.assert_allclose(direct, reference, atol=5e-3)

    seconds = 4.1  # the window is [0.5 s, 3.5 s): no zero padding at the end
    clip16 = torch.tensor(band_limited(16_000, seconds), dtype=torch.float32)[None]
    with torch.no_grad():
        window = fixed.window(clip16, torch.tensor([clip16.shape[1]]))[0].numpy()
        resampled = fixed(clip16, torch.tensor([clip16.shape[1]]))[0].numpy()
    truth48 = band_limited(48_000, seconds)[24_000 : 24_000 + 144_000]
    assert window.shape == (144_000,)
    assert np.abs(window - truth48).max() < 2e-4  # the windowed-sinc upsampler is accurate in band
    np.testing.assert_allclose(resampled, librosa.feature.mfcc(y=truth48, **options), atol=0.05)


def test_paper_map_pads_short_clips_with_zeros_after_the_offset() -> None:
    fixed = paper_map()
    short = torch.tensor(band_limited(16_000, 1.0), dtype=torch.float32)[None]  # 0.5 s inside the window
    with torch.no_grad():
        window = fixed.window(short, torch.tensor([16_000]))[0]
    assert window[: 3 * 8_000].abs().max() > 0.01 and not window[3 * 8_000 :].any()


def test_upsampler_keeps_a_tone() -> None:
    up = PolyphaseUpsampler(3)
    n = np.arange(4_000 + 2 * up.half_width)
    x = np.sin(2 * np.pi * 1_000.0 * (n - up.half_width) / 16_000)
    y = up(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    expected = np.sin(2 * np.pi * 1_000.0 * np.arange(12_000) / 48_000)
    assert y.shape == (12_000,) and np.abs(y - expected).max() < 1e-4


def test_paper_network_is_the_implementations() -> None:
    """Two CNNs (1 -> 16 -> 32 -> 64, pools 2, 4, 4) flattened to 64 x 1 x 8, Transformer d 40 x 4 layers on the
    map pooled to 70 steps, FC 1064 -> 8: the implementation's 248,488 parameters."""
    model = paper_model()
    cnn = 2 * ((9 * 16 + 16 + 32) + (16 * 9 * 32 + 32 + 64) + (32 * 9 * 64 + 64 + 128))
    layer = (3 * 40 * 40 + 120) + (40 * 40 + 40) + (40 * 512 + 512) + (512 * 40 + 40) + 4 * 40
    assert sum(p.numel() for p in model.parameters()) == cnn + 4 * layer + (1064 * 8 + 8) == 248_488
    assert model.audio_encoder.out_dim == 1064
    clips, waveform, lengths = batch_of([0.4, 2.5, 4.0])
    model.train()
    with torch.no_grad():
        model(waveform, lengths)
    model.eval()
    with torch.no_grad():
        features, frame_lengths = model.audio_encoder(waveform, lengths)
        logits = model(waveform, lengths).logits
        for row, c in enumerate(clips):
            single = model(c[None], torch.tensor([c.numel()])).logits
            assert (single[0] - logits[row]).abs().max() < 1e-4
    assert features.shape == (3, 1, 1064) and frame_lengths.tolist() == [1, 1, 1]
    layout = model.audio_encoder.frame_layout()
    assert apply_frame_layout([0, 400, 48_000, 10**8], layout).tolist() == [1, 1, 1, 1]


def test_map_scaler_is_a_standard_scaler_fitted_on_every_map_seen() -> None:
    scaler = MapScaler((2, 3))
    batches = [torch.randn(4, 2, 3) * 5 + 2, torch.randn(7, 2, 3) * 0.5 - 1, torch.randn(1, 2, 3)]
    x = torch.zeros(1, 2, 3) + 4.0
    assert torch.equal(scaler.eval()(x), x)  # nothing seen: identity
    scaler.train()
    for b in batches:
        scaler(b)
    seen = torch.cat(batches).double()
    torch.testing.assert_close(scaler.running_mean, seen.mean(0).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaler.running_var, seen.var(0, unbiased=False).float(), atol=1e-5, rtol=1e-5)
    scaler.eval()
    before = scaler.running_mean.clone()
    out = scaler(batches[0])
    assert torch.equal(scaler.running_mean, before) and int(scaler.count) == 12
    torch.testing.assert_close(out, (batches[0] - before) / scaler.running_var.sqrt())


def test_paper_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    model = paper_model()
    _, waveform, lengths = batch_of([0.6, 3.9, 2.2])
    model.train()
    _, fit_waves, fit_lengths = batch_of([0.8 + 0.4 * i for i in range(8)])
    with torch.no_grad():
        model(fit_waves, fit_lengths)  # scaler statistics of 8 clips (not the identity)
    model.eval()
    bundle = write_bundle(model, tmp_path / "stfnet-paper", {"kind": "test"}).bundle
    encoder = ort.InferenceSession(
        str(bundle / "fp32" / "audio_encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    head = ort.InferenceSession(str(bundle / "fp32" / "fusion_head.onnx"), providers=["CPUExecutionProvider"])
    for wave, lens in [(waveform, lengths), (waveform[1:2, :5_000], torch.tensor([5_000]))]:
        features, frame_lengths = encoder.run(None, {"waveform": wave.numpy(), "lengths": lens.numpy()})
        logits = head.run(None, {"features": features, "frame_lengths": frame_lengths})[0]
        with torch.no_grad():
            ref_features, ref_lengths = model.audio_encoder(wave, lens)
            ref_logits = model.fusion_head(ref_features, ref_lengths)
        np.testing.assert_array_equal(frame_lengths, ref_lengths.numpy())
        np.testing.assert_allclose(features, ref_features.numpy(), atol=1e-3, rtol=1e-4)
        np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)


def test_offline_awgn_doubles_the_data_at_the_implementations_snrs() -> None:
    waves = [clip(s, i).numpy() for i, s in enumerate([0.5, 1.0, 1.5, 2.0])]
    copies = awgn_copies(waves, copies=1, snr_db=(15, 30), integer_snr=True, seed=3)
    assert [len(c) for c in copies] == [1, 1, 1, 1]
    for wave, (noisy,) in zip(waves, copies):
        assert noisy.dtype == np.float32 and noisy.shape == wave.shape
        noise = noisy.astype(np.float64) - wave
        snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise**2))
        assert (
            abs(snr - round(snr)) < 1e-3 and 15 <= round(snr) <= 29
        )  # exact, integer, np.random.randint(15, 30)
    again = awgn_copies(waves, copies=1, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(copies, again))

    model = paper_model()
    assert model.awgn_mode == "offline"
    extra = model.offline_augmentation(waves, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(copies, extra))
    model.train()
    batch = torch.from_numpy(np.stack([waves[0], waves[0]]))
    assert model.augment_waveform(batch, torch.tensor([8_000, 8_000])) is batch  # no noise on the fly
    online = build_model(
        "stfnet", "paper", LABELS8, overrides={"awgn": {"mode": "online", "probability": 1.0}}
    )
    assert online.offline_augmentation(waves, seed=0) == [[], [], [], []]


def test_paper_recipe_trains_as_the_paper() -> None:
    recipe = load_recipe("stfnet")
    config = TrainConfig.from_recipe(recipe, "paper", {})
    assert (
        config.optimizer,
        config.momentum,
        config.lr,
        config.batch_size,
        config.weight_decay,
        config.epochs,
    ) == ("sgd", 0.9, 0.01, 16, 1e-4, 200)
    assert config.warmup_ratio == 0.0 and config.grad_clip is None and config.lr_schedule == "constant"
    assert config.protocol == "stfnet-holdout"
    assert config.max_seconds >= 3.5  # the graph reads its own window: no random crop before it
    small = copy.deepcopy(recipe["sizes"]["small"])
    assert "map" not in small and small["cnn"]["time_pools"] == [2, 2, 1]
