"""`edgeser check parity`: the bundle's fp32 graphs against the PyTorch model on real clips."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from edgeser.audio import load_audio
from edgeser.bundle import read_manifest
from edgeser.checkpoint import load_checkpoint, write_json_atomic
from edgeser.data import load_corpus
from edgeser.data.records import Utterance
from edgeser.errors import BundleError
from edgeser.export.exporter import prepare_model
from edgeser.modelling.base import SerModel
from edgeser.runtime.pipeline import Pipeline

MIN_COSINE = 0.99999
MIN_AGREEMENT = 1.0


@dataclass
class StageStats:
    """Worst-case and mean agreement of one stage's outputs over all clips."""

    max_abs_diff: float = 0.0
    min_cosine: float = 1.0
    cosine_sum: float = 0.0
    count: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = reference.astype(np.float64).ravel()
        cand = candidate.astype(np.float64).ravel()
        self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(ref - cand))) if ref.size else 0.0)
        denominator = np.linalg.norm(ref) * np.linalg.norm(cand)
        cosine = float(ref @ cand / denominator) if denominator > 0 else float(np.allclose(ref, cand))
        self.min_cosine = min(self.min_cosine, cosine)
        self.cosine_sum += cosine
        self.count += 1

    @property
    def mean_cosine(self) -> float:
        return self.cosine_sum / self.count if self.count else 1.0


@dataclass
class ParityReport:
    bundle: str
    data: str
    clips: int
    stages: dict[str, dict[str, float]]
    label_agreement: float
    transcript_agreement: float | None
    gates: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [
            f"# Parity: {self.bundle}",
            "",
            f"{self.clips} clips from `{self.data}`; onnxruntime fp32 vs PyTorch, each stage fed identical inputs.",
            "",
            "| stage | max abs diff | min cosine | mean cosine |",
            "|---|---|---|---|",
        ]
        for name, stats in self.stages.items():
            lines.append(
                f"| {name} | {stats['max_abs_diff']:.3g} | {stats['min_cosine']:.7f} | {stats['mean_cosine']:.7f} |"
            )
        lines += [
            "",
            f"End to end (chained onnxruntime runtime vs PyTorch): label agreement {self.label_agreement:.2%}"
            + (f", transcript agreement {self.transcript_agreement:.2%}" if self.transcript_agreement is not None else ""),
            "",
            f"Gates: per-stage min cosine >= {self.gates['min_cosine']}, label agreement >= {self.gates['min_agreement']:.0%}: "
            + ("**passed**" if self.passed else "**FAILED** — " + "; ".join(self.failures)),
        ]
        return "\n".join(lines) + "\n"


def reference_model(bundle: Path, checkpoint: Path | None) -> SerModel:
    """The PyTorch model the bundle came from (its checkpoint, or the same seeded random weights)."""
    manifest = read_manifest(bundle)
    source = manifest.source_checkpoint
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    if source.get("kind") == "checkpoint":
        path = Path(source["path"])
        if not path.is_dir():
            raise BundleError(f"{bundle}: source checkpoint {path} not found; pass --checkpoint")
        return load_checkpoint(path)
    model, _ = prepare_model(manifest.model, manifest.size, None, random_weights=True)
    return model


def spread(utterances: list[Utterance], limit: int | None) -> list[Utterance]:
    """An evenly spaced, deterministic subset (covers speakers and labels better than the first N)."""
    if not limit or limit >= len(utterances):
        return utterances
    picks = np.linspace(0, len(utterances) - 1, limit).round().astype(int)
    return [utterances[i] for i in picks]


