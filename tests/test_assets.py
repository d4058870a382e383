"""Shipped files are found through the package (`edgeser.assets`), the same from a wheel, an editable install or a
checkout: the recipes, the default checkpoints with their cards, the demo clips, the calibration sentences.

Runs on the base install too (tools/check_wheel.sh), where the package lies in a venv's site-packages.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import edgeser
from edgeser.assets import ZOO_ENV, demo_clips, shipped_dir, zoo_dir

MODELS = ("cmgi", "gcf2net", "mscnn_spu_att", "saser", "stfnet")


def test_every_shipped_file_lies_inside_the_imported_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ZOO_ENV, raising=False)
    package = Path(edgeser.__file__).resolve().parent
    assert (
        shipped_dir().resolve() == package / "shipped"
        and zoo_dir().resolve() == package / "shipped" / "models"
    )
    for name in MODELS:
        recipe = json.loads((zoo_dir() / f"{name}.json").read_text(encoding="utf-8"))
        assert recipe["model"] == name and "small" in recipe["sizes"]
        checkpoint = zoo_dir() / "checkpoints" / name
        for part in ("model.safetensors", "checkpoint.json", "MODEL_CARD.md", "card.json"):
            assert (checkpoint / part).is_file(), checkpoint / part
    rows = list(csv.DictReader(demo_clips().open(encoding="utf-8")))
    assert len(rows) == 128 and all((demo_clips().parent / row["path"]).is_file() for row in rows)
    assert "CC BY-NC-SA 4.0" in (demo_clips().parent / "README.md").read_text(encoding="utf-8")
    assert (package / "calibrate" / "data" / "sentences.txt").stat().st_size > 0


def test_the_default_checkpoints_reference_pretrained_backbones_by_package() -> None:
    """MiniLM / GloVe / Whisper come from their own packages: no shipped checkpoint copies them."""
    sizes = {name: (zoo_dir() / "checkpoints" / name / "model.safetensors").stat().st_size for name in MODELS}
    assert max(sizes.values()) <= 20e6, sizes  # all-MiniLM-L6-v2 alone is 90 MB
    total = sum(f.stat().st_size for f in shipped_dir().rglob("*") if f.is_file())
    assert total <= 60e6, f"edgeser/shipped/ holds {total / 1e6:.1f} MB: the wheel carries all of it"


def test_edgeser_zoo_points_the_zoo_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ZOO_ENV, str(tmp_path))
    assert zoo_dir() == tmp_path
    monkeypatch.setenv(ZOO_ENV, "")
    assert zoo_dir() == shipped_dir() / "models"
