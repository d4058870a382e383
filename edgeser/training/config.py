"""The resolved training schedule: the recipe's `training[size]`, command-line overrides, and what follows."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from edgeser.data.protocols import ProtocolName
from edgeser.errors import ModelError
from edgeser.text import TEXT_SOURCES, TextSource

Crop = Literal["auto", "random-window", "none"]
CROPS: tuple[Crop, ...] = get_args(Crop)
LrSchedule = Literal["cosine", "constant"]
LR_SCHEDULES: tuple[LrSchedule, ...] = get_args(LrSchedule)
LrScope = Literal["run", "stage"]
LR_SCOPES: tuple[LrScope, ...] = get_args(LrScope)
OptimizerName = Literal["adamw", "adam", "sgd"]
OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)


@dataclass
class TrainConfig:
    """The resolved training schedule (recipe's `training[size]` plus command-line overrides).

    What the papers do not specify and the trainer adds is switchable here and named in the recipes' notes:
    `warmup_ratio` + cosine decay (`lr_schedule: "cosine"`, or `"constant"`), gradient clipping at
    `grad_clip` (0 or null = off) and the optimiser's `weight_decay`. `l2_penalty` (`{"weight", "scope"}`) adds
    a paper's explicit L2 term to the loss (SASER); `protocol` names the paper's own split (`--protocol paper`).
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: OptimizerName = "adamw"  # adamw, adam or sgd (with `momentum`)
    momentum: float = 0.9
    grad_accumulation: int = 1  # batches per optimiser step (CmGI paper: batch 2 x 8)
    ctc_weight: float = 0.0
    lr_schedule: LrSchedule = "cosine"  # warm-up then cosine decay, or "constant"
    warmup_ratio: float = 0.05
    # "run": one warm-up + decay over all epochs; "stage": each recipe stage warms up and decays on its own
    # (a phase that trains a head to convergence before the next phase starts, CmGI edge)
    lr_schedule_scope: LrScope = "run"
    grad_clip: float | None = 5.0  # 0 or None: no clipping
    l2_penalty: dict[str, Any] | None = None
    # the paper's protocol (recipe); the CLI picks it with --protocol paper
    protocol: ProtocolName | None = None
    # Training clips longer than `max_seconds`: "random-window" cuts a random window (only where the target
    # follows: audio-only models); "none" keeps whole clips in length-bucketed batches; "auto" picks
    # "none" for models with a CTC head or a text branch (their transcript covers the whole clip).
    crop: Crop = "auto"
    max_seconds: float = 8.0
    text_source_eval: TextSource = "asr"  # "asr" (deployment: the model's own transcript) or "ground_truth"
    stages: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.text_source_eval = self.text_source_eval.replace("-", "_")
        if self.text_source_eval not in TEXT_SOURCES:
            raise ModelError(f"text_source_eval {self.text_source_eval!r}: choose asr or ground_truth")
        if self.crop not in CROPS:
            raise ModelError(f"crop {self.crop!r}: choose one of {', '.join(CROPS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ModelError(f"lr_schedule {self.lr_schedule!r}: choose cosine or constant")
        if self.lr_schedule_scope not in LR_SCOPES:
            raise ModelError(f"lr_schedule_scope {self.lr_schedule_scope!r}: choose run or stage")
        for name in ("epochs", "batch_size", "grad_accumulation"):
            if int(getattr(self, name)) < 1:
                raise ModelError(f"{name} must be >= 1, got {getattr(self, name)}")
        from edgeser.runtime.options import bounded

        bounded("batch_size", self.batch_size, "train_batch_size")

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], size: str, overrides: dict[str, Any]) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        merged = dict(recipe.get("training", {}).get(size, {}))
        if merged.get("stages") and "epochs" not in merged:
            merged["epochs"] = sum(int(stage["epochs"]) for stage in merged["stages"])
        merged.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**{k: v for k, v in merged.items() if k in known})
        config.extra = {k: v for k, v in merged.items() if k not in known}
        return config

    def crop_for(self, crops_safely: bool) -> Crop:
        """The crop policy in force for a model (`crops_safely`: its targets do not depend on the whole clip)."""
        if self.crop != "auto":
            return self.crop
        return "random-window" if crops_safely else "none"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser over all parameters (frozen ones get no gradient and are skipped)."""
    parameters = list(model.parameters())
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    raise ModelError(
        f"unknown optimizer {config.optimizer!r} in the recipe; use {', '.join(OPTIMIZERS[:-1])} or "
        f"{OPTIMIZERS[-1]}"
    )


def lr_lambda(total_steps: int, warmup_steps: int, schedule: LrSchedule = "cosine") -> Callable[[int], float]:
    def warmup_cosine(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return warmup_cosine if schedule == "cosine" else (lambda step: 1.0)


def plan_lr_lambda(
    config: TrainConfig, plan: list[dict[str, Any]], steps_per_epoch: int
) -> Callable[[int], float]:
    """The learning-rate factor per optimiser step for a run of `plan` epochs: one warm-up + decay over the
    run, or (`lr_schedule_scope: "stage"`) one per stretch of consecutive epochs of the same stage."""
    stretch: Callable[[dict[str, Any]], int] = (
        id if config.lr_schedule_scope == "stage" else (lambda stage: 0)
    )
    starts: list[int] = []  # first step of each stretch
    schedules: list[Callable[[int], float]] = []
    first = 0
    for _, epochs in itertools.groupby(plan, key=stretch):
        steps = len(list(epochs)) * steps_per_epoch
        starts.append(first)
        schedules.append(lr_lambda(steps, int(config.warmup_ratio * steps), config.lr_schedule))
        first += steps

    def factor(step: int) -> float:
        index = bisect.bisect_right(starts, step) - 1
        return schedules[index](step - starts[index])

    return factor


def stage_plan(config: TrainConfig) -> list[dict[str, Any]]:
    """Per-epoch stage settings: the recipe's `stages` (the one definition of a model's phases) or one stage."""
    if not config.stages:
        return [{"name": "main"}] * config.epochs
    planned = sum(int(stage["epochs"]) for stage in config.stages)
    plan: list[dict[str, Any]] = []
    for stage in config.stages:
        # An --epochs override rescales the stages, keeping each at least one epoch.
        share = (
            int(stage["epochs"])
            if planned == config.epochs
            else round(int(stage["epochs"]) * config.epochs / planned)
        )
        plan += [stage] * max(1, share)
    return plan


def apply_stage(model: torch.nn.Module, stage: dict[str, Any]) -> None:
    """Freeze what a stage freezes: `freeze` lists parameter-name prefixes; the rest trains, except what the
    model itself keeps frozen (a frozen pretrained text encoder, GloVe vectors): a stage never unfreezes it."""
    frozen = tuple(stage.get("freeze", []))
    names = [name for name, _ in model.named_parameters()]
    unknown = [prefix for prefix in frozen if not any(name.startswith(prefix) for name in names)]
    if unknown:
        raise ModelError(
            f"training stage {stage.get('name', '?')!r} freezes {unknown}, which name no parameter"
        )
    built = getattr(model, "_trainable_as_built", None)
    if built is None:  # the first stage applied sees the model as built
        built = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
        model._trainable_as_built = built
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(built[name] and not (frozen and name.startswith(frozen)))
