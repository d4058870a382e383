"""Per-stage export specs: input/output names, dtypes, dynamic axes and example inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def example_waveform(
    seconds: tuple[float, ...] = (1.3, 0.9), sample_rate: int = 16_000
) -> tuple[torch.Tensor, torch.Tensor]:
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


# Axis names of every contract tensor; None: a fixed size, taken from the traced example.
AXES: dict[str, list[str | None]] = {
    "waveform": ["batch", "samples"], "lengths": ["batch"],
    "features": ["batch", "frames", None], "frame_lengths": ["batch"], "log_probs": ["batch", "frames", None],
    "input_ids": ["batch", "tokens"], "attention_mask": ["batch", "tokens"],
    "token_features": ["batch", "tokens", None], "logits": ["batch", None],
}  # fmt: skip
EXAMPLE_TEXTS = ("say the word boot", "hello")


def tensor_spec(name: str, value: np.ndarray) -> TensorSpec:
    """A contract tensor's spec: its dtype and axes (named where dynamic, sizes from `value` where fixed)."""
    axes = AXES[name]
    shape: list[str | int] = [
        axis if axis is not None else int(value.shape[i]) for i, axis in enumerate(axes)
    ]
    return TensorSpec(name, str(value.dtype), shape)


def stage_exports(model: SerModel) -> list[StageExport]:
    """The stages of `model` (in pipeline order) with example inputs produced by running the upstream stages
    through the stage contract (example texts, not transcripts, feed the text encoder)."""
    from edgeser.modelling.runner import torch_runners

    model.eval()
    graph = model.stage_graph()
    waves, lengths = example_waveform()
    clips = [waves[row, : int(length)].numpy() for row, length in enumerate(lengths)]
    run = graph.run(torch_runners(model), clips, transcripts=list(EXAMPLE_TEXTS))
    values = {
        **run.values,
        **{name: value for outputs in run.raw.values() for name, value in outputs.items()},
    }
    return [
        StageExport(
            stage,
            getattr(model, stage),
            tuple(torch.from_numpy(values[name]) for name in graph.inputs[stage]),
            StageSpec(
                [tensor_spec(n, values[n]) for n in graph.inputs[stage]],
                [tensor_spec(n, values[n]) for n in graph.outputs[stage]],
            ),
        )
        for stage in graph.stages
    ]
