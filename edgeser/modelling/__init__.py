"""PyTorch side of edgeser: the five seed models split into export stages (needs the `export` extra)."""

from typing import Literal, get_args

# The zoo's model names (torch-free, for command-line choices); `registry.MODEL_CLASSES` maps them to classes.
ModelName = Literal["cmgi", "gcf2net", "mscnn_spu_att", "saser", "stfnet"]
MODEL_NAMES: tuple[ModelName, ...] = get_args(ModelName)
