"""Every TensorRT Python name edgeser uses exists in the real bindings of TensorRT 10.3 (JetPack 6), 10.16 and 11.4,
or sits behind an explicit `major` version branch. The name lists come from the PyPI wheels
(`tools/trt_api_names.py`); this test parses edgeser's TensorRT code (AST) and attributes each name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API = REPO / "tests" / "data" / "tensorrt_api"
CUDA_API = REPO / "tests" / "data" / "cuda_api"
SOURCES = [
    REPO / "edgeser" / "trt" / "build.py",
    REPO / "edgeser" / "runtime" / "tensorrt.py",
    REPO / "edgeser" / "runtime" / "engines.py",
]
# Variables (or attribute names) that hold TensorRT objects, and the class each is.
OBJECTS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "config": "IBuilderConfig",
    "parser": "OnnxParser",
    "profile": "IOptimizationProfile",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "runtime": "Runtime",
    "inspector": "EngineInspector",
    "cache": "ITimingCache",
}
# What TensorRT methods return, for chained calls.
RETURNS = {
    "get_timing_cache": "ITimingCache",
    "create_engine_inspector": "EngineInspector",
    "get_tensor_dtype": "DataType",
    "get_tensor_mode": "TensorIOMode",
    "create_execution_context": "IExecutionContext",
    "deserialize_cuda_engine": "ICudaEngine",
    "create_builder_config": "IBuilderConfig",
    "create_optimization_profile": "IOptimizationProfile",
    "create_network": "INetworkDefinition",
    "create_timing_cache": "ITimingCache",
    "build_serialized_network": "IHostMemory",
}


def load_api() -> dict[int, list[dict]]:
    versions: dict[int, list[dict]] = {}
    for path in sorted(API.glob("*.json")):
        data = json.loads(path.read_text())
        versions.setdefault(int(data["version"].split(".")[0]), []).append(data)
    return versions


def version_scope(test: ast.expr) -> tuple[set[int], set[int]] | None:
    """`major >= 11` -> ({11}, {10}); `major < 11` -> ({10}, {11}); other tests -> None."""
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "major"
        and len(test.ops) == 1
        and isinstance(test.comparators[0], ast.Constant)
    ):
        bound, op = int(test.comparators[0].value), test.ops[0]
        majors = {10, 11}
        inside = {
            m
            for m in majors
            if (
                m >= bound
                if isinstance(op, ast.GtE)
                else m < bound
                if isinstance(op, ast.Lt)
                else m > bound
                if isinstance(op, ast.Gt)
                else m <= bound
            )
        }
        return inside, majors - inside
    return None


def receiver_class(node: ast.expr) -> str | None:
    """The TensorRT class of an expression, from its variable name or the method that produced it."""
    if isinstance(node, ast.Name):
        return OBJECTS.get(node.id)
    if isinstance(node, ast.Attribute) and not isinstance(node.value, ast.Call):
        return (
            OBJECTS.get(node.attr)
            if not (isinstance(node.value, ast.Name) and node.value.id == "trt")
            else None
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return RETURNS.get(node.func.attr)
    return None


def trt_chain(node: ast.Attribute) -> list[str] | None:
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if isinstance(current, ast.Name) and current.id == "trt":
        return parts[::-1]
    return None


def uses(source: str) -> list[tuple[str, str, set[int], int]]:
    """(kind, dotted name, majors it must exist in, line) for every TensorRT name in `source`."""
    found: list[tuple[str, str, set[int], int]] = []

    def visit(node: ast.AST, majors: set[int]) -> None:
        if isinstance(node, ast.If):
            scope = version_scope(node.test)
            if scope is not None:
                visit(node.test, majors)
                for child in node.body:
                    visit(child, majors & scope[0])
                for child in node.orelse:
                    visit(child, majors & scope[1])
                return
        if isinstance(node, ast.Attribute):
            chain = trt_chain(node)
            if chain is not None:
                found.append(("trt", ".".join(chain), majors, node.lineno))
                return
            owner = receiver_class(node.value)
            if owner is not None:
                found.append(("method", f"{owner}.{node.attr}", majors, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, majors)

    visit(ast.parse(source), {10, 11})
    return found


def missing(kind: str, name: str, api: dict) -> bool:
    classes, module = api["classes"], set(api["module"]) | {"__version__"}
    parts = name.split(".")
    if kind == "method":
        owner, attr = ".".join(parts[:-1]), parts[-1]
        return attr not in classes.get(owner, [])
    if parts[0] not in module:
        return True
    for depth in range(1, len(parts)):
        owner = ".".join(parts[:depth])
        if owner not in classes:
            return False  # a value (enum member, function result): its attributes are not TensorRT names
        if parts[depth] not in classes[owner]:
            return True
    return False


def problems(source: str, versions: dict[int, list[dict]]) -> list[str]:
    out = []
    for kind, name, majors, line in uses(source):
        for major in sorted(majors):
            for api in versions[major]:
                if missing(kind, name, api):
                    out.append(f"line {line}: {name} is not in TensorRT {api['version']}")
    return out


def cuda_uses(source: str) -> list[tuple[str, int]]:
    """Dotted cuda-python runtime names (`cudaMalloc`, `cudaMemcpyKind.cudaMemcpyHostToDevice`,
    `cudaDeviceProp.major`) used through `cudart`, `self.rt` or a device-properties variable `props`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        parts, current = [], node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        parts.reverse()
        if isinstance(current, ast.Name) and current.id == "cudart":
            found.append((".".join(parts), node.lineno))
        elif isinstance(current, ast.Name) and current.id == "self" and parts[0] == "rt" and len(parts) > 1:
            found.append((".".join(parts[1:]), node.lineno))
        elif isinstance(current, ast.Name) and current.id == "props" and len(parts) == 1:
            found.append((f"cudaDeviceProp.{parts[0]}", node.lineno))
    return sorted({(n, line) for n, line in found})


