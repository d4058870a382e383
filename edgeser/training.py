"""Train a zoo model on a corpus fold with the paper's loss, evaluate each epoch, keep the best.

Loss: `(1 - a) * CE + a * CTC` for models with a CTC head (CmGI and GCF2-Net use a = 0.1),
plain CE for audio-only models. Text branches read ground-truth transcripts while training
(as the papers do) and the model's own CTC transcript when evaluating, as at inference.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F

from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.checkpoint import (
    atomic_dir,
    save_checkpoint,
    write_json_atomic,
)
from edgeser.data import load_corpus
from edgeser.data.records import Corpus, Utterance
from edgeser.data.splits import Fold, get_fold
from edgeser.errors import ModelError
from edgeser.metrics import cer, classification_report, wer
from edgeser.modelling.base import SerModel, SerOutput
from edgeser.modelling.registry import build_model, load_recipe

STATE_DIR = "train_state"
METRICS_FILE = "metrics.jsonl"


@dataclass
class Clip:
    """A decoded training/evaluation example."""

    id: str
    audio: np.ndarray  # float32, 16 kHz
    label: int
    transcript: str


@dataclass
class TrainConfig:
    """The resolved training schedule (recipe's `training[size]` plus command-line overrides)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw, adam or sgd (with `momentum`)
    momentum: float = 0.9
    grad_accumulation: int = 1  # batches per optimiser step (CmGI paper: batch 2 x 8)
    ctc_weight: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float = 5.0
    max_seconds: float = 8.0  # longer training clips are cut to this (random window)
    text_source_eval: str = "asr"  # "asr" (deployment) or "ground_truth"
    stages: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_clips(
    utterances: list[Utterance], labels: list[str], progress: str | None = None
) -> list[Clip]:
    """Decode every clip once (16 kHz mono); transcripts missing from the corpus become empty."""
    index = {label: i for i, label in enumerate(labels)}
    clips = []
    with click.progressbar(utterances, label=progress or "loading audio", file=sys.stderr) as bar:
        for utt in bar:
            clips.append(Clip(utt.id, load_audio(utt.path), index[utt.label], utt.transcript or ""))
    return clips


def collate(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad waveforms to `[B, S]` with their lengths `[B]`."""
    lengths = torch.tensor([w.size for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for row, wave in enumerate(waves):
        batch[row, : wave.size] = torch.from_numpy(wave)
    return batch, lengths


def batches(clips: list[Clip], size: int, rng: np.random.Generator | None) -> Iterator[list[Clip]]:
    """Shuffled batches (training) or length-sorted ones (evaluation, less padding)."""
    if rng is None:
        order = sorted(range(len(clips)), key=lambda i: clips[i].audio.size)
    else:
        order = list(rng.permutation(len(clips)))
    for start in range(0, len(order), size):
        yield [clips[i] for i in order[start : start + size]]


def random_window(audio: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    if audio.size <= max_samples:
        return audio
    start = int(rng.integers(0, audio.size - max_samples + 1))
    return audio[start : start + max_samples]


def ctc_targets(model: SerModel, transcripts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    assert model.vocab is not None
    encoded = [model.vocab.encode(t) for t in transcripts]
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    flat = torch.tensor([i for e in encoded for i in e], dtype=torch.long)
    return flat, lengths


def compute_loss(
    model: SerModel, batch: list[Clip], rng: np.random.Generator, config: TrainConfig, device: torch.device,
    stage: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's training loss, `(1 - a) * CE + a * CTC`, with the paper's augmentation if any."""
    max_samples = int(config.max_seconds * SAMPLE_RATE)
    waves, lengths = collate([random_window(c.audio, max_samples, rng) for c in batch])
    waves, lengths = waves.to(device), lengths.to(device)
    augment = getattr(model, "augment_waveform", None)
    if augment is not None:
        waves = augment(waves, lengths)
    labels = torch.tensor([c.label for c in batch], dtype=torch.long, device=device)
    ctc_weight = float(stage.get("ctc_weight", config.ctc_weight)) if model.ctc_head is not None else 0.0
    # A stage may train an audio-only SER head first (CmGI phase 1: `uses_text: false`).
    audio_only_head = getattr(model, "acoustic_logits", None) if not stage.get("uses_text", True) else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if audio_only_head is not None:
            features, frame_lengths = model.audio_encoder(waves, lengths)
            ctc = model.ctc_head(features) if model.ctc_head is not None else None
            output = SerOutput(audio_only_head(features, frame_lengths), frame_lengths, ctc)
        elif model.uses_text:
            ids, mask = model.tokenize([c.transcript for c in batch])
            output = model(waves, lengths, ids.to(device), mask.to(device))
        else:
            output = model(waves, lengths)
    ce = F.cross_entropy(output.logits.float(), labels)
    parts = {"ce": float(ce.detach())}
    loss = ce
    if ctc_weight > 0 and output.ctc_log_probs is not None:
        targets, target_lengths = ctc_targets(model, [c.transcript for c in batch])
        log_probs = output.ctc_log_probs.float().transpose(0, 1)  # [F, B, V]
        ctc = F.ctc_loss(
            log_probs, targets.to(device), output.frame_lengths, target_lengths.to(device),
            blank=model.vocab.blank_id if model.vocab else 0, zero_infinity=True,
        )
        loss = (1 - ctc_weight) * ce + ctc_weight * ctc
        parts["ctc"] = float(ctc.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


@dataclass
class EvalResult:
    """Predictions and metrics of one pass over a split."""

    ids: list[str]
    predictions: list[int]
    probabilities: list[list[float]]
    transcripts: list[str]
    metrics: dict[str, Any]


@torch.no_grad()
def evaluate(
    model: SerModel, clips: list[Clip], *, batch_size: int = 16, text_source: str = "asr",
    device: torch.device | None = None,
) -> EvalResult:
    """Run the model as deployed (speech-only: its own CTC transcript feeds the text branch)."""
    device = device or next(model.parameters()).device
    model.eval()
    ids, predictions, probabilities, transcripts = [], [], [], []
    # Encoders trained without an attention mask (group norm) must not see padding: one clip at a time.
    batch_size = batch_size if model.supports_padded_batch else 1
    for batch in batches(clips, batch_size, None):
        waves, lengths = collate([c.audio for c in batch])
        waves, lengths = waves.to(device), lengths.to(device)
        features, frame_lengths = model.audio_encoder(waves, lengths)
        hypotheses = [""] * len(batch)
        if model.ctc_head is not None and model.vocab is not None:
            log_probs = model.ctc_head(features).float().cpu().numpy()
            hypotheses = [
                model.vocab.decode_log_probs(log_probs[i], int(frame_lengths[i])) for i in range(len(batch))
            ]
        if model.uses_text:
            texts = hypotheses if text_source == "asr" else [c.transcript for c in batch]
            token_ids, mask = model.tokenize(texts)
            token_features = model.text_encoder(token_ids.to(device), mask.to(device))
            logits = model.fusion_head(features, frame_lengths, token_features, mask.to(device))
        else:
            logits = model.fusion_head(features, frame_lengths)
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        ids += [c.id for c in batch]
        predictions += probs.argmax(axis=-1).tolist()
        probabilities += probs.tolist()
        transcripts += hypotheses
    truth = {c.id: c for c in clips}
    report = classification_report([truth[i].label for i in ids], predictions, len(model.labels))
    metrics: dict[str, Any] = report.to_dict()
    if model.ctc_head is not None:
        references = [truth[i].transcript for i in ids]
        metrics["cer"] = cer(references, transcripts)
        metrics["wer"] = wer(references, transcripts)
    return EvalResult(ids, predictions, probabilities, transcripts, metrics)


def make_optimizer(model: SerModel, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser over all parameters (frozen ones get no gradient and are skipped)."""
    parameters = list(model.parameters())
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ModelError(f"unknown optimizer {config.optimizer!r} in the recipe; use adamw, adam or sgd")


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return schedule


def stage_plan(config: TrainConfig) -> list[dict[str, Any]]:
    """Per-epoch stage settings: the recipe's `stages` (e.g. CmGI's two stages) or one stage."""
    if not config.stages:
        return [{"name": "main"}] * config.epochs
    planned = sum(int(stage["epochs"]) for stage in config.stages)
    plan: list[dict[str, Any]] = []
    for stage in config.stages:
        # An --epochs override rescales the stages, keeping each at least one epoch.
        share = int(stage["epochs"]) if planned == config.epochs else round(int(stage["epochs"]) * config.epochs / planned)
        plan += [stage] * max(1, share)
    return plan


def apply_stage(model: SerModel, stage: dict[str, Any]) -> None:
    """Freeze what a stage freezes: `freeze` lists parameter-name prefixes; the rest trains."""
    frozen = tuple(stage.get("freeze", []))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(frozen) if frozen else True)


def fingerprint(ids: list[str] | tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def train(
    model_name: str,
    size: str,
    data_spec: str,
    fold_index: int,
    out_dir: Path,
    *,
    seed: int = 0,
    device_name: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = lambda line: click.echo(line, err=True),
) -> dict[str, Any]:
    """Train one fold; returns the summary written to `out_dir/checkpoint.json`'s metrics."""
    device = resolve_device(device_name)
    seed_everything(seed)
    recipe = load_recipe(model_name)
    config = TrainConfig.from_recipe(recipe, size, overrides or {})
    corpus = load_corpus(data_spec)
    fold = get_fold(corpus, fold_index, seed=seed)
    train_utts, eval_utts = split_utterances(corpus, fold, limit, seed)
    model = build_model(model_name, size, corpus.labels, overrides=model_overrides).to(device)
    provenance = data_provenance(data_spec, corpus, fold, train_utts, eval_utts, seed)

    state_dir = out_dir / STATE_DIR
    start_epoch, best, history = 0, None, []
    plan = stage_plan(config)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(math.ceil(len(train_utts) / config.batch_size) / config.grad_accumulation)
    total_steps = steps_per_epoch * len(plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, int(config.warmup_ratio * total_steps))
    )
    if resume and (state_dir / "state.json").is_file():
        start_epoch, best, history = restore_state(state_dir, model, optimizer, scheduler, provenance)
        write_history(out_dir, history)  # the saved state is the truth, whatever happened after it
        log(f"resuming at epoch {start_epoch + 1}/{len(plan)} (best UA so far {best['ua'] if best else 0:.4f})")
    elif out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise ModelError(f"{out_dir}: output folder is not empty; pass --resume to continue or choose another")
    out_dir.mkdir(parents=True, exist_ok=True)

    train_clips = load_clips(train_utts, corpus.labels, f"loading {len(train_utts)} training clips")
    eval_clips = load_clips(eval_utts, corpus.labels, f"loading {len(eval_utts)} evaluation clips")
    log(
        f"{model_name}/{size} on {corpus.name} fold {fold.index} ({fold.held_out}): "
        f"{len(train_clips)} train, {len(eval_clips)} eval, {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, device {device}"
    )
    for epoch in range(start_epoch, len(plan)):
        stage = plan[epoch]
        apply_stage(model, stage)
        model.train()
        rng = np.random.default_rng([seed, epoch])
        started = time.perf_counter()
        totals: dict[str, float] = {}
        count = 0
        with click.progressbar(
            list(batches(train_clips, config.batch_size, rng)), label=f"epoch {epoch + 1}/{len(plan)}",
            file=sys.stderr,
        ) as bar:
            optimizer.zero_grad(set_to_none=True)
            for index, batch in enumerate(bar, start=1):
                loss, parts = compute_loss(model, batch, rng, config, device, stage)
                (loss / config.grad_accumulation).backward()
                if index % config.grad_accumulation == 0 or index == len(bar):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                for key, value in parts.items():
                    totals[key] = totals.get(key, 0.0) + value * len(batch)
                count += len(batch)
        result = evaluate(model, eval_clips, batch_size=config.batch_size, text_source=config.text_source_eval,
                          device=device)
        entry = {
            "epoch": epoch + 1,
            "stage": stage.get("name", "main"),
            "train": {k: v / count for k, v in totals.items()},
            "eval": {k: v for k, v in result.metrics.items() if k != "confusion"},
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(entry)
        # Earlier stages (CmGI's acoustic phase) do not train the deployed heads: only the final
        # stage's epochs may become the kept checkpoint.
        eligible = plan[epoch] is plan[-1]
        improved = eligible and (best is None or result.metrics["ua"] > best["ua"])
        line = (
            f"epoch {epoch + 1}: loss {entry['train']['loss']:.4f}  UA {result.metrics['ua']:.4f}  "
            f"WA {result.metrics['wa']:.4f}"
            + (f"  CER {result.metrics['cer']:.3f}" if "cer" in result.metrics else "")
            + f"  ({entry['seconds']} s){'  *best' if improved else ''}"
        )
        log(line)
        if improved:
            best = {**result.metrics, "epoch": epoch + 1}
            save_checkpoint(model, out_dir, {"best": best, "history": history}, provenance, asdict(config))
        save_state(state_dir, model, optimizer, scheduler, epoch + 1, best, history, provenance)
        write_history(out_dir, history)
    # Final metadata carries the full history, with the best weights left as saved.
    info_path = out_dir / "checkpoint.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["metrics"] = {"best": best, "history": history}
    write_json_atomic(info_path, info)
    return info["metrics"]


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite `metrics.jsonl` (one epoch a line) atomically from the run's history."""
    tmp = out_dir / f".{METRICS_FILE}.tmp"
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in history), encoding="utf-8")
    os.replace(tmp, out_dir / METRICS_FILE)


def split_utterances(
    corpus: Corpus, fold: Fold, limit: int | None, seed: int
) -> tuple[list[Utterance], list[Utterance]]:
    """Training and evaluation utterances of a fold; `limit` keeps a seeded subset (limit and limit // 2)."""
    train_utts = corpus.subset(fold.train_ids)
    eval_utts = corpus.subset(fold.eval_ids)
    if limit:
        rng = np.random.default_rng(seed)
        train_utts = [train_utts[i] for i in sorted(rng.permutation(len(train_utts))[:limit])]
        eval_utts = [eval_utts[i] for i in sorted(rng.permutation(len(eval_utts))[: max(1, limit // 2)])]
    return train_utts, eval_utts


def data_provenance(
    spec: str, corpus: Corpus, fold: Fold, train_utts: list[Utterance], eval_utts: list[Utterance], seed: int
) -> dict[str, Any]:
    return {
        "data_spec": spec,
        "corpus": corpus.name,
        "fold": fold.index,
        "held_out": fold.held_out,
        "train_count": len(train_utts),
        "eval_count": len(eval_utts),
        "train_ids_sha": fingerprint([u.id for u in train_utts]),
        "eval_ids_sha": fingerprint([u.id for u in eval_utts]),
        "seed": seed,
    }


def save_state(
    state_dir: Path, model: SerModel, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
    best: dict[str, Any] | None, history: list[dict[str, Any]], provenance: dict[str, Any],
) -> None:
    """Everything needed to resume after `epoch`, written atomically as one folder."""
    with atomic_dir(state_dir) as staging:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state()},
            staging / "state.pt",
        )
        write_json_atomic(
            staging / "state.json", {"epoch": epoch, "best": best, "history": history, "provenance": provenance}
        )


def restore_state(
    state_dir: Path, model: SerModel, optimizer: torch.optim.Optimizer, scheduler: Any, provenance: dict[str, Any]
) -> tuple[int, dict[str, Any] | None, list[dict[str, Any]]]:
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    if meta["provenance"] != provenance:
        raise ModelError(f"{state_dir}: saved run used other data or fold; cannot resume with these settings")
    payload = torch.load(state_dir / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    return int(meta["epoch"]), meta["best"], meta["history"]
