"""Decoded clips, batches, the training loss, and evaluation through the stage contract."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeser.audio import SAMPLE_RATE, load_audio
from edgeser.data.records import Utterance
from edgeser.metrics import cer, classification_report, wer
from edgeser.modelling.base import SerModel, SerOutput
from edgeser.modelling.runner import torch_runners
from edgeser.modelling.train_hooks import l2_penalty
from edgeser.progress import STDERR, Progress
from edgeser.stages import pad_batch
from edgeser.text import TextSource
from edgeser.training.config import TrainConfig

if TYPE_CHECKING:
    from edgeser.training.distributed import World


@dataclass
class Clip:
    """A decoded training/evaluation example."""

    id: str
    audio: np.ndarray  # float32, 16 kHz
    label: int
    transcript: str
    speaker: str = ""


def load_clips(
    utterances: list[Utterance],
    labels: list[str],
    label: str = "loading audio",
    *,
    progress: Progress = STDERR,
) -> list[Clip]:
    """Decode every clip once (16 kHz mono) under a progress bar named `label`; transcripts missing from the
    corpus become empty."""
    index = {name: i for i, name in enumerate(labels)}
    clips = []
    with progress.bar(utterances, label) as bar:
        for utt in bar:
            clips.append(
                Clip(utt.id, load_audio(utt.path), index[utt.label], utt.transcript or "", utt.speaker)
            )
    return clips


def collate(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad waveforms to `[B, S]` with their lengths `[B]`."""
    batch, lengths = pad_batch(waves)
    return torch.from_numpy(batch), torch.from_numpy(lengths)


def batches(
    clips: list[Clip], size: int, rng: np.random.Generator | None, bucketed: bool = False
) -> Iterator[list[Clip]]:
    """Shuffled batches (training), length-bucketed shuffled batches (`bucketed`: whole long clips pad
    little), or length-sorted batches in order (evaluation, `rng` None)."""
    if rng is None or bucketed:
        order = sorted(range(len(clips)), key=lambda i: clips[i].audio.size)
        groups = [order[start : start + size] for start in range(0, len(order), size)]
        if rng is not None:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        for group in groups:
            yield [clips[i] for i in group]
        return
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


