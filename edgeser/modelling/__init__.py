"""PyTorch side of edgeser: the five seed models split into export stages (needs the `export` extra)."""
