"""The package follows the data flow (io -> model -> prompting -> scoring -> methods ->
detector -> runner -> cli) with no import cycles.

Only module-level imports count: a function-level import is how a module reaches a
heavier or later layer lazily (the CLI loading torch only when a run needs it).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alfa_ad"

# lower layers must not import the layers that consume them
FORBIDDEN = {
    "io": {"model", "prompting", "scoring", "aligners", "methods", "detector", "runner", "cli", "engines", "serve"},
    "model": {"prompting", "scoring", "aligners", "methods", "detector", "runner", "cli", "engines", "serve"},
    "prompting": {"scoring", "aligners", "methods", "detector", "runner", "cli", "engines", "serve"},
    "scoring": {"methods", "detector", "runner", "cli", "engines", "serve"},
    "aligners": {"methods", "detector", "runner", "cli", "engines", "serve"},
    "methods": {"detector", "runner", "cli", "engines", "serve"},
    "detector": {"runner", "cli", "engines", "serve"},
    "runner": {"cli", "serve"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Module -> the alfa_ad modules it imports at module level (TYPE_CHECKING blocks excluded)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t.split(".")[0] == "alfa_ad"}
    return graph


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "alfa_ad"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
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

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules_or_packages():
    graph = module_imports()
    assert len(graph) > 50  # the walk saw the package
    assert cycles(graph) == []
    packages: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        packages[top_level(source)] |= {top_level(t) for t in targets} - {top_level(source)}
    packages.pop("alfa_ad", None)  # the package's __init__ re-exports from everywhere (lazily)
    for targets in packages.values():
        targets.discard("alfa_ad")
    assert cycles(packages) == []


def test_lower_layers_do_not_import_later_ones():
    graph = module_imports()
    wrong = sorted((source, target) for source, targets in graph.items() for target in targets
                   if top_level(target) in FORBIDDEN.get(top_level(source), set()))
    assert wrong == []
