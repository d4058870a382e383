"""Per-stage export specs: input/output names, dtypes, dynamic axes and example inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeser.bundle import StageSpec, TensorSpec
from edgeser.modelling.base import SerModel


@dataclass(frozen=True)
class StageExport:
    """How one stage is traced: its module, example inputs and I/O description."""

    name: str
    module: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    spec: StageSpec

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.spec.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.spec.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for tensor in [*self.spec.inputs, *self.spec.outputs]:
            named = {i: d for i, d in enumerate(tensor.shape) if isinstance(d, str)}
            if named:
                axes[tensor.name] = named
        return axes


def example_waveform(seconds: tuple[float, ...] = (1.3, 0.9), sample_rate: int = 16_000) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded batch of noisy tones of different lengths (so traced shapes stay dynamic)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([int(s * sample_rate) for s in seconds], dtype=torch.long)
    waves = torch.zeros(len(seconds), int(lengths.max()))
    for row, length in enumerate(lengths.tolist()):
        t = torch.arange(length) / sample_rate
        waves[row, :length] = 0.3 * torch.sin(2 * torch.pi * 180 * (row + 1) * t) + 0.02 * torch.randn(
            length, generator=generator
        )
    return waves, lengths


@torch.no_grad()
def stage_exports(model: SerModel) -> list[StageExport]:
    """The stages of `model` (in pipeline order) with example inputs produced by the upstream stages."""
    model.eval()
    waves, lengths = example_waveform()
    features, frame_lengths = model.audio_encoder(waves, lengths)
    feature_dim = int(features.shape[-1])
    feat = TensorSpec("features", "float32", ["batch", "frames", feature_dim])
    flen = TensorSpec("frame_lengths", "int64", ["batch"])
    stages = [
        StageExport(
            "audio_encoder",
            model.audio_encoder,
            (waves, lengths),
            StageSpec(
                [TensorSpec("waveform", "float32", ["batch", "samples"]), TensorSpec("lengths", "int64", ["batch"])],
                [feat, flen],
            ),
        )
    ]
    if model.ctc_head is not None:
        stages.append(
            StageExport(
                "ctc_head",
                model.ctc_head,
                (features,),
                StageSpec([feat], [TensorSpec("log_probs", "float32", ["batch", "frames", len(model.vocab or [])])]),
            )
        )
    logits = TensorSpec("logits", "float32", ["batch", len(model.labels)])
    if model.text_encoder is None:
        stages.append(
            StageExport("fusion_head", model.fusion_head, (features, frame_lengths), StageSpec([feat, flen], [logits]))
        )
        return stages
    ids, mask = model.tokenize(["say the word boot", "hello"])
    token_features = model.text_encoder(ids, mask)
    token_dim = int(token_features.shape[-1])
    ids_spec = TensorSpec("input_ids", "int64", ["batch", "tokens"])
    mask_spec = TensorSpec("attention_mask", "int64", ["batch", "tokens"])
    tok = TensorSpec("token_features", "float32", ["batch", "tokens", token_dim])
    stages.append(StageExport("text_encoder", model.text_encoder, (ids, mask), StageSpec([ids_spec, mask_spec], [tok])))
    stages.append(
        StageExport(
            "fusion_head",
            model.fusion_head,
            (features, frame_lengths, token_features, mask),
            StageSpec([feat, flen, tok, mask_spec], [logits]),
        )
    )
    return stages
