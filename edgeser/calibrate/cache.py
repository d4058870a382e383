"""`edgeser calibrate`: choose the calibration clips, capture stage inputs, cache them in the bundle.

    BUNDLE/calibration/
      inputs.npz          stacked fixed-shape stage inputs per bucket group ("<group>.<tensor>")
      calibration.json    provenance: corpus, spec, fold, pool, ids, label counts, buckets, fp32 checksums
      ranges/             activation ranges per stage and method, written by `edgeser quantize`

The folder is replaced whole (temp folder + rename), so a failed run keeps the previous cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeser.bundle import read_manifest, validate_bundle
from edgeser.calibrate.capture import (
    DEFAULT_BUCKETS_S,
    SENTENCES_FILE,
    TEXT_GROUP,
    CapturedInputs,
    add_text_inputs,
    calibration_sentences,
    capture_stage_inputs,
)
from edgeser.calibrate.selection import CalibrationSet, select_calibration_set
from edgeser.data.protocols import Split, fingerprint, split_from_provenance
from edgeser.errors import BundleError, OptionError
from edgeser.progress import STDERR, Progress

CALIBRATION_DIR = "calibration"
INPUTS_FILE = "inputs.npz"
PROVENANCE_FILE = "calibration.json"
CALIBRATION_SCHEMA = 1
DEFAULT_SAMPLES = 64
READ_TRIES = 5  # reads of a cache a concurrent `calibrate` is replacing (see read_calibration)


@dataclass
class CalibrationCache:
    """A bundle's cached calibration inputs and their provenance."""

    root: Path  # BUNDLE/calibration
    provenance: dict[str, Any]
    inputs: CapturedInputs

    @property
    def ids(self) -> list[str]:
        return list(self.provenance["ids"])

    def stage_feeds(
        self, stage: str, input_names: list[str]
    ) -> Iterator[tuple[str, list[dict[str, np.ndarray]]]]:
        """Per bucket group, the batch-1 feeds of `stage` (only its `input_names`); the text-only groups feed the
        stages whose inputs they hold (the text encoder)."""
        for key, tensors in self.inputs.groups.items():
            missing = [n for n in input_names if n not in tensors]
            if missing and key.startswith(f"{TEXT_GROUP}-"):
                continue
            if missing:
                raise BundleError(f"{self.root}: cached calibration inputs lack {missing} for stage {stage}")
            count = int(tensors[input_names[0]].shape[0])
            yield key, [{n: tensors[n][i : i + 1] for n in input_names} for i in range(count)]

    def ranges_path(self, stage: str, method: str, signature: str) -> Path:
        """Where activation ranges of `stage` for a calibration `method` (and graph signature) are cached."""
        return self.root / "ranges" / f"{stage}.{method}.{signature}.json"


def read_calibration(bundle: Path) -> CalibrationCache:
    """The bundle's calibration cache; refuses a missing or stale one (fp32 graphs changed since).

    calibration.json records the sha256 of inputs.npz: a reader racing a `calibrate` that swaps the folder could
    otherwise pair one run's provenance with the other's inputs. On a mismatch it reads both again (the swap is
    one rename), and refuses after a few tries."""
    root = bundle / CALIBRATION_DIR
    provenance_path = root / PROVENANCE_FILE
    for _ in range(READ_TRIES):
        if not provenance_path.is_file() or not (root / INPUTS_FILE).is_file():
            raise BundleError(
                f"{bundle}: no calibration cache; run `edgeser calibrate {bundle} --data ...` first"
            )
        try:
            provenance = json.loads(provenance_path.read_text(encoding="utf-8"))
            payload = (root / INPUTS_FILE).read_bytes()
        except json.JSONDecodeError as err:
            raise BundleError(f"{provenance_path}: corrupt calibration provenance ({err.msg})") from err
        except FileNotFoundError:
            continue  # the folder was swapped between the two reads
        expected = provenance.get("inputs_sha256")
        if expected is None or hashlib.sha256(payload).hexdigest() == expected:
            break
    else:
        raise BundleError(
            f"{root}: calibration inputs do not match calibration.json (another `calibrate` kept "
            "replacing them while they were read); rerun when it has finished"
        )
    manifest = read_manifest(bundle)
    current = {stage: entry.sha256 for stage, entry in manifest.precisions.get("fp32", {}).items()}
    if provenance.get("fp32_sha256") != current:
        raise BundleError(
            f"{bundle}: calibration cache is stale (the fp32 graphs changed since it was captured); "
            f"rerun `edgeser calibrate {bundle} --data ...`"
        )
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    return CalibrationCache(root, provenance, CapturedInputs.from_flat(arrays))


