"""The package layout reads as the flow, and every import points down it (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

import robustbench_sparse

PACKAGE = Path(robustbench_sparse.__file__).parent
# data in -> model zoo -> training -> perturbations -> evaluations -> execution -> results ->
# analysis -> reports; the CLI, the pipeline and the public API on top; `runtime` and `registry` under all.
LAYERS = ["runtime", "data", "zoo", "training", "perturb", "evaluation", "execution", "results", "analysis",
          "report", "top"]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


BASE = ("runtime", "registry")  # the modules every layer may use


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "top"
    if part in BASE:
        return 0
    return LAYERS.index(part) if part in LAYERS else LAYERS.index("top")


def _imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports (at any depth of its code)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robustbench_sparse"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("robustbench_sparse")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_every_subpackage_is_a_layer_of_the_flow():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {"runtime", "top"}


def test_imports_only_point_down_the_flow():
    wrong = [(a, b) for a, deps in _imports().items() for b in deps
             if _layer(b) > _layer(a) and not a.endswith("robustbench_sparse")]
    assert wrong == []


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_tests_follow_the_layout():
    tests = Path(__file__).parent
    for layer in LAYERS:
        if layer not in ("runtime", "top"):
            assert list((tests / layer).glob("test_*.py")), f"tests/{layer}/ has no tests"
