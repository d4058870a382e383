"""`edgeser train`: one fold of a protocol, model selection on validation clips, one final evaluation.

The kept checkpoint is the final-stage epoch with the best validation UA; validation clips come from the
training side (`edgeser.data.protocols`). The evaluation clips are read once, after training, by the kept
model: they never choose anything.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from edgeser.checkpoint import load_checkpoint, save_checkpoint
from edgeser.data import load_corpus
from edgeser.data.protocols import DEFAULT_PROTOCOL, PAPER_PROTOCOL, ProtocolName, limited, make_split
from edgeser.errors import ModelError
from edgeser.files import atomic_dir, clean_stale_staging, write_json_atomic, write_text_atomic
from edgeser.modelling.base import SerModel
from edgeser.modelling.registry import build_model, load_recipe
from edgeser.progress import SILENT, STDERR, Progress
from edgeser.training.batches import Clip, TrainingLoss, batches, compute_loss, evaluate, load_clips
from edgeser.training.config import (
    TrainConfig,
    apply_stage,
    make_optimizer,
    plan_lr_lambda,
    stage_plan,
)
from edgeser.training.distributed import World, process_world, synchronise_norms, unsynchronised

STATE_DIR = "train_state"
METRICS_FILE = "metrics.jsonl"


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Denormal floats (quiet stretches of audio through the feature front end) run tens of times slower on x86:
    # flushing them to zero took a small stfnet epoch on TESS from about 300 s to 20 s on 2 cores.
    torch.set_flush_denormal(True)


def train(
    model_name: str,
    size: str,
    data_spec: str,
    fold_index: int,
    out_dir: Path,
    *,
    protocol: ProtocolName | Literal["paper"] = DEFAULT_PROTOCOL,
    seed: int = 0,
    device_name: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    progress: Progress = STDERR,
) -> dict[str, Any]:
    """Train one fold; returns the metrics written to `out_dir/checkpoint.json` (best, evaluation, history).

    Under torchrun every process runs this with the same arguments (`edgeser.training.distributed`): the
    recipe's batch size is the global batch, rank 0 writes and reports `progress`, every rank returns the same
    metrics."""
    with process_world(device_name) as world:
        return train_world(
            world,
            model_name,
            size,
            data_spec,
            fold_index,
            out_dir,
            protocol=protocol,
            seed=seed,
            resume=resume,
            overrides=overrides,
            model_overrides=model_overrides,
            limit=limit,
            progress=progress if world.main else SILENT,
        )


def train_world(
    world: World,
    model_name: str,
    size: str,
    data_spec: str,
    fold_index: int,
    out_dir: Path,
    *,
    protocol: ProtocolName | Literal["paper"],
    seed: int,
    resume: bool,
    overrides: dict[str, Any] | None,
    model_overrides: dict[str, Any] | None,
    limit: int | None,
    progress: Progress,
) -> dict[str, Any]:
    """`train` in one of the training processes (the only one without torchrun)."""
    device = world.device
    seed_everything(seed)
    recipe = load_recipe(model_name)
    config = TrainConfig.from_recipe(recipe, size, overrides or {})
    if protocol == PAPER_PROTOCOL:
        if not config.protocol:
            raise ModelError(
                f"{model_name}/{size}: the recipe names no paper protocol; choose one with --protocol"
            )
        protocol = config.protocol
    corpus = load_corpus(data_spec)
    split = make_split(corpus, protocol, fold_index, seed)
    if limit:
        split = limited(split, limit, seed)
    if not split.validation_ids:
        raise ModelError(f"{corpus.name} fold {fold_index}: no validation clips to select the model on")
    provenance = split.provenance(data_spec) | ({"limit": limit} if limit else {})
    model = build_model(model_name, size, corpus.labels, overrides=model_overrides).to(device)
    synchronise_norms(model, world)

    state_dir = out_dir / STATE_DIR
    start_epoch, best, history = 0, None, []
    plan = stage_plan(config)
    optimizer = make_optimizer(model, config)
    copies = model.offline_copies_per_clip
    steps_per_epoch = math.ceil(
        math.ceil(len(split.train_ids) * (1 + copies) / config.batch_size) / config.grad_accumulation
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, plan_lr_lambda(config, plan, steps_per_epoch))
    # Rank 0 decides for everyone (one answer even where the ranks' views of the folder could differ).
    start = world.broadcast(start_mode(out_dir, state_dir, resume) if world.main else None)
    if start.startswith("error:"):
        raise ModelError(start.removeprefix("error:"))
    if start == "resume":
        if not (state_dir / "state.json").is_file():
            raise ModelError(
                f"{state_dir}: rank {world.rank} cannot see the saved state; every process must see "
                "the output folder (one machine or a shared file system)"
            )
        start_epoch, best, history = restore_state(state_dir, model, optimizer, scheduler, provenance)
        if world.main:
            write_history(out_dir, history)  # the saved state is the truth, whatever happened after it
        progress(
            f"resuming at epoch {start_epoch + 1}/{len(plan)} (best validation UA so far "
            f"{best['ua'] if best else 0:.4f})"
        )
    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(
            out_dir
        )  # temporary files of a run killed mid-write (the state folder cleans its own)

    train_clips = load_clips(
        corpus.subset(split.train_ids),
        corpus.labels,
        f"loading {len(split.train_ids)} training clips",
        progress=progress,
    )
    train_clips += offline_copies(
        model, train_clips, seed
    )  # the paper's offline augmentation (training side only)
    validation_clips = load_clips(
        corpus.subset(split.validation_ids),
        corpus.labels,
        f"loading {len(split.validation_ids)} validation clips",
        progress=progress,
    )
    crop = config.crop_for(model.ctc_head is None and not model.uses_text)
    progress(
        f"{model_name}/{size} on {corpus.name}, {protocol} fold {split.index} ({split.held_out}): "
        f"{len(train_clips)} train, {len(validation_clips)} validation ({split.validation_note}), "
        f"{len(split.eval_ids)} evaluation; {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"device {device}" + (f" x {world.size} processes" if world.distributed else "") + f", crop {crop}"
    )
    if config.batch_size < world.size:
        progress(
            f"warning: batch size {config.batch_size} is smaller than the {world.size} processes: every process "
            "computes each batch whole (no speed-up); raise --batch-size or start fewer processes"
        )
    for epoch in range(start_epoch, len(plan)):
        stage = plan[epoch]
        entry = train_epoch(
            model,
            train_clips,
            config,
            device,
            stage,
            epoch,
            len(plan),
            seed,
            optimizer,
            scheduler,
            bucketed=crop == "none",
            world=world,
            progress=progress,
        )
        result = evaluate(
            model,
            validation_clips,
            batch_size=config.batch_size,
            text_source=config.text_source_eval,
            device=device,
            world=world,
        )
        entry["validation"] = {k: v for k, v in result.metrics.items() if k != "confusion"}
        history.append(entry)
        # Earlier stages (CmGI's acoustic phase) do not train the deployed heads: only the final
        # stage's epochs may become the kept checkpoint.
        eligible = plan[epoch] is plan[-1]
        improved = eligible and (best is None or better(result.metrics, best))
        cer_text = f"  CER {result.metrics['cer']:.3f}" if "cer" in result.metrics else ""
        progress(
            f"epoch {epoch + 1}: loss {entry['train']['loss']:.4f}  validation UA {result.metrics['ua']:.4f}  "
            f"WA {result.metrics['wa']:.4f}  loss {result.metrics['loss']:.4f}{cer_text}"
            f"  ({entry['seconds']} s){'  *best' if improved else ''}"
        )
        if improved:
            best = {**result.metrics, "epoch": epoch + 1}
        if world.main:  # one writer; the others wait until the epoch is on disk
            if improved:
                save_checkpoint(
                    model, out_dir, {"best": best, "history": history}, provenance, asdict(config)
                )
            save_state(state_dir, model, optimizer, scheduler, epoch + 1, best, history, provenance)
            write_history(out_dir, history)
        world.barrier()
    return final_evaluation(out_dir, corpus, split, config, best, history, world, progress)


def better(metrics: dict[str, Any], best: dict[str, Any]) -> bool:
    """Validation UA decides; at equal UA (it saturates at 1.0 on an easy validation set) the lower validation
    loss does. A best from an older run without a loss counts as infinitely lossy."""
    if metrics["ua"] != best["ua"]:
        return bool(metrics["ua"] > best["ua"])
    return bool(metrics.get("loss", float("inf")) < best.get("loss", float("inf")))


def start_mode(out_dir: Path, state_dir: Path, resume: bool) -> str:
    """How a run starts in `out_dir`: "resume", "fresh", or "error:MESSAGE" (the folder holds another run)."""
    if resume and (state_dir / "state.json").is_file():
        return "resume"
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        return f"error:{out_dir}: output folder is not empty; pass --resume to continue or choose another"
    return "fresh"


def offline_copies(model: SerModel, clips: list[Clip], seed: int) -> list[Clip]:
    """Noisy copies of the training clips where the model's recipe augments offline (STF-Net paper)."""
    if not model.offline_copies_per_clip:
        return []
    copies = model.offline_augmentation([c.audio for c in clips], seed)
    return [
        Clip(f"{c.id}#awgn{k}", wave, c.label, c.transcript, c.speaker)
        for c, waves in zip(clips, copies)
        for k, wave in enumerate(waves)
    ]