def calibrate_bundle(
    bundle: Path,
    data_spec: str,
    *,
    fold_index: int | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    ids: list[str] | None = None,
    buckets_s: tuple[float, ...] = DEFAULT_BUCKETS_S,
    threads: int | None = None,
    text_sentences: bool = True,
    progress: Progress = STDERR,
) -> CalibrationCache:
    """Select calibration clips from `data_spec` (never the evaluation split), capture and cache stage inputs.

    Text models also calibrate their text encoder on the clips' reference transcripts and, with
    `text_sentences`, the shipped sentences (see `edgeser.calibrate.capture`)."""
    from edgeser.audio import load_audio
    from edgeser.runtime.options import bounded, bounded_int, check_threads

    samples = bounded_int("samples", samples)
    if not buckets_s:
        raise OptionError("buckets_s", "give at least one waveform length in seconds")
    buckets_s = tuple(bounded("buckets_s", b, "clip_seconds") for b in buckets_s)
    if threads is not None:
        threads = check_threads("threads", threads)
    from edgeser.data import load_corpus
    from edgeser.files import atomic_dir, tool_versions, write_json_atomic
    from edgeser.runtime.pipeline import Pipeline

    manifest = validate_bundle(bundle, "fp32")
    corpus = load_corpus(data_spec)
    split = bundle_split(bundle, manifest, corpus, fold_index)
    fold = split.fold
    chosen: CalibrationSet = select_calibration_set(corpus, fold, samples, seed=seed, ids=ids)
    pipeline = Pipeline.load(bundle, "fp32", threads=threads)
    waves = [load_audio(u.path) for u in chosen.utterances]
    started = time.perf_counter()
    captured = capture_stage_inputs(
        pipeline, waves, buckets_s, f"capturing {len(waves)} calibration clips", progress
    )
    transcripts = [u.transcript for u in chosen.utterances if u.transcript]
    sentences = calibration_sentences() if text_sentences else []
    texts = add_text_inputs(pipeline, captured, transcripts + sentences)
    durations = [u.duration for u in chosen.utterances]
    provenance: dict[str, Any] = {
        "schema": CALIBRATION_SCHEMA,
        "data_spec": data_spec,
        "corpus": corpus.name,
        "fold": fold.index,
        "protocol": split.protocol,
        "held_out": fold.held_out,
        "eval_ids_sha": fingerprint(split.eval_ids),
        "pool": chosen.source,
        "seed": seed,
        "count": len(chosen.utterances),
        "ids": chosen.ids,
        "ids_sha": fingerprint(chosen.ids),
        "labels": dict(sorted(Counter(u.label for u in chosen.utterances).items())),
        "speakers": dict(sorted(Counter(u.speaker for u in chosen.utterances).items())),
        "duration_s": {"min": min(durations), "median": float(np.median(durations)), "max": max(durations)},
        "buckets_s": list(buckets_s),
        "groups": captured.counts(),
        "length_stats": captured.length_stats(),
        "clip_groups": dict(zip(chosen.ids, captured.clip_groups)),
        "text": {
            "items": texts,
            "reference_transcripts": len(set(transcripts)),
            "sentences": len(sentences),
            "sentences_sha256": hashlib.sha256(SENTENCES_FILE.read_bytes()).hexdigest()
            if sentences
            else None,
        },
        "stages": {stage: [t.name for t in spec.inputs] for stage, spec in manifest.stages.items()},
        "fp32_sha256": {stage: entry.sha256 for stage, entry in manifest.precisions["fp32"].items()},
        "capture_seconds": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": tool_versions(),
    }
    target = bundle / CALIBRATION_DIR
    with atomic_dir(target) as staging:
        buffer = io.BytesIO()
        np.savez(buffer, **captured.flat())  # type: ignore[arg-type]  # numpy's stub: **arrays vs allow_pickle
        (staging / INPUTS_FILE).write_bytes(buffer.getvalue())
        provenance["inputs_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        write_json_atomic(staging / PROVENANCE_FILE, provenance)
    return CalibrationCache(target, provenance, captured)


def bundle_split(bundle: Path, manifest: Any, corpus: Any, fold_index: int | None) -> Split:
    """The evaluation split of the model a bundle came from, rebuilt from its checkpoint's provenance and
    verified (else fold `fold_index`, default 0, of the default protocol)."""
    provenance = (manifest.source_checkpoint or {}).get("provenance")
    return split_from_provenance(corpus, provenance, fold_index, source=f"{bundle}'s model")
