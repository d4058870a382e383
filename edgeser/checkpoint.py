"""Checkpoint folders: weights (safetensors), resolved recipe, labels, CTC vocabulary, tokenizer, provenance.

A checkpoint is everything needed to rebuild the model (plus any named pretrained backbone):

    checkpoint.json    model, size, config, labels, vocab, metrics, data provenance, versions
    model.safetensors  the weights
    tokenizer.json     the text branch's tokenizer (text models only)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeser.errors import ModelError
from edgeser.files import atomic_file, clean_stale_staging, sha256_of, tool_versions, write_json_atomic
from edgeser.text import CtcVocab

CHECKPOINT_SCHEMA = 1
CHECKPOINT_FILE = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class CheckpointInfo:
    """The JSON half of a checkpoint."""

    model: str
    size: str
    config: dict[str, Any]
    labels: list[str]
    vocab: dict[str, Any] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # the resolved training schedule
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = CHECKPOINT_SCHEMA


def save_checkpoint(
    model: Any,
    directory: Path,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> Path:
    """Write or update a checkpoint in `directory`, each file through a temporary name and a rename.

    Other files in the folder (a training run's `train_state/`, `metrics.jsonl`) are left alone.
    `checkpoint.json` goes last and records the weights' hash, so a save cut short between two
    renames is detected on load instead of pairing new weights with old metadata.
    """
    from safetensors.torch import save_file

    info = CheckpointInfo(
        model=model.name,
        size=str(model.config.get("size", "")),
        config=model.config,
        labels=model.labels,
        vocab=model.vocab.to_dict() if model.vocab is not None and model.ctc_head is not None else None,
        metrics=metrics,
        provenance=provenance,
        training=training or {},
        versions=tool_versions(),
    )
    directory.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(directory)  # temporary files of a save that was killed
    full = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    packaged = packaged_entries(model, full)
    referenced = {key for entry in packaged for key in entry["keys"]}
    with atomic_file(directory / WEIGHTS_FILE) as weights_tmp:
        save_file({k: v for k, v in full.items() if k not in referenced}, str(weights_tmp))
        info_dict = info.__dict__ | {"weights_sha256": sha256_of(weights_tmp), "packaged_weights": packaged}
        if model.tokenizer is not None:
            with atomic_file(directory / TOKENIZER_FILE) as tokenizer_tmp:
                model.tokenizer.save(str(tokenizer_tmp))
    write_json_atomic(directory / CHECKPOINT_FILE, info_dict)
    return directory


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """One digest of named tensors (names, dtypes, shapes and bytes, in name order)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def packaged_entries(model: Any, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The weights a checkpoint references from installed packages instead of copying them (see
    `SerModel.packaged_weights`): per package, its version, the state-dict keys and their digest."""
    import importlib.metadata as metadata

    entries = []
    for prefix, package in model.packaged_weights().items():
        keys = sorted(k for k in state if k.startswith(prefix))
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "?"
        entries.append(
            {
                "package": package,
                "version": version,
                "prefix": prefix,
                "keys": keys,
                "sha256": tensors_sha256({k: state[k] for k in keys}),
            }
        )
    return entries


def read_checkpoint_info(directory: Path) -> dict[str, Any]:
    """The checkpoint's JSON, with clear errors for a missing or foreign folder."""
    path = directory / CHECKPOINT_FILE
    if not directory.is_dir():
        raise ModelError(f"{directory}: checkpoint folder not found")
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelError(
            f"{directory}: not an edgeser checkpoint (needs {CHECKPOINT_FILE} and {WEIGHTS_FILE})"
        )
    try:
        info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: corrupt checkpoint metadata ({err.msg})") from err
    if int(info.get("schema", 0)) > CHECKPOINT_SCHEMA:
        raise ModelError(
            f"{path}: checkpoint schema {info.get('schema')} is newer than this edgeser supports"
        )
    return info


def check_packaged(directory: Path, model: Any, entries: list[dict[str, Any]]) -> set[str]:
    """Verify that the freshly built model's package weights are exactly the ones the checkpoint was trained
    with; returns their keys (absent from the weights file by design)."""
    current = model.state_dict()
    keys: set[str] = set()
    for entry in entries:
        missing = [k for k in entry["keys"] if k not in current]
        if missing:
            raise ModelError(
                f"{directory}: weights from {entry['package']} ({missing[0]}) are not in the model"
            )
        if tensors_sha256({k: current[k] for k in entry["keys"]}) != entry["sha256"]:
            raise ModelError(
                f"{directory}: the installed {entry['package']} gives other weights than the checkpoint "
                f"was trained with ({entry['package']} {entry['version']}); install that version"
            )
        keys |= set(entry["keys"])
    return keys


def load_checkpoint(directory: Path | str) -> Any:
    """Rebuild the model from a checkpoint folder and load its weights (eval mode)."""
    from safetensors.torch import load_file

    from edgeser.modelling.registry import build_from_config

    directory = Path(directory)
    info = read_checkpoint_info(directory)
    expected = info.get("weights_sha256")
    if expected and sha256_of(directory / WEIGHTS_FILE) != expected:
        raise ModelError(
            f"{directory / WEIGHTS_FILE}: weights do not match checkpoint.json (changed or cut short mid-save)"
        )
    vocab = CtcVocab.from_dict(info["vocab"]) if info.get("vocab") else None
    # The weights come from the checkpoint: rebuild backbone architectures without reading pretrained
    # weights, and use the checkpoint's own tokenizer.
    config = dict(info["config"], random_weights=True)
    if isinstance(config.get("text"), dict) and (directory / TOKENIZER_FILE).is_file():
        config["text"] = dict(config["text"], tokenizer_file=str(directory / TOKENIZER_FILE))
    model = build_from_config(info["model"], config, info["labels"], vocab)
    state = load_file(str(directory / WEIGHTS_FILE))
    referenced = check_packaged(directory, model, info.get("packaged_weights") or [])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in referenced]
    if missing or unexpected:
        raise ModelError(
            f"{directory}: weights do not fit model {info['model']!r} "
            f"(missing {len(missing)} e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )
    if (directory / TOKENIZER_FILE).is_file() and model.uses_text:
        from tokenizers import Tokenizer

        model.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    model.eval()
    return model
