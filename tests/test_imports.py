"""The library's import graph has no cycle: data flows one way, and a module that needs a later
stage (a benchmark that builds a whole experiment) lives in benchmarks/, not in prlib/."""

import ast
from pathlib import Path

PRLIB = Path(__file__).resolve().parent.parent / "prlib"


def import_graph(root: Path = PRLIB) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, every import statement counted
    (top-level and inside functions: a lazy import is still a dependency)."""
    mods = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rsplit(".", 1)[0] if "." in name else ""
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_prlib_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles in prlib: {found}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "prlib.routers.base" in graph["prlib.routers.simple"]  # imports are read
    assert "prlib.experiment" in graph["prlib.studies"]


def test_a_cycle_in_a_package_fails(tmp_path):
    """A package whose modules import each other (relative, lazy inside a function, and under
    ``TYPE_CHECKING``) is reported as a cycle: the guard would fail on such a change to prlib."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pkg.a import thing\n")
    (pkg / "d.py").write_text("import pkg.a\n")  # imports into the cycle, is not part of it
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("")
    assert cycles(import_graph(pkg)) == []


def test_the_library_stages_stay_apart():
    """The edge the old circle ran over: the data-parallel helper is a leaf (the 1-vs-many
    check that builds an experiment lives in benchmarks/); v1's HeteroData builder is named for
    what it builds, apart from GraphRouter's ``prlib.routers.graph``."""
    graph = import_graph()
    assert graph["prlib.distributed"] <= {"prlib", "prlib.config"}
    assert "prlib.experiment" not in graph["prlib.routers.personalized_v2"]
    assert "prlib.graph" not in graph and "prlib.hetero_graph" in graph
    assert "prlib.hetero_graph" in graph["prlib.routers.personalized"]