def test_every_cuda_runtime_name_exists_in_cuda_python_12_and_13() -> None:
    apis = [json.loads(p.read_text()) for p in sorted(CUDA_API.glob("*.json"))]
    assert {a["version"].split(".")[0] for a in apis} == {"12", "13"}
    names = [n for path in SOURCES for n in cuda_uses(path.read_text())]
    assert {
        "cudaMalloc",
        "cudaMemcpyAsync",
        "cudaMemcpyKind.cudaMemcpyHostToDevice",
        "cudaDeviceProp.major",
    } <= {n for n, _ in names}
    for name, line in names:
        for api in apis:
            head, _, attr = name.partition(".")
            ok = attr in api["classes"].get(head, []) if attr else head in api["module"]
            assert ok, f"line {line}: {name} is not in cuda-bindings {api['version']}"


@pytest.fixture(scope="module")
def versions() -> dict[int, list[dict]]:
    found = load_api()
    assert set(found) == {10, 11} and len(found[10]) >= 2, (
        "name lists for 10.x and 11.x from tools/trt_api_names.py"
    )
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_tensorrt_name_exists_in_10x_and_11x(path: Path, versions: dict[int, list[dict]]) -> None:
    source = path.read_text()
    assert uses(source) or path.name == "engines.py"
    assert problems(source, versions) == []


def test_the_check_sees_removed_and_misspelt_names(versions: dict[int, list[dict]]) -> None:
    unbranched = (
        "def f(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n    config.int8_calibrator = None\n"
    )
    found = problems(unbranched, versions)
    assert any("trt" not in p and "BuilderFlag.FP16 is not in TensorRT 11.4" in p for p in found)
    assert any("IBuilderConfig.int8_calibrator is not in TensorRT 11.4" in p for p in found)
    branched = (
        "def f(trt, config, major):\n    if major >= 11:\n        pass\n    else:\n"
        "        config.set_flag(trt.BuilderFlag.FP16)\n"
    )
    assert problems(branched, versions) == []
    assert problems("def f(engine):\n    engine.get_binding_shape(0)\n", versions)  # removed in 10.0
    assert problems("def f(trt):\n    trt.Builderr(None)\n", versions)