@torch.no_grad()
def check_parity(
    bundle: Path,
    data_spec: str,
    *,
    limit: int | None = 200,
    checkpoint: Path | None = None,
    min_cosine: float = MIN_COSINE,
    min_agreement: float = MIN_AGREEMENT,
) -> ParityReport:
    """Compare each stage on identical inputs, then the chained runtime end to end; write reports/."""
    pipeline = Pipeline.load(bundle, "fp32")
    model = reference_model(bundle, checkpoint)
    model.eval()
    prepare = getattr(model, "prepare_for_export", None)
    if prepare is not None:
        prepare()
    clips = spread(load_corpus(data_spec).utterances, limit)
    stats: dict[str, StageStats] = {name: StageStats() for name in pipeline.sessions}
    labels_agree = transcripts_agree = 0
    with click.progressbar(clips, label="parity", file=sys.stderr) as bar:
        for utt in bar:
            wave = load_audio(utt.path)
            waves = torch.from_numpy(wave)[None]
            lengths = torch.tensor([wave.size])
            features, frame_lengths = model.audio_encoder(waves, lengths)
            valid = int(frame_lengths[0])
            onnx_features = pipeline.sessions["audio_encoder"].run(
                None, {"waveform": wave[None], "lengths": lengths.numpy()}
            )
            stats["audio_encoder"].add(features[0, :valid].numpy(), onnx_features[0][0, :valid])
            if int(onnx_features[1][0]) != valid:
                stats["audio_encoder"].min_cosine = -1.0  # wrong frame count is a hard failure
            transcript = None
            if model.ctc_head is not None:
                log_probs = model.ctc_head(features)
                onnx_log_probs = pipeline.sessions["ctc_head"].run(None, {"features": features.numpy()})[0]
                stats["ctc_head"].add(log_probs[0, :valid].numpy(), onnx_log_probs[0, :valid])
                transcript = model.vocab.decode_log_probs(log_probs[0].numpy(), valid)  # type: ignore[union-attr]
            if model.text_encoder is not None:
                ids, mask = pipeline.tokenize([transcript or ""])
                token_features = model.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))
                onnx_tokens = pipeline.sessions["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
                stats["text_encoder"].add(token_features.numpy(), onnx_tokens)
                logits = model.fusion_head(features, frame_lengths, token_features, torch.from_numpy(mask))
                feeds = {"features": features.numpy(), "frame_lengths": frame_lengths.numpy(),
                         "token_features": token_features.numpy(), "attention_mask": mask}
            else:
                logits = model.fusion_head(features, frame_lengths)
                feeds = {"features": features.numpy(), "frame_lengths": frame_lengths.numpy()}
            stats["fusion_head"].add(logits.numpy(), pipeline.sessions["fusion_head"].run(None, feeds)[0])
            chained = pipeline.run_stages([wave])
            labels_agree += int(np.argmax(chained.logits[0]) == int(logits.argmax()))
            if transcript is not None and chained.transcripts is not None:
                transcripts_agree += int(chained.transcripts[0] == transcript)
    count = len(clips)
    report_stages = {
        name: {"max_abs_diff": s.max_abs_diff, "min_cosine": s.min_cosine, "mean_cosine": s.mean_cosine}
        for name, s in stats.items()
    }
    agreement = labels_agree / count
    failures = [f"{name} min cosine {s['min_cosine']:.7f} < {min_cosine}" for name, s in report_stages.items()
                if s["min_cosine"] < min_cosine]
    if agreement < min_agreement:
        failures.append(f"label agreement {agreement:.2%} < {min_agreement:.0%}")
    report = ParityReport(
        bundle=str(bundle), data=data_spec, clips=count, stages=report_stages, label_agreement=agreement,
        transcript_agreement=transcripts_agree / count if model.ctc_head is not None else None,
        gates={"min_cosine": min_cosine, "min_agreement": min_agreement}, passed=not failures, failures=failures,
    )
    reports = bundle / "reports"
    reports.mkdir(exist_ok=True)
    write_json_atomic(reports / "parity.json", asdict(report))
    tmp = reports / ".parity.md.tmp"
    tmp.write_text(report.to_markdown(), encoding="utf-8")
    tmp.replace(reports / "parity.md")
    return report

