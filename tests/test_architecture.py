"""The house is one-way: plifnet's modules import each other without a cycle.

The graph is built from the files themselves (``ast``), every ``import`` and ``from ... import`` at any depth,
inside functions too (an import postponed for speed still runs the other way), so a cycle cannot hide
behind a lazy import."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "plifnet"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: the plifnet modules it imports}``; ``from plifnet.x import y`` is an edge to ``plifnet.x.y``
    where that is a module, else to ``plifnet.x``."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .y import z
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            edges |= {target for target in targets if target in files and target != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_and_a_one_way_graph_has_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "plifnet.models" in graph["plifnet"]  # from plifnet.models import ... in the package's __init__
    assert "plifnet.checkpoints" in graph["plifnet.module"]  # from plifnet import checkpoints
    assert "plifnet.neurons" in graph["plifnet.models"]


def test_plifnet_imports_one_way():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in found)


def test_no_module_is_a_house_of_its_own():
    """One concept per module: none over 450 lines (the NIR writer and reader, the runs and the studies' grid
    and report each have their own)."""
    sizes = {path.relative_to(ROOT): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {path: lines for path, lines in sizes.items() if lines > 450} == {}
