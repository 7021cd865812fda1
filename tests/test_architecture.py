"""The folder layout is the architecture, and imports keep it so: read from the source (no
import needed), every package of ``chaos`` imports only the layers below it, and the modules'
import-time graph has no cycle. A new import that breaks a layer fails here with the line that
does it, before it grows into a tangle.

Imports inside functions (deferred until called) count too: a deferred import hides a cycle
from Python, not from the reader. ``if TYPE_CHECKING:`` imports are for annotations only and
are left out.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "chaos"

# Lowest first. A package may import its own modules and the packages of lower layers only.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"chaos", "chaos.errors"},  # the package's version; exit codes and error classes
    {"chaos.log", "chaos.yamlfile", "chaos.neutron", "chaos.settings"},  # leaves
    {"chaos.deployment", "chaos.journal"},  # how Neutron is deployed; the journal's events
    {"chaos.model"},  # the domain: nodes, routers, replicas, floating IPs
    {"chaos.transport", "chaos.experiment"},  # SSH/HTTP to the nodes; what an experiment says
    {"chaos.targets"},  # where a topology comes from (lab, inventory, OpenStack)
    {"chaos.probes"},  # measuring
    {"chaos.faults"},  # injecting (a fault may watch replicas as probes do)
    {"chaos.analysis"},  # journal -> metrics -> verdict
    {"chaos.report", "chaos.lab"},  # what people read; the local lab
    {"chaos.runner"},  # plan, preflight, schedule, execute
    {"chaos.state"},  # the operator's history and leases
    {"chaos.operator"},  # chaos serve
    {"chaos.commands"},  # the CLI's commands
    {"chaos.cli"},
    {"chaos.__main__"},
))


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported chaos module
    line: int
    deferred: bool  # inside a function


def module_name(path: Path) -> str:
    parts = path.relative_to(CHAOS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in CHAOS.rglob("*.py")}


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text())
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, deferred)
                continue
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").split(".")[0] == "chaos":
                base = child.module or ""
                for alias in child.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                    found.append(Import(module, target, child.lineno, deferred))
            elif isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, deferred) for a in child.names
                             if a.name.split(".")[0] == "chaos")
            visit(child, inner)

    visit(tree, False)
    return found


ALL_IMPORTS = [imp for module in sorted(MODULES) for imp in imports_of(module)]


def layer_of(pkg: str) -> int:
    for number, layer in enumerate(LAYERS):
        if pkg in layer:
            return number
    raise AssertionError(f"package {pkg} is in no layer: add it to LAYERS in {__file__} where it belongs")


def test_every_package_is_in_a_layer() -> None:
    for module in MODULES:
        layer_of(package(module))


def test_no_package_imports_a_layer_above_or_beside_it() -> None:
    wrong = [
        f"chaos/{MODULES[i.module].relative_to(CHAOS)}:{i.line}: {package(i.module)} imports {i.target}"
        f" ({'inside a function' if i.deferred else 'at import'}), a package of layer {layer_of(package(i.target))}"
        f" >= its own {layer_of(package(i.module))}"
        for i in ALL_IMPORTS
        if package(i.target) != package(i.module) and layer_of(package(i.target)) >= layer_of(package(i.module))
    ]
    assert not wrong, "\n".join(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_time_graph_has_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        if not i.deferred and i.target != i.module:
            edges.setdefault(i.module, set()).add(i.target)
    assert cycles(edges) == []


def test_no_cycle_even_through_deferred_imports() -> None:
    edges: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        if i.target != i.module:
            edges.setdefault(i.module, set()).add(i.target)
    assert cycles(edges) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("source, expected", [
    ("from chaos.runner.plan import Plan\n", [("chaos.runner.plan", False)]),
    ("def f():\n    from chaos.report import html\n", [("chaos.report.html", True)]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chaos.runner import plan\n", []),
    ("import chaos.errors\n", [("chaos.errors", False)]),
])
def test_the_reader_sees_imports_as_python_does(source: str, expected: list[tuple[str, bool]], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above are only as good as this reader: an import it missed could not fail them."""
    path = CHAOS / "model.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == path else Path.read_bytes(self).decode())
    assert [(i.target, i.deferred) for i in imports_of("chaos.model")] == expected
