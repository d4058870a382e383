"""The float reference a bundle is checked against: the PyTorch model it came from, run through its stage graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeser.bundle import read_manifest, validate_bundle
from edgeser.errors import BundleError


def reference_model(bundle: Path, checkpoint: Path | None = None) -> Any:
    """The PyTorch model the bundle came from (its checkpoint, or the same seeded random weights), in its
    exported form (eval mode, weight norm folded)."""
    from edgeser.checkpoint import load_checkpoint
    from edgeser.export.exporter import prepare_model

    manifest = read_manifest(bundle)
    source = manifest.source_checkpoint
    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
    elif source.get("kind") == "checkpoint":
        path = Path(source["path"])
        if not path.is_dir():
            raise BundleError(f"{bundle}: source checkpoint {path} not found; pass --checkpoint")
        model = load_checkpoint(path)
    else:
        model, _ = prepare_model(manifest.model, manifest.size, None, random_weights=True)
    return model.prepare_for_export()


def float_pipeline(bundle: Path, checkpoint: Path | None = None, threads: int | None = None) -> Any:
    """A `Pipeline` over the bundle's own stage graph (layout, CTC vocabulary, tokenizer) whose runners are the
    PyTorch stages of the model the bundle came from."""
    import torch

    from edgeser.modelling.runner import torch_runners
    from edgeser.runtime.pipeline import Pipeline
    from edgeser.stages import StageGraph

    if threads:
        torch.set_num_threads(int(threads))
    manifest = validate_bundle(bundle, "fp32")
    model = reference_model(bundle, checkpoint)
    graph = StageGraph.from_manifest(manifest, bundle)
    if graph.stages != model.stage_graph().stages:
        raise BundleError(
            f"{bundle}: its stages {graph.stages} are not the model's {model.stage_graph().stages}"
        )
    return Pipeline(
        graph, torch_runners(model), precision="pytorch", backend="pytorch", root=bundle, manifest=manifest
    )


def float_size(bundle: Path, model_parameters: Any = None) -> tuple[int | None, str]:
    """Bytes of the float model as it runs (its parameters), or of its checkpoint file, and what the figure is.

    A checkpoint may reference packaged weights (MiniLM, GloVe) instead of holding them, so its file can be much
    smaller than the model: the parameter bytes are the figure that compares with the exported graphs."""
    source = read_manifest(bundle).source_checkpoint
    weights = (
        Path(str(source.get("path", ""))) / "model.safetensors"
        if source.get("kind") == "checkpoint"
        else None
    )
    on_disk = weights.stat().st_size if weights is not None and weights.is_file() else None
    if model_parameters is not None:
        file_note = f"; its checkpoint file holds {on_disk / 1e6:.1f} MB" if on_disk is not None else ""
        return int(
            sum(p.numel() * p.element_size() for p in model_parameters)
        ), f"size: parameter bytes of the float model{file_note}"
    if on_disk is not None:
        return on_disk, "size: the checkpoint's safetensors file"
    return None, ""