class TrainingLoss(nn.Module):
    """One batch's training loss as a single module call (what DistributedDataParallel wraps): the paper's
    `(1 - a) * CE + a * CTC`, plus a paper's explicit L2 term. Returns the loss and its parts (detached)."""

    def __init__(self, model: SerModel, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor,
        transcripts: list[str],
        stage: dict[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model, config, device = self.model, self.config, waves.device
        ctc_weight = float(stage.get("ctc_weight", config.ctc_weight)) if model.ctc_head is not None else 0.0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if not stage.get("uses_text", True):  # the paper's audio-only SER head first (CmGI phase 1)
                features, frame_lengths = model.audio_encoder(waves, lengths)
                ctc = model.ctc_head(features) if model.ctc_head is not None else None
                output = SerOutput(model.acoustic_logits(features, frame_lengths), frame_lengths, ctc)
            elif model.uses_text:
                ids, mask = model.tokenize(transcripts)
                output = model(waves, lengths, ids.to(device), mask.to(device))
            else:
                output = model(waves, lengths)
        ce = F.cross_entropy(output.logits.float(), labels)
        parts = {"ce": ce.detach()}
        loss = ce
        if ctc_weight > 0 and output.ctc_log_probs is not None:
            targets, target_lengths = ctc_targets(model, transcripts)
            log_probs = output.ctc_log_probs.float().transpose(0, 1)  # [F, B, V]
            ctc = F.ctc_loss(
                log_probs,
                targets.to(device),
                output.frame_lengths,
                target_lengths.to(device),
                blank=model.vocab.blank_id if model.vocab else 0,
                zero_infinity=True,
            )
            loss = (1 - ctc_weight) * ce + ctc_weight * ctc
            parts["ctc"] = ctc.detach()
        penalty = l2_penalty(model, config.l2_penalty)
        if penalty is not None:  # a paper's explicit L2 term (SASER's "regularization parameter")
            loss = loss + penalty
            parts["l2"] = penalty.detach()
        parts["loss"] = loss.detach()
        return loss, parts


def compute_loss(
    model: SerModel,
    batch: list[Clip],
    rng: np.random.Generator,
    config: TrainConfig,
    device: torch.device,
    stage: dict[str, Any],
    *,
    shard: slice | None = None,
    net: nn.Module | None = None,
    forward_seed: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's training loss, with the paper's augmentation if any.

    The whole batch is prepared (crop, padding to its longest clip, waveform augmentation: the random streams
    advance as in a 1-process run); `shard` then keeps a slice of it (one rank's part of a global batch). `net`
    is the `TrainingLoss` to call (DistributedDataParallel-wrapped); `forward_seed` seeds the randomness inside
    the model (a rank's own dropout stream) without moving the global stream.
    """
    crop = config.crop_for(model.ctc_head is None and not model.uses_text)
    max_samples = int(config.max_seconds * SAMPLE_RATE)
    audio = [random_window(c.audio, max_samples, rng) if crop == "random-window" else c.audio for c in batch]
    waves, lengths = collate(audio)
    waves, lengths = waves.to(device), lengths.to(device)
    waves = model.augment_waveform(waves, lengths)
    if shard is not None:
        batch, waves, lengths = batch[shard], waves[shard], lengths[shard]
    labels = torch.tensor([c.label for c in batch], dtype=torch.long, device=device)
    net = net if net is not None else TrainingLoss(model, config)
    with forked_rng(forward_seed, device):
        loss, parts = net(waves, lengths, labels, [c.transcript for c in batch], stage)
    return loss, {key: float(value) for key, value in parts.items()}


@contextmanager
def forked_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw from a generator seeded with `seed` inside, leaving the global stream where it was (None: the
    global stream itself)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@dataclass
class EvalResult:
    """Predictions and metrics of one pass over a split."""

    ids: list[str]
    predictions: list[int]
    probabilities: list[list[float]]
    transcripts: list[str]
    metrics: dict[str, Any]


def _grouped(groups: list[str], labels: list[int], predictions: list[int], classes: int) -> dict[str, Any]:
    """UA/WA/F1/count per group (speaker or corpus), without confusion matrices."""
    rows: dict[str, list[int]] = defaultdict(list)
    for position, group in enumerate(groups):
        rows[group].append(position)
    return {
        group: {
            k: v
            for k, v in classification_report(
                [labels[i] for i in members], [predictions[i] for i in members], classes
            )
            .to_dict()
            .items()
            if k != "confusion"
        }
        for group, members in sorted(rows.items())
    }


def evaluate(
    model: SerModel,
    clips: list[Clip],
    *,
    batch_size: int = 16,
    text_source: TextSource = "asr",
    device: torch.device | None = None,
    per_speaker: bool = False,
    world: World | None = None,
) -> EvalResult:
    """Run the model as deployed, through the stage contract (`StageGraph` + PyTorch runners): the text branch
    reads the model's own CTC transcript (`text_source="asr"`) or the ground truth (`"ground_truth"`).

    With a `world` of several processes each rank runs every `size`-th batch (the same batches one process
    runs) and the predictions are all-gathered in batch order: every rank returns the same result."""
    from edgeser.runtime.results import class_probabilities

    model.eval()
    graph = model.stage_graph()
    runners = torch_runners(model, device)
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    rows = []
    for index, batch in enumerate(batches(clips, batch_size, None)):
        if index % size != rank:
            continue
        truth = [c.transcript for c in batch] if text_source == "ground_truth" else None
        run = graph.run(runners, [c.audio for c in batch], transcripts=truth)
        probs, best = class_probabilities(run.logits)
        rows.append((index, [c.id for c in batch], probs, run.transcripts or [""] * len(batch), best))
    if world is not None and size > 1:
        rows = sorted((row for part in world.gather(rows) for row in part), key=lambda row: row[0])
    ids = [clip_id for row in rows for clip_id in row[1]]
    probabilities = [p for row in rows for p in row[2].tolist()]
    predictions = [int(i) for row in rows for i in row[4]]
    transcripts = [t for row in rows for t in row[3]]
    truth_by_id = {c.id: c for c in clips}
    labels = [truth_by_id[i].label for i in ids]
    metrics: dict[str, Any] = classification_report(labels, predictions, len(model.labels)).to_dict()
    # Mean negative log-likelihood of the true label: it still ranks checkpoints once UA saturates.
    metrics["loss"] = (
        float(-np.mean([np.log(max(p[y], 1e-12)) for p, y in zip(probabilities, labels)])) if labels else 0.0
    )
    if model.ctc_head is not None:
        references = [truth_by_id[i].transcript for i in ids]
        metrics["cer"] = cer(references, transcripts)
        metrics["wer"] = wer(references, transcripts)
    if per_speaker:
        speakers = [truth_by_id[clip_id].speaker for clip_id in ids]
        metrics["per_speaker"] = _grouped(speakers, labels, predictions, len(model.labels))
        if all(
            "/" in speaker for speaker in speakers
        ):  # the multi corpus: `ravdess/actor19`, `emodb/14`, ...
            corpora = [speaker.split("/", 1)[0] for speaker in speakers]
            metrics["per_corpus"] = _grouped(corpora, labels, predictions, len(model.labels))
    return EvalResult(ids, predictions, probabilities, transcripts, metrics)
