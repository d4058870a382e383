"""The model zoo: the recipe files (`edgeser.assets.zoo_dir`) and the classes that build each seed model."""

from __future__ import annotations

import copy
import importlib
import json
from typing import Any

from edgeser.assets import zoo_dir
from edgeser.errors import ModelError
from edgeser.modelling import ModelName
from edgeser.modelling.base import SerModel
from edgeser.text import CtcVocab

# name -> "module:Class"; imported on use so one model's missing extra never breaks the rest.
MODEL_CLASSES: dict[ModelName, str] = {
    "cmgi": "edgeser.modelling.cmgi:CmgiModel",
    "gcf2net": "edgeser.modelling.gcf2net:Gcf2NetModel",
    "mscnn_spu_att": "edgeser.modelling.mscnn_spu_att:MscnnSpuAttModel",
    "saser": "edgeser.modelling.saser:SaserModel",
    "stfnet": "edgeser.modelling.stfnet:StfNetModel",
}


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe of one seed model: its sizes (architecture) and training schedules."""
    if name not in MODEL_CLASSES:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_CLASSES))}")
    path = zoo_dir() / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: recipe file for model {name!r} is missing") from None
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: recipe is not valid JSON ({err})") from err


def resolve_size(recipe: dict[str, Any], size: str) -> dict[str, Any]:
    """The architecture config of one size, as a fresh dict the caller may change."""
    sizes = recipe.get("sizes", {})
    if size not in sizes:
        raise ModelError(f"model {recipe.get('model')!r} has no size {size!r}; sizes: {', '.join(sizes)}")
    return copy.deepcopy(sizes[size])


def model_class(name: str) -> type[SerModel]:
    if name not in MODEL_CLASSES:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_CLASSES))}")
    module_name, class_name = MODEL_CLASSES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(
    name: str,
    size: str,
    labels: list[str],
    vocab: CtcVocab | None = None,
    overrides: dict[str, Any] | None = None,
) -> SerModel:
    """Build a freshly initialised model of a zoo size (pretrained backbones load where the recipe names them)."""
    config = resolve_size(load_recipe(name), size)
    config.update(overrides or {})
    config["size"] = size
    return build_from_config(name, config, labels, vocab)


def build_from_config(
    name: str, config: dict[str, Any], labels: list[str], vocab: CtcVocab | None
) -> SerModel:
    """Rebuild a model from a resolved config (what checkpoints store)."""
    cls = model_class(name)
    return cls(copy.deepcopy(config), labels, vocab if vocab is not None else CtcVocab())
