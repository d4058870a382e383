"""Small length-aware building blocks shared by the from-scratch models (stfnet, mscnn_spu_att, saser).

Everything here takes explicit masks or lengths so a zero-padded batch gives the same per-clip values as
the clips run one by one, and is written with plain ONNX ops (MatMul, Softmax, Where, ReduceMax...):
attention masks use a large finite negative (-1e4) rather than -inf so fp16 exports stay finite.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import masked_mean

NEG_INF = -1e4  # finite "minus infinity" for masked scores and masked max pooling


def conv_out_lengths(lengths: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Valid output length of a conv/pool along time: `(L + 2p - k) // s + 1`, never below 0.

    The numerator is clamped at 0 first, so truncating division (a plain ONNX Div) is floor division.
    """
    numerator = (lengths + (2 * padding - kernel)).clamp_min(0)
    return torch.div(numerator, stride, rounding_mode="trunc") + 1


def mask_time(x: torch.Tensor, mask: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """Zero `x` beyond the valid steps; `mask` `[B, T]` is broadcast along `time_dim` of `x`."""
    shape = [1] * x.dim()
    shape[0] = mask.shape[0]
    shape[time_dim] = mask.shape[1]
    return x * mask.reshape(shape).to(x.dtype)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of `[B, T, D]` over valid steps; 0 for a clip with no valid step (an empty transcript)."""
    valid = mask.unsqueeze(-1)
    pooled = torch.where(valid, x, torch.full_like(x, NEG_INF)).amax(dim=1)
    any_valid = mask.to(x.dtype).sum(dim=1, keepdim=True).clamp_max(1.0)
    return pooled * any_valid


def masked_std(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standard deviation of `[B, T, D]` over valid steps (population form, floored by `eps` inside the root)."""
    mean = masked_mean(x, mask)
    centred = mask_time(x - mean.unsqueeze(1), mask)
    return torch.sqrt(masked_mean(centred * centred, mask) + eps)


def sinusoidal_positions(length_like: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal position encodings `[T, dim]` (Vaswani et al.) for the time axis of `length_like` `[B, T, ...]`.

    Computed on the fly from `arange(T)` so exported graphs take any length (no table to outgrow).
    """
    half = (dim + 1) // 2
    freqs = torch.exp(
        torch.arange(half, device=length_like.device, dtype=torch.float32) * (-math.log(10000.0) * 2.0 / dim)
    )
    positions = torch.arange(length_like.shape[1], device=length_like.device).to(torch.float32)
    angles = positions.unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)[:, :dim]
    return table.to(length_like.dtype)


class MaskedMultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention of queries over keys/values with a key padding mask.

    A query whose keys are all masked (an empty transcript) gets zero weights, hence a zero context.
    Written out (MatMul/Softmax, finite masking) so it exports to plain ONNX ops; `out_proj=False` gives
    the bare Q/K/V form of CmGI.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        dim: int,
        heads: int = 1,
        dropout: float = 0.0,
        out_proj: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ModelError(f"attention dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Linear(query_dim, dim)
        self.key = nn.Linear(key_dim, dim)
        self.value = nn.Linear(key_dim, dim)
        self.out = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """query `[B, Tq, Dq]`, key_value `[B, Tk, Dk]`, key_mask `[B, Tk]` bool (True = valid) -> `[B, Tq, dim]`."""
        q = self._split(self.query(query))
        k = self._split(self.key(key_value))
        v = self._split(self.value(key_value))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim**-0.5)  # [B, H, Tq, Tk]
        valid = key_mask[:, None, None, :]
        scores = scores.masked_fill(~valid, NEG_INF)
        weights = torch.softmax(scores, dim=-1) * valid.to(scores.dtype)
        out = torch.matmul(self.dropout(weights), v).transpose(1, 2)  # [B, Tq, H, dh]
        return self.out(out.reshape(out.shape[0], out.shape[1], self.heads * self.head_dim))


class TransformerEncoderLayer(nn.Module):
    """Post-norm Transformer encoder layer (Vaswani et al.): self-attention + ReLU feed-forward, residuals."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = MaskedMultiHeadAttention(dim, dim, dim, heads, dropout)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim)
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x `[B, T, D]`, mask `[B, T]` bool -> `[B, T, D]` (padded rows carry values; callers mask them)."""
        x = self.norm1(x + self.dropout(self.attention(x, x, mask)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, sinusoidal positions added to the input unless `positional=False`;
    output zero beyond lengths."""

    def __init__(
        self, dim: int, heads: int, ff_dim: int, layers: int, dropout: float, positional: bool = True
    ) -> None:
        super().__init__()
        self.dim = dim
        self.positional = positional
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x `[B, T, D]`, mask `[B, T]` bool -> `[B, T, D]`."""
        if self.positional:  # dropout on embeddings + positions, as in Vaswani et al.
            x = self.input_dropout(x + sinusoidal_positions(x, self.dim).unsqueeze(0))
        for layer in self.layers:
            x = layer(x, mask)
        return mask_time(x, mask)


class CtcHead(nn.Module):
    """`ctc_head` stage: dropout + FC on the frame features -> log-softmax over the CTC vocabulary.

    `leading=True` reads only the first `in_dim` feature columns (an encoder that appends utterance-level
    columns, such as mscnn's x-vector, keeps them out of the ASR head).
    """

    def __init__(self, in_dim: int, vocab_size: int, dropout: float = 0.0, leading: bool = False) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.leading = leading
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_dim, vocab_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features `[B, F, Da]` -> log_probs `[B, F, V]`."""
        if self.leading:
            features = features[..., : self.in_dim]
        return torch.log_softmax(self.proj(self.dropout(features)), dim=-1)