def train_epoch(
    model: SerModel,
    clips: list[Clip],
    config: TrainConfig,
    device: torch.device,
    stage: dict[str, Any],
    epoch: int,
    epochs: int,
    seed: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    bucketed: bool,
    world: World | None = None,
    progress: Progress = STDERR,
) -> dict[str, Any]:
    """One pass over the training clips under a progress bar (rank 0's); returns the history entry (mean
    losses, seconds).

    With several processes each rank trains on its slice of every global batch (`World.shard`) through
    DistributedDataParallel, and the epoch's mean losses are summed over the ranks."""
    world = world or World(device)
    apply_stage(model, stage)
    model.train()
    net = world.wrap(TrainingLoss(model, config))  # rebuilt every epoch: a stage may change what trains
    rng = np.random.default_rng([seed, epoch])
    started = time.perf_counter()
    totals: dict[str, float] = {}
    count = 0
    groups = list(batches(clips, config.batch_size, rng, bucketed=bucketed))
    with (progress if world.main else SILENT).bar(groups, f"epoch {epoch + 1}/{epochs}") as bar:
        optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(bar, start=1):
            step = index % config.grad_accumulation == 0 or index == len(groups)
            shard = world.shard(len(batch))
            # A rank's slice weighs its share of the global batch times the world (DDP averages over ranks); a
            # batch smaller than the world is computed whole everywhere, with local statistics, counted once.
            if shard is None:
                scale, owned = 1.0, len(batch) if world.main else 0
            else:
                scale, owned = (shard.stop - shard.start) * world.size / len(batch), shard.stop - shard.start
            with (
                nullcontext() if step or not world.distributed else net.no_sync(),
                unsynchronised(model) if shard is None else nullcontext(),
            ):
                loss, parts = compute_loss(
                    model,
                    batch,
                    rng,
                    config,
                    device,
                    stage,
                    shard=shard,
                    net=net,
                    forward_seed=world.forward_seed(seed, epoch, index),
                )
                (loss * (scale / config.grad_accumulation)).backward()
            if step:
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value * owned
            count += owned
    seconds = time.perf_counter() - started
    if world.distributed:
        gathered = world.gather((totals, count, seconds))
        totals = {key: sum(part[0][key] for part in gathered) for key in gathered[0][0]}
        count, seconds = sum(part[1] for part in gathered), max(part[2] for part in gathered)
    return {
        "epoch": epoch + 1,
        "stage": stage.get("name", "main"),
        "train": {k: v / count for k, v in totals.items()},
        "seconds": round(seconds, 1),
    }


