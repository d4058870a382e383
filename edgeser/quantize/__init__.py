"""Quantised bundle variants (static INT8 QDQ, dynamic INT8, FP16), accuracy-controlled INT8, and variant checks."""

from edgeser.quantize.dynamic import quantize_int8_dynamic
from edgeser.quantize.fp16 import convert_fp16
from edgeser.quantize.ranges import METHODS
from edgeser.quantize.variants import (
    Int8Options,
    StageReport,
    add_precision,
    quantize_int8,
    quantize_int8_tensorrt,
)

__all__ = [
    "METHODS",
    "Int8Options",
    "StageReport",
    "add_precision",
    "convert_fp16",
    "quantize_int8",
    "quantize_int8_dynamic",
    "quantize_int8_tensorrt",
]
