"""Training on several processes (`torchrun`): the process group, sharded global batches, synchronised norms.

Under `torchrun --nproc-per-node N` (RANK, WORLD_SIZE and LOCAL_RANK set) `edgeser train` runs one process per
device with DistributedDataParallel, NCCL on GPUs (rank r on `cuda:LOCAL_RANK`) and gloo on CPUs. The N-process
run follows the 1-process run with the same seed and global batch, up to float rounding:

- The recipe's `batch_size` is the global batch. Every rank draws the same global batches and prepares each
  one whole (crop, padding to its longest clip, waveform augmentation), so the shared random streams stay in
  step with the 1-process run, then trains on its contiguous slice. The slice's loss is scaled by its share of
  the batch times N, so DDP's gradient average is the gradient of the global batch mean.
- Batch statistics (BatchNorm, `MaskedFeatureNorm`) are summed over every rank's slice: they are the global
  batch's statistics, in training and in the running estimates evaluation uses.
- A global batch with fewer clips than ranks (an epoch's last) is computed whole on every rank, unsynchronised.
- Randomness inside the model (dropout) comes from a generator per rank and batch, so ranks draw independent
  masks; they are not the masks the single process draws, so with dropout on the curves agree in distribution,
  not to float rounding.
- Evaluation deals the 1-process run's batches round-robin to the ranks and all-gathers the predictions: every
  rank computes the same metrics, so every rank keeps the same epoch.
- Rank 0 alone writes checkpoints, the resume state and `metrics.jsonl`; the others wait at barriers. The
  output folder must be visible to every rank (one machine, or a shared file system) for --resume.

Without torchrun nothing of this runs: no process group, no wrapper, the single-process code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.frontend import MaskedFeatureNorm
from edgeser.training.config import resolve_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True in a process torchrun started (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def main_process() -> bool:
    """True outside torchrun and on rank 0 under it: the process that writes and prints."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process, rank 0 of 1, without torchrun)."""

    device: torch.device
    rank: int = 0
    size: int = 1
    norm_group: Any = None  # the process group of the synchronised norms' statistics

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, count: int) -> slice | None:
        """This rank's contiguous slice of a global batch of `count` clips; None where the batch has fewer
        clips than ranks (every rank then computes it whole)."""
        if count < self.size:
            return None
        bounds = np.linspace(0, count, self.size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DistributedDataParallel when several processes train (the module itself otherwise).

        find_unused_parameters: a training stage may leave trainable parameters out of the loss (an unused CTC
        head, the text side in an audio-only stage); DDP then leaves their gradients unset, as one process does.
        """
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    def forward_seed(self, seed: int, epoch: int, batch: int) -> int | None:
        """Seed of this rank's in-model randomness (dropout) for one batch; None for one process (the global
        stream, as before)."""
        if not self.distributed:
            return None
        return int(np.random.SeedSequence([seed, epoch, batch, self.rank]).generate_state(1)[0])


@contextmanager
def process_world(device_name: str) -> Iterator[World]:
    """The training processes: under torchrun, join (or create) the process group, NCCL on CUDA, gloo on CPU,
    and give each rank its device; otherwise one process on `device_name`."""
    if not launched_by_torchrun():
        yield World(resolve_device(device_name))
        return
    import torch.distributed as dist

    rank, size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if size > 1 and device.index is not None:
            raise ModelError(
                f"device {device_name!r}: under torchrun each process uses cuda:LOCAL_RANK; "
                "pass --device cuda (or auto)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    elif dist.get_backend() != backend:
        raise ModelError(
            f"the process group uses {dist.get_backend()}, but training on {device.type} needs {backend}"
        )
    try:
        yield World(device, rank, size, dist.new_group(backend=backend) if size > 1 else None)
    finally:
        if created:
            dist.destroy_process_group()


class _GlobalSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the ranks' gradients (each rank's loss depends on every rank's part)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        torch.distributed.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        torch.distributed.all_reduce(total, group=ctx.group)
        return total, None


def _global_sum(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    return _GlobalSum.apply(tensor, group)  # type: ignore[no-any-return]


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (every rank's slice): torch's
    SyncBatchNorm runs on GPUs only, this one on any device and backend (two all-reduces per layer)."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, group: Any) -> None:
        super().__init__(
            source.num_features, source.eps, source.momentum, source.affine, source.track_running_stats
        )
        self.weight, self.bias = source.weight, source.bias  # the same Parameters (the optimiser holds them)
        self.running_mean, self.running_var = source.running_mean, source.running_var
        self.num_batches_tracked = source.num_batches_tracked
        self.group = group
        self.sync = True

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.sync):
            return super().forward(input)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
        total = _global_sum(local, self.group)
        count = total[-1].detach()
        mean = total[:-1] / count
        centred = x - mean.view(shape)
        var = _global_sum((centred * centred).sum(dims), self.group) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1  # type: ignore[operator]
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1.0), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


class SyncedMaskedFeatureNorm(MaskedFeatureNorm):
    """`MaskedFeatureNorm` whose training statistics cover the valid frames of every rank's slice."""

    def __init__(self, source: MaskedFeatureNorm, group: Any) -> None:
        super().__init__(source.weight.numel(), source.momentum, source.eps)
        self.weight, self.bias = source.weight, source.bias
        self.running_mean, self.running_var = source.running_mean, source.running_var
        self.num_batches_tracked = source.num_batches_tracked
        self.group = group
        self.sync = True

    def batch_moments(self, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.sync:
            return super().batch_moments(x, weights)
        total = _global_sum(torch.cat([(x * weights).sum(dim=(0, 1)), weights.sum().reshape(1)]), self.group)
        count = total[-1].detach().clamp_min(1.0)
        mean = total[:-1] / count
        var = _global_sum((((x - mean) ** 2) * weights).sum(dim=(0, 1)), self.group) / count
        return mean, var


def synchronise_norms(model: nn.Module, world: World) -> int:
    """Replace the batch-statistics layers of `model` by their synchronised twins (same parameters and
    buffers, so state dicts and the optimiser are unchanged); returns how many. Nothing for one process."""
    if not world.distributed:
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncedBatchNorm):
                setattr(parent, name, SyncedBatchNorm(child, world.norm_group))
            elif type(child) is MaskedFeatureNorm:
                setattr(parent, name, SyncedMaskedFeatureNorm(child, world.norm_group))
            else:
                continue
            replaced += 1
    return replaced


@contextmanager
def unsynchronised(model: nn.Module) -> Iterator[None]:
    """Local statistics while every rank computes the same whole batch (it is already the global batch)."""
    synced = [m for m in model.modules() if isinstance(m, (SyncedBatchNorm, SyncedMaskedFeatureNorm))]
    for module in synced:
        module.sync = False
    try:
        yield
    finally:
        for module in synced:
            module.sync = True


__all__ = [
    "SyncedBatchNorm",
    "SyncedMaskedFeatureNorm",
    "World",
    "launched_by_torchrun",
    "main_process",
    "process_world",
    "synchronise_norms",
    "unsynchronised",
]
