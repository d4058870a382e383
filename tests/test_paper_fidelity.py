"""Paper-size fidelity of cmgi, gcf2net, mscnn_spu_att and saser: gate order, model size, x-vectors, GloVe, the
SASER regularisation term and CNN depth, and each paper recipe's evaluation text."""

from __future__ import annotations

import hashlib

import pytest
import torch

from edgeser.modelling import words
from edgeser.modelling.cmgi import BOUNDED_GATE, LITERAL_GATE, CmgiFusionHead, StatisticsReadout
from edgeser.modelling.gcf2net import Gcf2NetFusionHead
from edgeser.modelling.registry import build_model, load_recipe, resolve_size
from edgeser.modelling.train_hooks import l2_penalty
from edgeser.modelling.xvector import XVectorBranch
from edgeser.stages import apply_frame_layout
from edgeser.text import CtcVocab
from edgeser.training import TrainConfig
from tests.test_models_small import LABELS, TEXTS, batch, tiny_overrides  # noqa: F401 (fixture)
from tests.test_models_transformer import _tiny_acoustic

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# sha256 of the package's words ("\n"-joined, file order) as the hand-written Parquet decoder read them before
# pyarrow replaced it: the new reader must return exactly the same list.
GLOVE_WORDS_SHA256 = {
    20_000: "a473c8d0924ac51cff4f96f094397f521574fff4b3b0ccb5308323ecfd50625a",
    400_000: "029a7168ebc71f71e23e1f6ae94967234a13dcd64717754746c171be20d31a77",
}


# ------------------------------------------------------------------------------------------------- cmgi


def test_cmgi_gate_is_bounded_by_default_and_the_literal_order_is_selectable() -> None:
    torch.manual_seed(0)
    s, c = torch.randn(2, 9, 16) * 4, torch.randn(2, 9, 16) * 4
    bounded = CmgiFusionHead(16, 16, 4, 16, gate=BOUNDED_GATE)
    g = bounded.gate_values(s, c, bounded.audio_gate)
    assert ((g > 0) & (g < 1)).all()
    literal = CmgiFusionHead(16, 16, 4, 16, gate=LITERAL_GATE)
    literal.load_state_dict(bounded.state_dict())
    with torch.no_grad():
        literal.audio_gate.weight.mul_(8.0)  # an affine map of sigmoids: nothing keeps it in (0, 1)
    g = literal.gate_values(s, c, literal.audio_gate)
    assert (g < 0).any() and (g > 1).any()
    for size in ("paper", "small"):
        assert resolve_size(load_recipe("cmgi"), size)["fusion"]["gate"] == BOUNDED_GATE


