"""Write edgeser's TensorRT operator tables (`edgeser/trt/data/onnx-tensorrt-{10,11}.json`).

Source: the ONNX-TensorRT parser's support matrix, `docs/operators.md` of onnx/onnx-tensorrt at commit
fa5aa9f61e7781d2ca8f5351d42c1f19525a6124 ("TensorRT 10.15 supports operators in the inclusive range of opset 9 to
opset 24"), transcribed below as data: per operator the supported element types and the restrictions the parser
or builder enforces, in edgeser's own words. Restrictions that later 10.x releases lifted carry the release that
lifted them (`until`), from the same repository's `docs/Changelog.md`:
  10.3  tensor `axes` inputs for Slice;  10.4  tensor `axes` for Pad.
The 11.x table is derived, not transcribed: no 11.x `operators.md` was available. It is the 10.15 matrix plus the
parser changes in the TensorRT 11.x release notes (11.0: Swish; 11.2: DFT, 5-D GridSample; 11.5: opset 25),
with every 10.x-era `until` lifted (11.0 is later than all of them).

    python tools/trt_operator_table.py        # rewrites both JSON files
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "edgeser" / "trt" / "data"
SOURCE = {
    "repository": "onnx/onnx-tensorrt",
    "path": "docs/operators.md",
    "commit": "fa5aa9f61e7781d2ca8f5351d42c1f19525a6124",
    "table_version": "10.15",
    "changelog": "docs/Changelog.md (TensorRT 10.0 GA to 10.15 GA entries)",
}
F = "FP32 FP16 BF16"
I = "INT32 INT64"
B = "BOOL"
HALF = "FP32 FP16"
REDUCE_AXES = [{"index": 1, "name": "axes", "why": "reduction axes must be an initializer"}]
# The matrix says "2D or 3D pooling only", but the parser's poolingHelper (importerUtils.cpp) unsqueezes 1-D pools
# to 2-D, so only the dilation restriction is kept.
POOL = {"attrs": {"dilations": {"all_ones": True}}}

# op -> (types or None when unsupported, rules)
TABLE: dict[str, tuple[str | None, dict]] = {
    "Abs": (f"{F} {I}", {}),
    "Acos": (F, {}),
    "Acosh": (F, {}),
    "Add": (f"{F} {I}", {}),
    "AffineGrid": (None, {}),
    "And": (B, {}),
    "ArgMax": (f"{F} {I}", {}),
    "ArgMin": (f"{F} {I}", {}),
    "Asin": (F, {}),
    "Asinh": (F, {}),
    "Atan": (F, {}),
    "Atanh": (F, {}),
    "Attention": (
        f"{F} INT8 FP8",
        {
            "note": "Q, K, V and attn_mask must be 4-D; no past/present key-value "
            "inputs or outputs; no softcap"
        },
    ),
    "AveragePool": (F, dict(POOL)),
    "BatchNormalization": (F, {}),
    "Bernoulli": (None, {}),
    "BitShift": (None, {}),
    "BitwiseAnd": (None, {}),
    "BitwiseNot": (None, {}),
    "BitwiseOr": (None, {}),
    "BitwiseXor": (None, {}),
    "BlackmanWindow": (HALF, {}),
    "Cast": (f"{F} {I} UINT8 {B}", {}),
    "CastLike": (f"{F} {I} UINT8 {B}", {}),
    "Ceil": (F, {}),
    "Col2Im": (None, {}),
    "Celu": (F, {}),
    "CenterCropPad": (None, {}),
    # The matrix lists floating types only; the 10.x importer (onnxOpImporters.cpp, Clip) clips INT32 and INT64
    # with elementwise max/min, so those are listed too.
    "Clip": (f"{F} {I}", {"note": "INT32/INT64 through elementwise max/min (parser source)"}),
    "Compress": (None, {}),
    "Concat": (f"{F} {I} {B}", {}),
    "ConcatFromSequence": (None, {}),
    "Constant": (
        f"{F} FP8 FP4 INT4 {I} {B}",
        {"forbidden_attrs": ["sparse_value", "value_string", "value_strings"]},
    ),
    "ConstantOfShape": (f"{F} FP8 FP4 INT4 {I} {B}", {"check": "output"}),
    "Conv": (F, {}),
    "ConvInteger": (None, {"qoperator": True}),
    "ConvTranspose": (F, {}),
    "Cos": (F, {}),
    "Cosh": (F, {}),
    "CumSum": (F, {"const_inputs": [{"index": 1, "name": "axis", "why": "must be a build-time constant"}]}),
    "DFT": (None, {}),
    "DeformConv": (HALF, {}),
    "DepthToSpace": (f"{F} {I}", {}),
    "DequantizeLinear": ("INT8 FP8 FP4 INT4", {}),
    "Det": (None, {}),
    "Div": (f"{F} {I}", {}),
    "Dropout": (
        F,
        {
            "const_inputs": [
                {"index": 2, "name": "training_mode", "why": "must be an initializer that is False"}
            ]
        },
    ),
    "DynamicQuantizeLinear": (None, {"qoperator": True}),
    "Einsum": (F, {}),
    "Elu": (F, {}),
    "Equal": (f"{F} {I}", {}),
    "Erf": (F, {}),
    "Exp": (F, {}),
    "Expand": (f"{F} {I} {B}", {}),
    "EyeLike": (f"{F} {I} {B}", {}),
    "Flatten": (f"{F} {I} {B}", {}),
    "Floor": (F, {}),
    "Gather": (f"{F} {I} {B}", {}),
    "GatherElements": (f"{F} {I} {B}", {}),
    "GatherND": (f"{F} {I} {B}", {}),
    "Gelu": (f"{F} INT8 {I}", {}),
    "Gemm": (F, {}),
    "GlobalAveragePool": (F, {}),
    "GlobalLpPool": (F, {}),
    "GlobalMaxPool": (F, {}),
    "Greater": (f"{F} {I}", {}),
    "GreaterOrEqual": (f"{F} {I}", {}),
    "GridSample": (HALF, {"note": "4-D input only"}),
    "GroupNormalization": (F, {}),
    "GRU": (F, {}),
    "HammingWindow": (HALF, {}),
    "HannWindow": (HALF, {}),
    "HardSigmoid": (F, {}),
    "HardSwish": (F, {}),
    "Hardmax": (F, {}),
    "Identity": (f"{F} {I} {B}", {}),
    "If": (f"{F} {I} {B}", {}),
    "ImageScaler": (F, {}),
    "ImageDecoder": (None, {}),
    "InstanceNormalization": (F, {}),
    "IsInf": (F, {}),
    "IsNaN": (f"{F} {I}", {}),
    "LayerNormalization": (F, {"max_used_outputs": 1}),
    "LeakyRelu": (F, {}),
    "Less": (f"{F} {I}", {}),
    "LessOrEqual": (f"{F} {I}", {}),
    "Log": (F, {}),
    "LogSoftmax": (F, {}),
    "Loop": (f"{F} {I} {B}", {}),
    "LRN": (F, {}),
    "LSTM": (F, {"attrs": {"input_forget": {"equals": 0}, "layout": {"equals": 0}}}),
    "LpNormalization": (F, {}),
    "LpPool": (F, {"attrs": {"dilations": {"all_ones": True}}}),
    "MatMul": (F, {}),
    "MatMulInteger": (None, {"qoperator": True}),
    "Max": (f"{F} {I}", {}),
    "MaxPool": (F, {**POOL, "max_used_outputs": 1}),
    "MaxRoiPool": (None, {}),
    "MaxUnpool": (None, {}),
    "Mean": (f"{F} FP8 {I}", {}),
    "MeanVarianceNormalization": (F, {}),
    "MelWeightMatrix": (None, {}),
    "Min": (f"{F} {I}", {}),
    "Mish": (HALF, {}),
    "Mod": (f"{F} {I}", {}),
    "Mul": (f"{F} {I}", {}),
    "Multinomial": (None, {}),
    "Neg": (f"{F} {I}", {}),
    "NegativeLogLikelihoodLoss": (None, {}),
    "NonMaxSuppression": (HALF, {}),
    "NonZero": (HALF, {}),
    "Not": (B, {}),
    "OneHot": (
        f"{F} {I} {B}",
        {"const_inputs": [{"index": 1, "name": "depth", "why": "must be a build-time constant"}]},
    ),
    "Optional": (None, {}),
    "OptionalGetElement": (None, {}),
    "OptionalHasElement": (None, {}),
    "Or": (B, {}),
    "Pad": (
        f"{F} {I}",
        {
            "const_inputs": [
                {
                    "index": 3,
                    "name": "axes",
                    "until": "10.4",
                    "why": "tensor axes are accepted from TensorRT 10.4 on",
                }
            ]
        },
    ),
    "ParametricSoftplus": (F, {}),
    "Pow": (f"{F} {I}", {}),
    "PRelu": (F, {}),
    "QLinearConv": (None, {"qoperator": True}),
    "QLinearMatMul": (None, {"qoperator": True}),
    "QuantizeLinear": (F, {}),
    "RandomNormal": (F, {}),
    "RandomNormalLike": (F, {}),
    "RandomUniform": (F, {}),
    "RandomUniformLike": (F, {}),
    "Range": (f"{F} {I}", {}),
    "Reciprocal": (F, {}),
    **{
        op: (f"{F} {I}", {"const_inputs": REDUCE_AXES})
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
    "RegexFullMatch": (None, {}),
    "Relu": (f"{F} {I}", {}),
    "Reshape": (f"{F} {I} {B}", {}),
    "Resize": (
        F,
        {
            "attrs": {
                "coordinate_transformation_mode": {
                    "allowed": [
                        "half_pixel",
                        "pytorch_half_pixel",
                        "tf_half_pixel_for_nn",
                        "asymmetric",
                        "align_corners",
                    ]
                },
                "mode": {"allowed": ["nearest", "linear"]},
                "antialias": {"equals": 0},
            }
        },
    ),
    "ReverseSequence": (f"{F} {I} {B}", {}),
    "RMSNormalization": (F, {}),
    "RNN": (F, {}),
    "RoiAlign": (HALF, {}),
    "RotaryEmbedding": (F, {}),
    "Round": (F, {}),
    "STFT": (
        "FP32",
        {
            "const_inputs": [
                {"index": 1, "name": "frame_step", "why": "must be an initializer"},
                {"index": 2, "name": "window", "why": "must be an initializer"},
            ]
        },
    ),
    "ScaledTanh": (F, {}),
    "Scan": (F, {}),
    "Scatter": (f"{F} {I}", {}),
    "ScatterElements": (f"{F} {I}", {}),
    "ScatterND": (f"{F} {I}", {"attrs": {"reduction": {"allowed": ["none"]}}}),
    "Selu": (F, {}),
    **{
        op: (None, {})
        for op in (
            "SequenceAt",
            "SequenceConstruct",
            "SequenceEmpty",
            "SequenceErase",
            "SequenceInsert",
            "SequenceLength",
            "SequenceMap",
        )
    },
    "Shape": (f"{F} {I} {B}", {}),
    "Shrink": (f"{F} {I}", {}),
    "Sigmoid": (F, {}),
    "Sign": (f"{F} {I}", {}),
    "Sin": (F, {}),
    "Sinh": (F, {}),
    "Size": (f"{F} {I} {B}", {}),
    "Slice": (
        f"{F} {I} {B}",
        {
            "const_inputs": [
                {
                    "index": 3,
                    "name": "axes",
                    "until": "10.3",
                    "why": "tensor axes are accepted from TensorRT 10.3 on",
                }
            ]
        },
    ),
    "Softmax": (F, {}),
    "SoftmaxCrossEntropyLoss": (None, {}),
    "Softplus": (F, {}),
    "Softsign": (F, {}),
    "SpaceToDepth": (f"{F} {I}", {}),
    "Split": (f"{F} {I} {B}", {}),
    "SplitToSequence": (None, {}),
    "Sqrt": (F, {}),
    "Squeeze": (
        f"{F} {I} {B}",
        {"const_inputs": [{"index": 1, "name": "axes", "why": "must be resolvable to a constant"}]},
    ),
    "StringConcat": (None, {}),
    "StringNormalizer": (None, {}),
    "StringSplit": (None, {}),
    "Sub": (f"{F} {I}", {}),
    "Sum": (f"{F} {I}", {}),
    "Tan": (F, {}),
    "Tanh": (F, {}),
    "TensorScatter": (f"{F} INT32", {}),
    "TfIdfVectorizer": (None, {}),
    "ThresholdedRelu": (F, {}),
    "Tile": (f"{F} {I} {B}", {}),
    "TopK": (f"{F} {I}", {"attrs": {"sorted": {"equals": 1}}}),
    "Transpose": (f"{F} {I} {B}", {}),
    "Trilu": (f"{F} {I} {B}", {}),
    "Unique": (None, {}),
    "Unsqueeze": (
        f"{F} {I} {B}",
        {"const_inputs": [{"index": 1, "name": "axes", "why": "must be resolvable to a constant"}]},
    ),
    "Upsample": (F, {}),
    "Where": (f"{F} {I} {B}", {"check": 1}),
    "Xor": (B, {}),
}
# QOperator ops of onnxruntime's quantiser (standard domain and com.microsoft) that the parser has no importer for.
QOPERATOR_EXTRA = (
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearSoftmax",
    "QLinearWhere",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QLinearConvTranspose",
)


def table(major: int) -> dict:
    ops: dict[str, dict] = {}
    for op, (types, rules) in TABLE.items():
        entry: dict = {"supported": types is not None}
        if types is not None:
            entry["types"] = types.split()
        entry.update(json.loads(json.dumps(rules)))
        ops[op] = entry
    for op in QOPERATOR_EXTRA:
        ops[op] = {"supported": False, "qoperator": True}
    data = {"schema": 1, "major": major, "source": dict(SOURCE), "ops": ops}
    if major == 10:
        data.update(
            floor="10.0",
            opsets=[9, 24],
            derived=False,
            note="Transcribed from the 10.15 matrix; restrictions lifted within 10.x carry `until`.",
        )
        return data
    for entry in ops.values():  # every restriction lifted within 10.x is gone in 11.0
        kept = [rule for rule in entry.get("const_inputs", []) if not rule.get("until", "").startswith("10.")]
        if kept:
            entry["const_inputs"] = kept
        else:
            entry.pop("const_inputs", None)
    ops["Swish"] = {"supported": True, "types": F.split(), "since": "11.0"}
    ops["DFT"] = {"supported": True, "types": HALF.split(), "since": "11.2", "note": "cuFFT plugin from 11.2"}
    ops["GridSample"]["note"] = "4-D input; 5-D from 11.2"
    data.update(
        floor="11.0",
        opsets=[9, 24],
        derived=True,
        note="Derived: the 10.15 matrix plus the parser changes of the TensorRT 11.0-11.5 release notes "
        "(11.0 Swish; 11.2 DFT, 5-D GridSample; 11.5 opset 25). No 11.x operators.md was available.",
    )
    data["source"]["derived_from_release_notes"] = [
        "TensorRT 11.0 release (Parsers: Swish)",
        "TensorRT 11.2 release (Parsers: DFT, 5D GridSample)",
        "TensorRT 11.5 release (Parsers: opset 25)",
    ]
    return data


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for major in (10, 11):
        path = OUT / f"onnx-tensorrt-{major}.json"
        path.write_text(json.dumps(table(major), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {path} ({len(table(major)['ops'])} operators)")


if __name__ == "__main__":
    main()
