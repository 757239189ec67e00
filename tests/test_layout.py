"""The shape of the house, checked: the layers import one way (data <- models <- train <- sweep /
pipeline <- cli, simulation beside data), no import circles (function-level imports included,
so a lazy import cannot hide one), no module reaches for another's private names, and no file
grows past what a reader takes in at once."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mae_tracker"
MAX_LINES = 400

# Each top-level package or module and its layer: it may import only from lower layers.
# A new top-level module must be placed here (the test names it otherwise).
LAYERS = {
    "(root)": 0, "paths": 0, "progress": 0, "signals": 0, "atomic": 0, "ui_links": 0,
    "next_steps": 1, "data": 1,
    "cli_errors": 2, "sim": 2, "models": 2,
    "train": 3,
    "baselines": 4, "registry": 4,
    "encode": 5, "report": 5, "sweep": 5,
    "pipeline": 6, "server": 6,
    "cli": 8,
    "__main__": 9,
}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def owner(name: str) -> str:
    """The project module a dotted import name lands in (a submodule, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports() -> tuple[dict[str, set[str]], list[str]]:
    """Every module's project imports (anywhere in the file) and every private name imported."""
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[module] |= {owner(a.name) for a in node.names if a.name.startswith("mae_tracker")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mae_tracker"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges[module].add(owner(full) if full in MODULES else owner(node.module))
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{module} imports {alias.name} from {node.module}")
    for module in edges:
        edges[module].discard(module)
        edges[module].discard("")
    return edges, private


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {t for targets in edges.values() for t in targets}):
        if v not in index:
            visit(v)
    return found


def test_there_are_no_import_circles_lazy_imports_included():
    edges, _ = imports()
    assert cycles(edges) == []


def test_layers_import_one_way():
    edges, _ = imports()
    unplaced = sorted({top(m) for m in MODULES} - set(LAYERS))
    assert not unplaced, f"place these in LAYERS: {unplaced}"
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets
                    if top(m) != top(t) and LAYERS[top(t)] >= LAYERS[top(m)])
    assert upward == []


def test_no_module_imports_another_modules_private_names():
    _, private = imports()
    assert private == []


def test_no_file_is_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_see_a_circle_and_an_upward_import():
    # The checker itself: a two-module circle is found, and data -> train is an upward import.
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert LAYERS["train"] > LAYERS["data"] and LAYERS["sim"] > LAYERS["data"]
