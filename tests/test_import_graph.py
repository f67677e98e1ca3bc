"""The `autodeployer` package imports without cycles: every module can be imported first.

The graph is built from the source with `ast`: module-level imports only (what runs at import time;
imports inside functions and under `if TYPE_CHECKING:` do not), relative imports resolved. Importing
`a.b.c` also runs `a/b/__init__.py`, so an import adds an edge to each package on the way that the
importing module is not itself inside.
"""

from __future__ import annotations

import ast
from pathlib import Path

import autodeployer

ROOT = Path(autodeployer.__file__).parent
PACKAGE = "autodeployer"

#: Cycles outside store/ and coordination/ that exist today, each as its sorted set of modules; their
#: owners break them. A cycle not listed here fails the test, and so does a listed one that is gone.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: at top level, or in top-level if/try blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _type_checking(node):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


def targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The modules of our package an import statement runs."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = {source} | {f"{source}.{alias.name}" for alias in node.names}  # `from pkg import module`
    out = set()
    for name in names:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):  # the packages on the way run too
            prefix = ".".join(parts[:end])
            if prefix in known and not (module == prefix or module.startswith(prefix + ".")):
                out.add(prefix)
    return out


def every_import(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports anywhere, inside functions too: those run later, but still tie the modules together."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(*, inside_functions: bool = False) -> dict[str, set[str]]:
    find = every_import if inside_functions else module_level_imports
    modules = module_names()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[module] = set()
        for node in find(tree):
            graph[module] |= targets(module, is_package, node, known)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_what_python_runs():
    graph = import_graph()
    assert "autodeployer.store.postgres" in graph["autodeployer.coordination.postgres"]
    assert "autodeployer.store" in graph["autodeployer.coordination.postgres"]  # the package on the way
    assert "autodeployer.store.sqlite" in graph["autodeployer.store"]
    assert "autodeployer.store.postgres" not in graph["autodeployer.store"]  # imported inside open_store only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found - KNOWN_CYCLES == set(), f"new import cycles: {[sorted(c) for c in found - KNOWN_CYCLES]}"
    assert KNOWN_CYCLES - found == set(), "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_store_and_coordination_need_no_import_inside_a_function_to_avoid_a_cycle():
    """Counting imports inside functions too, no cycle runs through the store or coordination (the old
    store -> coordination -> store_pg -> store cycle was held apart by imports inside functions)."""
    ours = ("autodeployer.store", "autodeployer.coordination")
    found = [sorted(c) for c in cycles(import_graph(inside_functions=True))
             if any(m == p or m.startswith(p + ".") for m in c for p in ours)]
    assert found == []


def test_the_store_never_imports_coordination():
    """Coordination builds on the store (the coordinator hands the store its leases), never the reverse."""
    graph = import_graph()
    for module, imported in graph.items():
        if module == "autodeployer.store" or module.startswith("autodeployer.store."):
            assert not any(i.startswith("autodeployer.coordination") for i in imported), (module, imported)
