"""PyTorch stage runners: a model's stages behind the same `StageRunner` protocol as onnxruntime's.

The float reference of every check and the evaluation pass of training run through `StageGraph` with these.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from edgeser.modelling.base import SerModel


class TorchRunner:
    """One stage module: numpy feeds in (by name, in the contract's order), numpy outputs out, no gradients."""

    def __init__(
        self,
        module: nn.Module,
        input_names: tuple[str, ...],
        output_names: tuple[str, ...],
        device: torch.device | None = None,
    ) -> None:
        self.module = module
        self.input_names = input_names
        self.output_names = output_names
        self.device = device or torch.device("cpu")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            args = [
                torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
                for name in self.input_names
            ]
            outputs = self.module(*args)
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        result = {}
        for name, tensor in zip(self.output_names, outputs):
            tensor = tensor.detach()
            if tensor.dtype in (torch.bfloat16, torch.float16):
                tensor = tensor.float()
            result[name] = tensor.cpu().numpy()
        return result


def torch_runners(model: SerModel, device: torch.device | None = None) -> dict[str, TorchRunner]:
    """One `TorchRunner` per stage of `model` (put it in eval mode first)."""
    graph = model.stage_graph()
    device = device or next(model.parameters()).device
    return {
        stage: TorchRunner(getattr(model, stage), graph.inputs[stage], graph.outputs[stage], device)
        for stage in graph.stages
    }
