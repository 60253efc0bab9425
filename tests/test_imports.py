"""The packages' imports form no circle, counting imports inside functions (not `if TYPE_CHECKING:` ones).

Dependencies point one way (`webapp` -> `export` -> `gpt`), and inside a package too: a module that
imports another, even late inside a function to dodge a circular import, never gets imported back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gpt", "export", "webapp")


def _module_name(file: Path, root: Path) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> set[tuple[str, str]]:
    """Every import anywhere in `tree` as `(module, name)`: `import a.b` is `("a.b", "")`,
    `from a import b` is `("a", "b")` (relative imports made absolute)."""
    names: set[tuple[str, str]] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names.update((base, alias.name) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports.

    `from gpt import checkpoint` is an edge to `gpt.checkpoint`, `from gpt import GPT` one to `gpt`
    (its `__init__`); the package `__init__` that Python runs before any submodule is not counted.
    """
    files = {_module_name(f, root): f for package in packages for f in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, file in files.items():
        edges = set()
        for base, name in _imported_names(
            ast.parse(file.read_text(encoding="utf-8")), module, file.name == "__init__.py"
        ):
            target = f"{base}.{name}" if f"{base}.{name}" in files else base
            while target and target not in files:  # `import gpt.model.x` or `import torch.nn`
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.add(target)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.c import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n")
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []
    (package / "c.py").write_text("def g():\n    from .a import y\n")
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "gpt.model" in graph and "webapp.app" in graph and "export.onnx_export" in graph
    cycles = find_cycles(graph)
    details = [f"{cycle}: " + "; ".join(f"{m} -> {sorted(graph[m] & set(cycle))}" for m in cycle) for cycle in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(details)