def test_statistics_readout_is_a_linear_probe_of_standardised_frame_statistics() -> None:
    """Training merges every batch into the exact mean and variance of all clips seen (never a batch's own);
    evaluation: logits = W ((mean, std over valid frames) - that mean) / sqrt(that variance + eps) + b, blind
    to padding and to which batch a clip came in."""
    import numpy as np

    torch.manual_seed(0)
    readout = StatisticsReadout(6, 3, dropout=0.0)
    lengths = [7, 4, 6, 2, 5]
    features = torch.randn(5, 7, 6) * torch.linspace(0.5, 3.0, 6) + torch.arange(5.0)[:, None, None]
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    padded = features.clone()
    padded[1, 4:] = 1e3  # beyond the clip: must not count
    readout.train()
    for rows in ([0, 1], [2], [3, 4]):  # uneven batches, one of a single clip, each from its own part
        readout(padded[rows], mask[rows])
    stats = []
    for row, n in enumerate(lengths):
        x = features[row, :n].double().numpy()
        stats.append(np.concatenate([x.mean(axis=0), np.sqrt(x.var(axis=0) + 1e-5)]))
    table = np.stack(stats)
    np.testing.assert_allclose(readout.mean.numpy(), table.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(readout.var.numpy(), table.var(axis=0), rtol=1e-4, atol=1e-5)
    assert float(readout.count) == 5
    readout.eval()
    got = readout(padded, mask).detach().numpy()
    z = (table - table.mean(axis=0)) / np.sqrt(table.var(axis=0) + readout.eps)
    weight = readout.classifier.weight.double().detach().numpy()
    want = z @ weight.T + readout.classifier.bias.double().detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(readout(padded[3:4], mask[3:4]).detach().numpy(), got[3:4], atol=1e-5)
    assert float(readout.count) == 5  # evaluation leaves the statistics alone


def test_cmgi_statistics_path_adds_its_logits_to_the_gated_fusion() -> None:
    torch.manual_seed(0)
    head = CmgiFusionHead(12, 8, 3, 8, gate=BOUNDED_GATE, statistics=True).eval()
    features, frames = torch.randn(2, 5, 12), torch.tensor([5, 3])
    tokens, attention = torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    fused = head(features, frames, tokens, attention)
    assert head.statistics is not None
    alone = head.statistics(features, torch.arange(5)[None] < frames[:, None])
    head.statistics = None
    assert torch.allclose(fused, head(features, frames, tokens, attention) + alone, atol=1e-6)
    assert CmgiFusionHead(12, 8, 3, 8).statistics is None  # a config without the field: no read-out


def test_cmgi_config_without_gate_rebuilds_the_literal_order_and_records_it() -> None:
    """Checkpoints saved before the option existed (no `fusion.gate`) were trained with Eq. 6 as printed."""
    fusion = {k: v for k, v in resolve_size(load_recipe("cmgi"), "small")["fusion"].items() if k != "gate"}
    overrides = {"acoustic": _tiny_acoustic("hubert"), "fusion": {**fusion, "dim": 32}}
    old = build_model("cmgi", "small", LABELS, CtcVocab(), overrides=overrides)
    assert old.fusion_head.gate == LITERAL_GATE and old.config["fusion"]["gate"] == LITERAL_GATE
    with pytest.raises(ValueError, match="fusion.gate"):
        CmgiFusionHead(8, 8, 2, 8, gate="sigmoid")


# ---------------------------------------------------------------------------------------------- gcf2net


def test_gcf2net_paper_fusion_head_size_and_the_papers_figure() -> None:
    """The arithmetic in gcf2net.py: 27,235,588 built as described; the paper's 128.63 MiB of float32 is
    33.72 M; gMLP's dense mixing over the reported 267 positions would add 22,404, far from the 6.46 M gap."""
    head = Gcf2NetFusionHead(768, 768, 4, **{k: v for k, v in resolve_size(load_recipe("gcf2net"), "paper")[
        "fusion"].items() if k != "ctc_dropout"})  # fmt: skip
    count = sum(p.numel() for p in head.parameters())
    block = sum(p.numel() for p in head.audio_blocks[0].parameters())
    assert block == 4 * (768 * 768 + 768) + (768 * 768 + 768) + 2 * 768
    assert (
        count
        == 8 * block + sum(p.numel() for p in head.global_aware.parameters()) + 768 * 4 + 4
        == 27_235_588
    )
    reported = 128.63 * 2**20 / 4
    assert (245 + 22) * 768 * 4 / 2**20 == pytest.approx(0.78, abs=0.005)  # the paper's input size: MiB
    dense_minus_conv = (267 * 267 + 267) - sum(p.numel() for p in head.global_aware.conv.parameters())
    ctc = 768 * len(CtcVocab()) + len(CtcVocab())
    assert dense_minus_conv == 22_404 and reported - count - ctc == pytest.approx(6.459e6, rel=1e-3)


# ---------------------------------------------------------------------------------------------- mscnn


def mscnn_with_xvector() -> torch.nn.Module:
    overrides = tiny_overrides("mscnn_spu_att")
    overrides["xvector"] = {"channels": [16, 16, 16, 16, 24], "embedding_dim": 8, "cmn_window": 51}
    torch.manual_seed(0)
    return build_model("mscnn_spu_att", "small", LABELS, overrides=overrides)


def test_mscnn_paper_xvector_is_the_x_vector_network() -> None:
    config = resolve_size(load_recipe("mscnn_spu_att"), "paper")["xvector"]
    branch = XVectorBranch(16_000, 512, config)
    frame = [24 * 5, 512 * 3, 512 * 3, 512, 512]
    widths = [512, 512, 512, 512, 1500]
    expected = sum(i * o + o + 2 * o for i, o in zip(frame, widths)) + 3000 * 512 + 512  # + segment6
    assert sum(p.numel() for p in branch.parameters()) == expected == 4_211_604
    assert branch.out_dim == 512 and "xvector" not in resolve_size(load_recipe("mscnn_spu_att"), "small")


def test_mscnn_xvector_reaches_the_classifier_and_is_batch_safe(batch) -> None:  # noqa: F811
    clips, waveform, lengths = batch
    model = mscnn_with_xvector()
    maps_dim = model.audio_encoder.maps_dim
    assert model.audio_encoder.out_dim == maps_dim + 8 and model.ctc_head.proj.in_features == maps_dim
    ids, mask = model.tokenize(TEXTS)
    model.train()
    with torch.no_grad():
        model(waveform, lengths, ids, mask)
    model.eval()
    with torch.no_grad():
        out = model(waveform, lengths, ids, mask)
        features, frame_lengths = model.audio_encoder(waveform, lengths)
    for row, c in enumerate(clips):
        frames, n_tokens = int(frame_lengths[row]), int(mask[row].sum())
        vectors = features[row, :, maps_dim:]
        assert (vectors[:frames] - vectors[0]).abs().max() == 0 and not vectors[frames:].any()
        with torch.no_grad():
            single = model(
                c[None], lengths[row : row + 1], ids[row : row + 1, :n_tokens], mask[row : row + 1, :n_tokens]
            )
        assert (single.logits[0] - out.logits[row]).abs().max() < 1e-4
        assert (single.ctc_log_probs[0, :frames] - out.ctc_log_probs[row, :frames]).abs().max() < 1e-4
    with torch.no_grad():
        model.audio_encoder.xvector.segment6.weight.zero_()
        model.audio_encoder.xvector.segment6.bias.fill_(3.0)
        changed = model(waveform, lengths, ids, mask)
    assert (changed.logits - out.logits).abs().max() > 1e-3  # the classifier reads the x-vector
    torch.testing.assert_close(changed.ctc_log_probs, out.ctc_log_probs)  # the ASR head does not


def test_glove_reader_returns_the_packages_words_and_vectors() -> None:
    words.glove_words.cache_clear()
    for count, digest in GLOVE_WORDS_SHA256.items():
        read = words.glove_words(count)
        assert len(read) == count and hashlib.sha256("\n".join(read).encode()).hexdigest() == digest
    vectors = words.glove_vectors(400_000)
    assert vectors.shape == (400_000, 50)
    index = {w: i for i, w in enumerate(words.glove_words(400_000))}
    torch.testing.assert_close(
        torch.tensor(vectors[index["the"], :3]), torch.tensor([0.418, 0.24968, -0.41242])
    )
    assert words.glove_words(5) == ("the", ",", ".", "of", "to")


def test_glove_embedding_dimension_is_a_recipe_field() -> None:
    for name in ("mscnn_spu_att", "saser"):
        assert resolve_size(load_recipe(name), "paper")["text"]["embedding_dim"] == 50
    with pytest.raises(ValueError, match="text.embedding_dim to 50"):
        words.WordEmbedding(["the"], {"embeddings": "glove", "top_words": 10, "embedding_dim": 300})


# ---------------------------------------------------------------------------------------------- saser


def test_saser_regularisation_term() -> None:
    torch.manual_seed(0)
    model = build_model("saser", "small", LABELS, overrides=tiny_overrides("saser"))
    spec = load_recipe("saser")["training"]["paper"]["l2_penalty"]
    assert spec == {"weight": 0.01, "scope": "classifier"}
    weight = model.fusion_head.classifier.weight
    torch.testing.assert_close(l2_penalty(model, spec), 0.01 * weight.pow(2).sum())
    every = l2_penalty(model, {"weight": 0.5, "scope": "weights"})
    trainable = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    assert not model.text_encoder.embedding.embedding.weight.requires_grad  # frozen GloVe: not penalised
    torch.testing.assert_close(every, 0.5 * sum(p.pow(2).sum() for p in trainable))
    assert l2_penalty(model, None) is None and l2_penalty(model, {"weight": 0.0}) is None
    every.backward()
    assert weight.grad is not None and torch.allclose(weight.grad, weight.detach())  # d(0.5 w^2)/dw = w
    config = TrainConfig.from_recipe(load_recipe("saser"), "paper", {})
    assert config.l2_penalty == spec and config.weight_decay == 1e-3


def test_saser_emodb_size_has_two_cnn_modules(batch) -> None:  # noqa: F811
    _, waveform, lengths = batch
    recipe = load_recipe("saser")
    assert len(recipe["sizes"]["paper"]["cnn"]["channels"]) == 3
    emodb = resolve_size(recipe, "paper-emodb")
    assert emodb["cnn"]["channels"] == [32, 64]
    assert {k: v for k, v in emodb.items() if k != "cnn"} == {
        k: v for k, v in resolve_size(recipe, "paper").items() if k != "cnn"
    }
    assert recipe["training"]["paper-emodb"]["l2_penalty"] == recipe["training"]["paper"]["l2_penalty"]
    small = resolve_size(recipe, "small")
    overrides = {**tiny_overrides("saser"), "cnn": {**small["cnn"], "channels": emodb["cnn"]["channels"][:2]}}
    model = build_model("saser", "small", LABELS, overrides=overrides).eval()
    assert len(model.audio_encoder.cnn.blocks) == 2 and model.audio_encoder.stack == 4
    with torch.no_grad():
        _, frame_lengths = model.audio_encoder(waveform, lengths)
    layout = model.audio_encoder.frame_layout()
    assert layout[1:] == [(3, 2, 2, 0)] * 2  # one stride-2 step per CNN module
    assert frame_lengths.tolist() == apply_frame_layout(lengths.numpy(), layout).tolist()


# ------------------------------------------------------------------------------------ evaluation text


@pytest.mark.parametrize(("name", "expected"), [("mscnn_spu_att", "ground_truth"), ("saser", "asr")])
def test_paper_recipes_evaluate_on_the_text_of_the_papers_headline_row(name: str, expected: str) -> None:
    config = TrainConfig.from_recipe(load_recipe(name), "paper", {})
    assert config.text_source_eval == expected and config.extra["text_source_train"] == "ground_truth"
