"""Training-time options the recipes name and the trainer calls: offline AWGN copies and an L2 penalty.

- `awgn_copies` (stfnet `paper`, `awgn.mode: "offline"`): the paper doubles RAVDESS once before training (2880
  native + 2880 noisy maps), as its public code does (`awgn_augmentation`: one SNR per clip drawn with
  `np.random.randint(15, 30)`, Gaussian noise scaled so its power over the clip is exactly the signal power
  times 10^(-SNR/10)). The trainer adds the copies to the training clips, never to evaluation clips; models
  expose it as `model.offline_augmentation(waves, seed)`.
- `l2_penalty` (saser `paper`, training `l2_penalty`): lambda * sum of squared weights added to the loss, the
  "regularization parameter" SASER lists beside Adam's weight decay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edgeser.errors import ModelError


def awgn_copies(
    waves: Sequence[np.ndarray],
    *,
    copies: int = 1,
    snr_db: Sequence[float] = (15.0, 30.0),
    integer_snr: bool = True,
    seed: int = 0,
) -> list[list[np.ndarray]]:
    """`copies` noisy versions of each clip (float32, same length), in clip order.

    One SNR per clip, uniform in `[snr_db[0], snr_db[1])` (integers when `integer_snr`, as the implementation
    draws them); each copy's noise is scaled to exactly that SNR over the clip's samples. Deterministic in `seed`.
    """
    if copies < 0:
        raise ModelError(f"awgn copies must be >= 0, got {copies}")
    low, high = float(snr_db[0]), float(snr_db[1])
    if not low < high:
        raise ModelError(f"awgn snr_db must be an increasing pair, got {list(snr_db)}")
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = []
    for wave in waves:
        signal = np.asarray(wave, dtype=np.float64)
        noise = rng.standard_normal((copies, signal.size))
        snr = float(rng.integers(int(low), int(high))) if integer_snr else float(rng.uniform(low, high))
        signal_power = float(np.mean(signal * signal)) if signal.size else 0.0
        noise_power = np.mean(noise * noise, axis=1) if signal.size else np.ones(copies)
        scale = np.sqrt(signal_power / np.maximum(noise_power, 1e-30) * 10.0 ** (-snr / 10.0))
        out.append([(signal + scale[k] * noise[k]).astype(np.float32) for k in range(copies)])
    return out


def output_layer(model: nn.Module) -> nn.Linear:
    """The fusion head's last Linear layer (the classifier producing the logits)."""
    head = getattr(model, "fusion_head", None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    if not linears:
        raise ModelError(f"{type(model).__name__}: no fusion_head Linear layer to regularise")
    return linears[-1]


L2Scope = Literal["classifier", "weights"]  # the output layer's weight matrix, or every trainable weight


def l2_penalty(model: nn.Module, spec: dict[str, Any] | None) -> torch.Tensor | None:
    """`weight * sum ||W||^2` over the weights `spec["scope"]` names, or None when `spec` is empty.

    `spec` is the training recipe's `l2_penalty`: `{"weight": lambda, "scope": "classifier" | "weights"}`;
    "classifier" is the output layer's weight matrix (SASER's loss term), "weights" every trainable weight
    matrix or kernel (parameters with two or more dimensions; biases, norms and frozen tables excluded).
    """
    if not spec or not float(spec.get("weight", 0.0)):
        return None
    scope: L2Scope = spec.get("scope", "classifier")
    if scope == "classifier":
        parameters = [output_layer(model).weight]
    elif scope == "weights":
        parameters = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    else:
        raise ModelError(f"l2_penalty scope must be 'classifier' or 'weights', got {scope!r}")
    return float(spec["weight"]) * sum(p.float().pow(2).sum() for p in parameters)
