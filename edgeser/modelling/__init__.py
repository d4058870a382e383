"""PyTorch side of edgeser: the five seed models split into export stages (needs the `export` extra)."""

# The zoo's model names (torch-free, for command-line choices); `registry.MODEL_CLASSES` maps them to classes.
MODEL_NAMES = ("cmgi", "gcf2net", "mscnn_spu_att", "saser", "stfnet")
