"""Dynamic INT8: weights INT8, activations quantised at run time by onnxruntime (CPU only; TensorRT refuses it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from edgeser.files import staging_dir
from edgeser.progress import STDERR, Progress
from edgeser.quantize.graph import DYNAMIC_OP_TYPES, NARROW_WIDTH, quantisable_nodes, resolve_exclusions
from edgeser.quantize.variants import StageReport, op_counts, preprocess, write_variant


def quantize_int8_dynamic(
    bundle: Path,
    op_types: tuple[str, ...] = DYNAMIC_OP_TYPES,
    exclude: tuple[str, ...] | None = None,
    per_channel: bool = True,
    min_width: int = NARROW_WIDTH,
    progress: Progress = STDERR,
) -> dict[str, StageReport]:
    """Dynamic INT8 (weights int8, activations quantised at run time), MatMul only by default; writes
    `bundle/int8-dynamic/`. The front end stays float (a ConvInteger/MatMulInteger there wrecks accuracy)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with staging_dir(bundle, "quantize") as tmp:

        def write(stage: str, fp32: Path, out: Path) -> StageReport:
            prepared = tmp / f"{stage}.prepared.onnx"
            how = preprocess(fp32, prepared)
            model = onnx.load(str(prepared))
            exclusions = resolve_exclusions(model, exclude, min_width)
            quantize_dynamic(
                str(prepared),
                str(out),
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclusions.names,
            )
            effective = exclusions.effective(model, op_types)
            quantisable = len(quantisable_nodes(model, op_types))
            if quantisable == len(effective):
                shutil.copyfile(fp32, out)  # nothing left to quantise: the float graph, as for static INT8
                return StageReport("fp32", 0, effective, op_counts(out), how)
            return StageReport("int8-dynamic", quantisable - len(effective), effective, op_counts(out), how)

        settings = {
            "kind": "dynamic",
            "op_types": list(op_types),
            "per_channel": per_channel,
            "weight_type": "QInt8",
            "exclude": list(exclude) if exclude is not None else "default",
            "min_width": min_width,
        }
        return write_variant(bundle, "int8-dynamic", write, settings, "int8-dynamic", progress)
