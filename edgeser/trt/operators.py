"""The ONNX-TensorRT parser's operator tables, shipped as package data (`edgeser/trt/data/onnx-tensorrt-*.json`).

Each table names its source (onnx/onnx-tensorrt `docs/operators.md`, commit, table version) and whether it was
transcribed or derived; `tools/trt_operator_table.py` writes them and says how.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from edgeser.errors import TargetError

DATA = Path(__file__).with_name("data")
MAJORS = (10, 11)
# ONNX TensorProto element types -> the type names of the operator tables.
ONNX_TYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    14: "COMPLEX64",
    15: "COMPLEX128",
    16: "BF16",
    17: "FP8",
    18: "FP8",
    19: "FP8",
    20: "FP8",
    21: "UINT4",
    22: "INT4",
    23: "FP4",
}
QUANTIZED = {"INT8", "FP8", "INT4", "FP4"}  # TensorRT's "quantized types": only through Q/DQ
NO_TRT_TYPE = {"UINT16", "INT16", "STRING", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128", "UINT4"}


@dataclass(frozen=True)
class Target:
    """A TensorRT line and the oldest release in it the check must hold for (`tensorrt:10`, `tensorrt:10.7`)."""

    major: int
    floor: tuple[int, int]

    @property
    def label(self) -> str:
        return f"tensorrt{self.major}" if self.floor[1] == 0 else f"tensorrt{self.floor[0]}.{self.floor[1]}"

    def at_least(self, version: str) -> bool:
        """True when every release from the floor on is at least `version` ("10.3")."""
        return self.floor >= parse_version(version)


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def parse_target(text: str) -> Target:
    """`tensorrt`, `tensorrt:10`, `tensorrt:11`, `tensorrt:10.7` -> Target (bare `tensorrt` means 10)."""
    match = re.fullmatch(r"tensorrt(?::(\d+)(?:\.(\d+))?)?", text.strip().lower())
    if match is None:
        raise TargetError(
            f"--target {text!r}: use tensorrt, tensorrt:10, tensorrt:11 or tensorrt:MAJOR.MINOR"
        )
    major = int(match.group(1) or 10)
    if major not in MAJORS:
        raise TargetError(
            f"--target {text!r}: edgeser has operator tables for TensorRT "
            f"{' and '.join(map(str, MAJORS))} only"
        )
    table_floor = parse_version(load_table(major)["floor"])
    floor = (major, int(match.group(2))) if match.group(2) is not None else table_floor
    return Target(major, max(floor, table_floor))


@cache
def load_table(major: int) -> dict[str, Any]:
    path = DATA / f"onnx-tensorrt-{major}.json"
    try:
        table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return table
    except (OSError, json.JSONDecodeError) as err:
        raise TargetError(f"{path}: operator table unreadable ({err}); reinstall edgeser") from err


def table_source(major: int) -> dict[str, Any]:
    """Where a table comes from: repository, path, commit, table version, derived or transcribed."""
    table = load_table(major)
    return {
        **table["source"],
        "floor": table["floor"],
        "opsets": table["opsets"],
        "derived": table["derived"],
        "note": table["note"],
    }


def op_entry(major: int, op_type: str) -> dict[str, Any] | None:
    entry: dict[str, Any] | None = load_table(major)["ops"].get(op_type)
    return entry
