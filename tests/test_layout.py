"""The package layout: no import cycle between edgeser's packages or modules (imports inside functions and under
TYPE_CHECKING count too), and every error class lives in edgeser/errors.py."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import edgeser

ROOT = Path(edgeser.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def unit(name: str) -> str:
    """The package (edgeser.runtime) or top-level module (edgeser.stages) a module belongs to."""
    return ".".join(name.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    """Module -> the edgeser modules it imports anywhere in its body (a module importing its own parent package,
    e.g. a command module reading the CLI's helpers, is not an edge: the package runs first)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("edgeser")
            ):
                assert node.module is not None
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("edgeser")]
            edges.update(t for t in targets if is_module(t) and t != name and not name.startswith(t + "."))
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_import_cycle_between_packages_or_modules() -> None:
    graph = import_graph()
    assert len(graph) > 100 and graph["edgeser.runtime.pipeline"], "the scan found edgeser's modules"
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert cycles(packages) == []
    assert cycles(graph) == []


def test_the_runtime_imports_nothing_above_it() -> None:
    """What apps embed builds on the stage contract and its own modules, never on build or check tooling."""
    allowed = {
        "edgeser",
        "edgeser.runtime",
        "edgeser.audio",
        "edgeser.bundle",
        "edgeser.errors",
        "edgeser.files",
        "edgeser.stages",
        "edgeser.text",
    }
    graph = import_graph()
    above = {
        (m, t)
        for m, targets in graph.items()
        if m.startswith("edgeser.runtime")
        for t in targets
        if unit(t) not in allowed
    }
    assert above == set()


def test_every_error_class_lives_in_the_errors_module() -> None:
    from edgeser import errors

    names = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    elsewhere = []
    for path in ROOT.rglob("*.py"):
        if path.name == "errors.py" and path.parent == ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {
                    b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                    for b in node.bases
                }
                if bases & names or node.name.endswith("Error"):
                    elsewhere.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert elsewhere == []


def test_only_the_command_line_draws_on_the_terminal() -> None:
    """click lives in edgeser/cli only; the library reports through `edgeser.progress`."""
    users = sorted(
        module_name(path)
        for path in ROOT.rglob("*.py")
        if any(
            isinstance(node, ast.Import | ast.ImportFrom)
            and any(
                (alias.name if isinstance(node, ast.Import) else node.module or "") == "click"
                for alias in node.names
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert users and all(m.startswith("edgeser.cli") for m in users), users