def final_evaluation(
    out_dir: Path,
    corpus: Any,
    split: Any,
    config: TrainConfig,
    best: dict[str, Any] | None,
    history: list[dict[str, Any]],
    world: World,
    progress: Progress,
) -> dict[str, Any]:
    """The kept model on the evaluation clips, once; recorded in checkpoint.json beside the validation figures."""
    if best is None:
        raise ModelError(f"{out_dir}: no final-stage epoch ran, so no checkpoint was kept")
    model = load_checkpoint(out_dir).to(world.device)
    clips = load_clips(
        corpus.subset(split.eval_ids),
        corpus.labels,
        f"evaluating on {len(split.eval_ids)} clips",
        progress=progress,
    )
    result = evaluate(
        model,
        clips,
        batch_size=config.batch_size,
        text_source=config.text_source_eval,
        device=world.device,
        per_speaker=True,
        world=world,
    )
    evaluation = {**result.metrics, "epoch": best["epoch"], "text_source": config.text_source_eval}
    metrics = {"best": best, "evaluation": evaluation, "history": history}
    if world.main:
        info_path = out_dir / "checkpoint.json"
        info = json.loads(info_path.read_text(encoding="utf-8"))
        info["metrics"] = metrics
        write_json_atomic(info_path, info)
    world.barrier()
    progress(
        f"kept epoch {best['epoch']} (validation UA {best['ua']:.4f}); evaluation ({split.held_out}): "
        f"UA {evaluation['ua']:.4f} WA {evaluation['wa']:.4f}"
        + (f" CER {evaluation['cer']:.3f}" if "cer" in evaluation else "")
    )
    return metrics


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite `metrics.jsonl` (one epoch a line) atomically from the run's history."""
    write_text_atomic(out_dir / METRICS_FILE, "".join(json.dumps(entry) + "\n" for entry in history))


def save_state(
    state_dir: Path,
    model: SerModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    best: dict[str, Any] | None,
    history: list[dict[str, Any]],
    provenance: dict[str, Any],
) -> None:
    """Everything needed to resume after `epoch`, written atomically as one folder."""
    with atomic_dir(state_dir) as staging:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            | cuda_rng(model),
            staging / "state.pt",
        )
        write_json_atomic(
            staging / "state.json",
            {"epoch": epoch, "best": best, "history": history, "provenance": provenance},
        )


def restore_state(
    state_dir: Path,
    model: SerModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    provenance: dict[str, Any],
) -> tuple[int, dict[str, Any] | None, list[dict[str, Any]]]:
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    if meta["provenance"] != provenance:
        raise ModelError(
            f"{state_dir}: saved run used other data, fold or protocol; cannot resume with these settings"
        )
    payload = torch.load(state_dir / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    device = next(model.parameters()).device
    if "cuda_rng" in payload and device.type == "cuda":
        torch.cuda.set_rng_state(payload["cuda_rng"], device)
    return int(meta["epoch"]), meta["best"], meta["history"]


def cuda_rng(model: SerModel) -> dict[str, torch.Tensor]:
    """The CUDA generator state of the model's device (the waveform augmentation's stream on GPUs)."""
    device = next(model.parameters()).device
    return {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
