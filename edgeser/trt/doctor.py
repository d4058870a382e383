"""`edgeser doctor BUNDLE --target tensorrt[:10|:11]`: will TensorRT's ONNX parser and builder take these graphs?

Offline (no GPU, no TensorRT). Every node is checked against the ONNX-TensorRT operator table of the target line
(`edgeser.trt.operators`), its Q/DQ nodes against TensorRT's explicit-quantisation rules (symmetric INT8/FP8 with
zero point 0, constant positive scales, activations per tensor, weights per channel on the axis TensorRT uses
for the consuming op), and every dynamic axis of every graph input against an optimisation profile. Findings are
errors (the parser or builder will refuse, or will compute something else than the CPU graph) or warnings (it
builds, maybe slower or through a fallback).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeser.reports import markdown_table
from edgeser.trt.graph import GraphFacts, load_graph, node_attr
from edgeser.trt.operators import NO_TRT_TYPE, QUANTIZED, Target, load_table, op_entry, table_source
from edgeser.trt.qdq import check_qdq

ERROR, WARNING = "error", "warning"
QDQ = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning
    precision: str
    stage: str
    rule: (
        str  # unsupported-op, qoperator, zero-point, scale, per-channel, dtype, constant-input, profile, ...
    )
    message: str
    node: str = ""
    op: str = ""


@dataclass
class StageSummary:
    precision: str
    stage: str
    path: str
    nodes: int
    opset: int
    op_counts: dict[str, int]
    qdq: dict[str, int] = field(
        default_factory=dict
    )  # Q, DQ, per-channel weights, quantised GEMM/conv inputs
    errors: int = 0
    warnings: int = 0


@dataclass
class DoctorReport:
    """The doctor's verdict over the checked precisions of one bundle for one TensorRT target."""

    bundle: str
    target: str
    table: dict[str, Any]
    precisions: list[str]
    profiles: dict[str, dict[str, dict[str, list[int]]]]
    profile_source: str
    stages: list[StageSummary]
    findings: list[Finding]
    passed: bool = False
    plots: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(
        default_factory=dict
    )  # variants not meant for TensorRT -> why not checked

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def to_markdown(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        derived = ", derived for this line" if self.table["derived"] else ""
        summary = (
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) over "
            f"{', '.join(self.precisions)}."
            + "".join(
                f" Not checked: {p} ({why}; check it with --precision {p})."
                for p, why in self.skipped.items()
            )
        )
        source = (
            f"Operator table: {self.table['repository']} `{self.table['path']}` @ {self.table['commit'][:12]} "
            f"(TensorRT {self.table['table_version']} matrix{derived}; checked from TensorRT "
            f"{self.table['checked_from']})."
        )
        lines = [
            f"# TensorRT doctor: {self.bundle} ({self.target}) — {verdict}",
            "",
            summary,
            "",
            source,
            "",
            "## Stages",
            "",
        ]
        rows = [
            [
                s.precision,
                s.stage,
                str(s.nodes),
                str(s.opset),
                str(s.qdq.get("quantize", 0)),
                str(s.qdq.get("dequantize", 0)),
                str(s.qdq.get("per_channel_weights", 0)),
                str(s.errors),
                str(s.warnings),
            ]
            for s in self.stages
        ]
        lines += markdown_table(
            ["precision", "stage", "nodes", "opset", "Q", "DQ", "per-channel weights", "errors", "warnings"],
            rows,
        )
        lines += ["", f"## Optimisation profiles ({self.profile_source})", ""]
        prof_rows = [
            [
                stage,
                name,
                "x".join(map(str, p["min"])),
                "x".join(map(str, p["opt"])),
                "x".join(map(str, p["max"])),
            ]
            for stage, inputs in self.profiles.items()
            for name, p in inputs.items()
        ]
        lines += markdown_table(["stage", "input", "min", "opt", "max"], prof_rows) if prof_rows else ["none"]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if not items:
                continue
            lines += ["", f"## {title}", ""]
            shown = Counter[tuple[str, str, str, str]]()
            for f in items:
                key = (f.precision, f.stage, f.rule, f.message)
                shown[key] += 1
            for (precision, stage, rule, message), count in shown.items():
                times = f" (x{count})" if count > 1 else ""
                lines.append(f"- **{precision}/{stage}** [{rule}] {message}{times}")
        return "\n".join(lines) + "\n"


