"""The project's import graph: no cycles (imports inside functions count too), no module that
shadows a standard-library module, and ``utils/fileio.py`` a leaf.

The graph is read from the source with ``ast`` (nothing is imported), so a cycle hidden behind a
function-level import is found as well.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "models", "physics", "solvers", "utils")


def project_modules() -> dict[str, Path]:
    """``{dotted name: file}`` of the top-level scripts and every module of the packages."""
    mods = {p.stem: p for p in ROOT.glob("*.py")}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` imports pkg.mod; ``from mod import name`` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {n: imports_of(n, p, set(mods)) for n, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_hidden_cycle():
    """The checker itself: a two-module cycle and a three-module ring are found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_resolves_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from .a import f\nimport json\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    assert imports_of("pkg.a", pkg / "a.py", known) == {"pkg.b"}
    assert imports_of("pkg.b", pkg / "b.py", known) == {"pkg.a"}


def test_no_import_cycles():
    graph = import_graph()
    assert {"main", "run_lib", "utils.fileio", "utils.run_dir", "configs.base"} <= set(graph)
    assert "run_lib" in graph["main"] and "utils.run_dir" in graph["utils.distributed"]
    assert cycles(graph) == []


def test_no_module_shadows_the_standard_library():
    clash = [n for n in project_modules() if n.rpartition(".")[2] in sys.stdlib_module_names]
    assert clash == []


def test_utils_io_is_a_leaf_and_utils_imports_downward():
    graph = import_graph()
    assert graph["utils.fileio"] == set()
    for low, high in (("utils.run_log", "utils.run_dir"), ("utils.plots", "utils.run_dir"),
                      ("utils.run_dir", "utils.distributed")):
        assert high not in graph[low], f"{low} imports {high}"
