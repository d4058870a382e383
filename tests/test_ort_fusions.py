"""Attention cores become onnxruntime's MultiHeadAttention in the CPU int8 graph and compute the same."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeser.quantize.ort_fusions import fuse_attention

torch = pytest.importorskip("torch")

WIDTH, HEADS, FRAMES = 32, 4, 9


class HFAttention(torch.nn.Module):  # type: ignore[misc]
    """Eager multi-head attention as transformers writes it (HubertAttention / BertSelfAttention)."""

    def __init__(self, divide: bool, explicit_heads: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(WIDTH, WIDTH) for _ in range(4))
        for layer in (self.q, self.k):  # large logits: a peaked softmax, where scale and mask matter
            torch.nn.init.normal_(layer.weight, std=1.0)
        self.divide, self.explicit_heads, self.size = divide, explicit_heads, WIDTH // HEADS

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = x.shape
        heads = HEADS if self.explicit_heads else -1

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, heads, self.size).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2)
        scores = scores / math.sqrt(self.size) if self.divide else scores * self.size**-0.5
        weights = torch.softmax(scores + mask, dim=-1)
        return self.o((weights @ v).transpose(1, 2).reshape(batch, frames, WIDTH))


def export(module: torch.nn.Module, path: Path) -> onnx.ModelProto:
    x, mask = torch.zeros(2, FRAMES, WIDTH), torch.zeros(2, 1, FRAMES, FRAMES)
    torch.onnx.export(
        module,
        (x, mask),
        str(path),
        input_names=["x", "mask"],
        output_names=["y"],
        opset_version=18,
        dynamic_axes={"x": {0: "b", 1: "t"}, "mask": {0: "b", 2: "t", 3: "t"}},
        dynamo=False,
    )
    return onnx.load(str(path))


def padded_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, FRAMES, WIDTH)).astype(np.float32)
    mask = np.zeros((2, 1, FRAMES, FRAMES), np.float32)
    mask[1, :, :, 6:] = np.finfo(
        np.float32
    ).min  # the second clip is 6 frames long: HF's additive padding mask
    return {"x": x, "mask": mask}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


@pytest.mark.parametrize("divide, explicit_heads", [(False, False), (True, True)])
def test_hf_attention_becomes_one_multi_head_attention(
    tmp_path: Path, divide: bool, explicit_heads: bool
) -> None:
    model = export(HFAttention(divide, explicit_heads).eval(), tmp_path / "attention.onnx")
    feeds = padded_inputs()
    before = run(model, feeds)
    made = fuse_attention(model)
    ops = [n.op_type for n in model.graph.node]
    assert len(made) == 1 and ops.count("MultiHeadAttention") == 1
    assert not {"Softmax", "Transpose", "Reshape"} & set(
        ops
    )  # the plumbing and the shape arithmetic are gone
    node = next(n for n in model.graph.node if n.op_type == "MultiHeadAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == HEADS and math.isclose(
        attrs["scale"], (WIDTH // HEADS) ** -0.5, rel_tol=1e-6
    )
    producer = {o: n for n in model.graph.node for o in n.output}
    assert (
        node.input[3] and producer[node.input[5]].input[0] == "mask"
    )  # biases moved in; mask: attention_bias
    after = run(model, feeds)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    # the situation is one where a wrong scale or a dropped mask would show
    unmasked = run(model, {**feeds, "mask": np.zeros_like(feeds["mask"])})
    assert np.abs(unmasked[1] - after[1]).max() > 1e-2
    for attribute in node.attribute:
        if attribute.name == "scale":
            attribute.f = 1.0
    assert np.abs(run(model, feeds) - before).max() > 1e-2


def test_graphs_without_the_pattern_are_left_alone() -> None:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=1),  # not over the keys
        helper.make_node("MatMul", ["p", "b"], ["y"], name="mix"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
    )
    model = helper.make_model(graph)
    assert fuse_attention(model) == []
    assert [n.name for n in model.graph.node] == ["scores", "softmax", "mix"]
    assert not any(o.domain == "com.microsoft" for o in model.opset_import)


def test_exported_encoders_keep_their_outputs(cmgi_bundle: Path) -> None:
    """Every attention layer of the tiny cmgi's HuBERT and BERT stages is fused, on padded batches."""
    audio = onnx.load(str(cmgi_bundle / "fp32" / "audio_encoder.onnx"))
    layers = sum(1 for n in audio.graph.node if n.op_type == "Softmax")
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.normal(size=(2, 16000))).astype(np.float32)
    feeds = {"waveform": waves, "lengths": np.array([16000, 9000], np.int64)}
    before = run(audio, feeds)
    assert len(fuse_attention(audio)) == layers > 0
    np.testing.assert_allclose(run(audio, feeds), before, rtol=1e-4, atol=1e-4)
    text = onnx.load(str(cmgi_bundle / "fp32" / "text_encoder.onnx"))
    layers = sum(1 for n in text.graph.node if n.op_type == "Softmax")
    ids = np.array([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0, 0]])
    feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    before = run(text, feeds)
    assert len(fuse_attention(text)) == layers > 0
    np.testing.assert_allclose(run(text, feeds), before, rtol=1e-4, atol=1e-4)


def test_whisper_attention_becomes_one_multi_head_attention(tmp_path: Path) -> None:
    """edgeser's Whisper attention (one packed q/k/v parameter, key mask `[B, 1, 1, T]`) exports in the layout the
    fusion matches, and computes what the packed projection does."""
    from edgeser.modelling.whisper import WhisperAttention

    torch.manual_seed(0)
    module = WhisperAttention(WIDTH, HEADS).eval()
    # large logits: a peaked softmax, where scale and mask matter
    torch.nn.init.normal_(module.qkv.weight, std=1.0)
    path = tmp_path / "whisper_attention.onnx"
    torch.onnx.export(
        module,
        (torch.zeros(2, FRAMES, WIDTH), torch.zeros(2, 1, 1, FRAMES)),
        str(path),
        input_names=["x", "mask"],
        output_names=["y"],
        opset_version=18,
        dynamic_axes={"x": {0: "b", 1: "t"}, "mask": {0: "b", 3: "t"}},
        dynamo=False,
    )
    model = onnx.load(str(path))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, FRAMES, WIDTH)).astype(np.float32)
    mask = np.zeros((2, 1, 1, FRAMES), np.float32)
    mask[1, ..., 6:] = -1e9  # the second clip is 6 frames long (WhisperEncoder.key_bias)
    feeds = {"x": x, "mask": mask}
    # the packed projection, by hand: [B, T, 3, N, H] -> q, k, v [B, N, T, H]
    size = WIDTH // HEADS
    packed = x @ module.qkv.weight.detach().numpy().T + module.qkv.bias.detach().numpy()
    q, k, v = packed.reshape(2, FRAMES, 3, HEADS, size).transpose(2, 0, 3, 1, 4)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size) + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    merged = (weights @ v).transpose(0, 2, 1, 3).reshape(2, FRAMES, WIDTH)
    expected = merged @ module.out.weight.detach().numpy().T + module.out.bias.detach().numpy()
    np.testing.assert_allclose(run(model, feeds), expected, rtol=1e-4, atol=1e-4)
    assert len(fuse_attention(model)) == 1
    assert [n.op_type for n in model.graph.node].count("MultiHeadAttention") == 1
    np.testing.assert_allclose(run(model, feeds), expected, rtol=1e-4, atol=1e-4)
