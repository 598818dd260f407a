"""The package is built in floors (docs/architecture.md): a module imports only from
floors below its own, or from its own package, and no modules import each other in a
circle.  Every import counts: module level, inside functions (the lazy ones that keep
torch out of a fast command) and under ``TYPE_CHECKING``.

The checks are plain functions over an import graph, so the tests also show that they
fail: on a planted graph, and on a copy of the package with one lazy upward import
planted in a low floor.
"""

from __future__ import annotations

import ast
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alfa_ad"

# bottom to top; a package or top-level module may import only from lower floors
FLOORS: tuple[tuple[str, ...], ...] = (
    ("_version", "registry", "presets"),  # names and data: no alfa_ad import at all
    ("io",),  # files, images, datasets, paths
    ("results", "evaluation", "demo", "pipeline"),  # result records, metrics, the demo's images, threads
    ("model",),  # the CLIP backbone, its weights and preprocessing
    ("prompting",),  # prompt sources: templates, libraries, learned embeddings
    ("scoring",),  # pure scoring math: windows, eq. 4, fusion, few-shot scorers, tiles
    ("aligners", "report"),  # window embeddings; the HTML report and figures
    ("methods", "outputs", "class_state", "learning"),  # ALFA and WinCLIP; run files; per-class state
    ("config", "reference_fitting", "export", "references", "llm",  # the detector's parts; the LLM tool chain;
     "ablation_grid"),  # the ablation grid as data
    ("backends",),  # what runs the per-image model (torch, ONNX Runtime, OpenVINO)
    ("detector",),  # the library's roof: Detector and detect
    ("engines",),  # where a batch is decoded and scored
    ("runner",),  # a dataset run: one consumer of the engines' streams
    ("ablation", "serve"),  # the ablation grid; the HTTP service
    ("cli",),  # the commands
    ("alfa_ad", "__main__"),  # the package face (lazy re-exports) and python -m alfa_ad
)
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, package: Path) -> bool:
    base = package.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def module_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> every alfa_ad module it imports, wherever the import statement is.

    ``from X import y`` counts as an import of ``X.y`` when that is a module, else of ``X``."""
    root = package.name
    graph: dict[str, set[str]] = defaultdict(set)
    for path in package.rglob("*.py"):
        name = module_name(path, package)
        graph[name]  # a module that imports nothing is still a node
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}", package)]
                targets = subs if subs and len(subs) == len(node.names) else [base, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t.split(".")[0] == root and t != name}
    return dict(graph)


def top_level(module: str) -> str:
    """``alfa_ad.scoring.windows`` -> ``scoring``; the package face ``alfa_ad`` -> ``alfa_ad``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]], floors: dict[str, int] = FLOOR) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs that do not go strictly down a floor (same package excepted)."""
    wrong = []
    for source, targets in graph.items():
        for target in targets:
            a, b = top_level(source), top_level(target)
            if a != b and floors[b] >= floors[a]:
                wrong.append((source, target))
    return sorted(wrong)


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


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        out[top_level(source)] |= {top_level(t) for t in targets} - {top_level(source)}
    return dict(out)


# ------------------------------------------------------------------ the checks can fail
def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_upward_check_flags_a_planted_edge():
    graph = {"alfa_ad.model.weights": {"alfa_ad.io.paths"}, "alfa_ad.io.paths": set()}
    assert upward_imports(graph) == []
    graph["alfa_ad.io.paths"] = {"alfa_ad.model.weights"}  # io reaching up to model
    assert upward_imports(graph) == [("alfa_ad.io.paths", "alfa_ad.model.weights")]
    # a sibling on the same floor is not below either
    assert upward_imports({"alfa_ad.methods.alfa": {"alfa_ad.outputs.record"}}) == [
        ("alfa_ad.methods.alfa", "alfa_ad.outputs.record")]


def test_a_lazy_upward_import_planted_in_a_copy_of_the_package_is_found(tmp_path):
    copy = tmp_path / "alfa_ad"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.safetensors", "shipped"))
    assert upward_imports(module_imports(copy)) == [] and cycles(module_imports(copy)) == []
    weights = copy / "model" / "weights.py"
    weights.write_text(weights.read_text(encoding="utf-8")
                       + "\n\ndef _planted():\n    from ..detector import Detector\n\n    return Detector\n",
                       encoding="utf-8")
    graph = module_imports(copy)
    assert ("alfa_ad.model.weights", "alfa_ad.detector") in upward_imports(graph)
    assert any("alfa_ad.model.weights" in c and "alfa_ad.detector" in c for c in cycles(graph))


# ------------------------------------------------------------------ the package
def test_every_package_has_a_floor():
    graph = module_imports()
    assert len(graph) > 100  # the walk saw the package
    unplaced = sorted({top_level(m) for m in graph} - set(FLOOR))
    assert unplaced == [], f"place these in FLOORS (and docs/architecture.md): {unplaced}"
    assert sorted(set(FLOOR) - {top_level(m) for m in graph}) == []  # no stale entry


def test_no_import_goes_up_or_sideways():
    assert upward_imports(module_imports()) == []


def test_no_import_cycles_between_modules_or_packages():
    graph = module_imports()
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == []


@pytest.mark.parametrize("leaf", ["_version", "registry", "presets"])
def test_leaves_import_nothing_from_the_package(leaf):
    graph = module_imports()
    assert graph[f"alfa_ad.{leaf}"] == set()