def check_node_table(facts: GraphFacts, node: Any, target: Target, add: Any) -> None:
    """The operator-table rules for one node: supported op, element types, constant inputs, attributes."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        add(
            ERROR,
            "custom-op",
            f"{node.domain}::{op} is not a standard ONNX op: TensorRT's parser would need a plugin for it",
            node,
        )
        return
    entry = op_entry(target.major, op)
    if entry is None:
        add(ERROR, "unsupported-op", f"{op} is not in the ONNX-TensorRT operator table", node)
        return
    if not entry["supported"]:
        if entry.get("qoperator"):
            add(
                ERROR,
                "qoperator",
                f"{op} is a QOperator/integer op the TensorRT parser does not import; "
                "TensorRT takes INT8 only as QuantizeLinear/DequantizeLinear (the int8-dynamic "
                "variant is CPU-only: use the QDQ int8 variant)",
                node,
            )
        else:
            add(
                ERROR,
                "unsupported-op",
                f"{op} is not supported by the TensorRT {target.major}.x parser",
                node,
            )
        return
    if "since" in entry and not target.at_least(entry["since"]):
        add(ERROR, "unsupported-op", f"{op} needs TensorRT {entry['since']} or later", node)
    if op not in QDQ:
        check_types(facts, node, entry, add)
    for rule in entry.get("const_inputs", []):
        index = rule["index"]
        if index >= len(node.input) or not node.input[index]:
            continue
        if "until" in rule and target.at_least(rule["until"]):
            continue
        name = node.input[index]
        strict = "initializer" in rule["why"]
        if not (facts.is_weight(name) if strict else facts.is_constant(name)):
            add(
                ERROR,
                "constant-input",
                f"{op} input `{rule['name']}` is computed at run time; TensorRT "
                f"{target.label} needs it {rule['why'].removeprefix('must be ')}",
                node,
            )
    for attr, need in entry.get("attrs", {}).items():
        value = node_attr(node, attr)
        if value is None:
            continue
        bad = (
            ("allowed" in need and value not in need["allowed"])
            or ("equals" in need and value != need["equals"])
            or (need.get("all_ones") and any(v != 1 for v in value))
        )
        if bad:
            add(ERROR, "attribute", f"{op} attribute {attr}={value!r} is not supported by TensorRT", node)
    for attr in entry.get("forbidden_attrs", []):
        if node_attr(node, attr) is not None:
            add(ERROR, "attribute", f"{op} attribute {attr} is not supported by TensorRT", node)
    if "max_used_outputs" in entry:
        used = [
            o
            for o in node.output[entry["max_used_outputs"] :]
            if o and (facts.consumers.get(o) or o in facts.graph_outputs)
        ]
        if used:
            add(
                ERROR,
                "outputs",
                f"{op} output(s) {', '.join(used)} are used; TensorRT produces only the first",
                node,
            )


def check_types(facts: GraphFacts, node: Any, entry: dict[str, Any], add: Any) -> None:
    """Element types against the table: types TensorRT has no DataType for are errors; quantised types outside
    Q/DQ are errors; types the table does not list for the op are warnings (no kernel may exist)."""
    which = entry.get("check", 0)
    names = node.output[:1] if which == "output" else node.input[which : which + 1]
    if node.op_type in ("Cast", "CastLike"):
        names = [*node.input[:1], *node.output[:1]]
    for name in names:
        dtype = facts.dtypes.get(name)
        if dtype is None:
            continue
        if dtype in NO_TRT_TYPE or dtype.startswith("ONNX"):
            add(ERROR, "dtype", f"{node.op_type} on {dtype}: TensorRT has no such data type", node)
        elif dtype == "DOUBLE":
            add(WARNING, "dtype", f"{node.op_type} on DOUBLE: TensorRT casts it down to FP32, clamping", node)
        elif dtype not in entry["types"] and dtype not in QUANTIZED and dtype != "UINT8":
            add(
                WARNING,
                "dtype",
                f"{node.op_type} on {dtype}: not among the types the table lists "
                f"({', '.join(entry['types'])}); the builder may find no kernel",
                node,
            )
    for index, name in enumerate(node.input):
        dtype = facts.dtypes.get(name)
        if dtype in QUANTIZED and node.op_type not in QDQ and not facts.is_weight(name):
            add(
                ERROR,
                "dtype",
                f"{node.op_type} input {index} is {dtype}: TensorRT accepts quantised types only "
                "between QuantizeLinear and DequantizeLinear",
                node,
            )
        elif dtype == "UINT8" and name not in facts.graph_inputs and node.op_type not in ("Cast", *QDQ):
            add(
                ERROR,
                "dtype",
                f"{node.op_type} input {index} is UINT8: TensorRT allows UINT8 only on network "
                "inputs and outputs",
                node,
            )


def check_graph(
    facts: GraphFacts, target: Target, precision: str, stage: str
) -> tuple[list[Finding], StageSummary]:
    """Every rule over one stage graph."""
    findings: list[Finding] = []

    def add(severity: str, rule: str, message: str, node: Any = None) -> None:
        findings.append(
            Finding(
                severity,
                precision,
                stage,
                rule,
                message,
                node.name if node is not None else "",
                node.op_type if node is not None else "",
            )
        )

    low, high = load_table(target.major)["opsets"]
    if not low <= facts.opset <= high:
        add(ERROR, "opset", f"opset {facts.opset} is outside TensorRT {target.major}.x's range {low}-{high}")
    for node in facts.nodes:
        check_node_table(facts, node, target, add)
        if node.op_type in QDQ and node.domain in ("", "ai.onnx"):
            check_qdq(facts, node, add)
    for name in sorted(facts.graph_inputs | facts.graph_outputs):
        dtype = facts.dtypes.get(name)
        if dtype in NO_TRT_TYPE or dtype == "DOUBLE":
            add(ERROR, "dtype", f"graph input/output {name} is {dtype}: not a TensorRT I/O type")
    counts = Counter(n.op_type for n in facts.nodes)
    summary = StageSummary(
        precision,
        stage,
        str(facts.path),
        len(facts.nodes),
        facts.opset,
        dict(sorted(counts.items())),
        qdq_counts(facts, counts),
    )
    summary.errors = sum(f.severity == ERROR for f in findings)
    summary.warnings = sum(f.severity == WARNING for f in findings)
    return findings, summary


def qdq_counts(facts: GraphFacts, counts: Counter[str]) -> dict[str, int]:
    per_channel = 0
    for node in facts.nodes:
        if node.op_type == "DequantizeLinear" and len(node.input) > 1:
            scale = facts.weight_value(node.input[1])
            per_channel += int(scale is not None and scale.size > 1)
    return {
        "quantize": counts.get("QuantizeLinear", 0),
        "dequantize": counts.get("DequantizeLinear", 0),
        "per_channel_weights": per_channel,
        "casts": counts.get("Cast", 0),
    }


def run_doctor(
    bundle: Path, target: Target, precisions: list[str] | None = None, profile_options: tuple[str, ...] = ()
) -> DoctorReport:
    """Check the bundle's graphs of `precisions` (default: every listed one) for `target`."""
    from edgeser.bundle import CPU_VARIANTS, validate_bundle  # the doctor skips them unless asked
    from edgeser.errors import BundleError
    from edgeser.runtime.profiles import resolve_profiles

    manifest = validate_bundle(bundle, "fp32")
    skipped = {} if precisions else {p: CPU_VARIANTS[p] for p in manifest.precisions if p in CPU_VARIANTS}
    chosen = precisions or [p for p in manifest.precisions if p not in CPU_VARIANTS]
    unknown = [p for p in chosen if p not in manifest.precisions]
    if unknown:
        raise BundleError(
            f"{bundle}: no {', '.join(unknown)} variant (available: {', '.join(manifest.precisions)})"
        )
    findings: list[Finding] = []
    summaries: list[StageSummary] = []
    for precision in chosen:
        validate_bundle(bundle, precision)
        for stage, entry in manifest.precisions[precision].items():
            stage_findings, summary = check_graph(load_graph(bundle / entry.path), target, precision, stage)
            findings += stage_findings
            summaries.append(summary)
    stages = [s for s in manifest.stages]
    profiles, missing, source = resolve_profiles(bundle, manifest, stages, profile_options)
    for name in missing:
        findings.append(
            Finding(
                ERROR,
                "all",
                name.split(":")[0],
                "profile",
                f"no optimisation profile covers the dynamic axes of {name}: run `edgeser calibrate` "
                "(profiles default to the clips' lengths) or pass --profile STAGE:INPUT=MIN,OPT,MAX",
            )
        )
    table = {**table_source(target.major), "checked_from": f"{target.floor[0]}.{target.floor[1]}"}
    report = DoctorReport(
        str(bundle),
        target.label,
        table,
        chosen,
        {s: {n: p.as_dict() for n, p in inputs.items()} for s, inputs in profiles.items()},
        source,
        summaries,
        findings,
        skipped=skipped,
    )
    report.passed = not report.errors
    return report


def report_dict(report: DoctorReport) -> dict[str, Any]:
    return asdict(report)
