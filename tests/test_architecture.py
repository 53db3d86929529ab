"""The layout is the architecture: checks on the import graph of the project's own modules."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"edgecompile": REPO / "edgecompile", "edgecompile.passes": REPO / "passes",
         "edgecompile.targets": REPO / "targets", "edgecompile.models": REPO / "models"}


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports, at module level or inside functions alike."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg/__init__
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_project_modules():
    assert _cycles(import_graph()) == []


def test_the_graph_sees_in_function_imports():
    """The checker itself: an import inside a function is an edge (so cycles cannot hide there)."""
    graph = import_graph()
    assert "edgecompile.compiler.pipeline" in graph["edgecompile.compiler.precision"] or \
        "edgecompile.compiler.registry" in graph["edgecompile.compiler.precision"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


RUNTIME_SIDE = ("edgecompile.runtime",)
FORBIDDEN_FOR_RUNTIME = ("edgecompile.compiler", "edgecompile.passes", "edgecompile.report", "edgecompile.verify",
                         "edgecompile.cli", "edgecompile.serve")


def test_runtime_and_run_sides_import_nothing_of_the_compiler():
    graph = import_graph()
    run_side = [m for m in graph if m.startswith(RUNTIME_SIDE) or (m.startswith("edgecompile.targets.")
                                                                   and m.endswith(".run"))]
    assert run_side
    bad = {m: sorted(d for d in graph[m] if d.startswith(FORBIDDEN_FOR_RUNTIME)) for m in run_side}
    assert {m: d for m, d in bad.items() if d} == {}


def test_no_backend_is_probed_with_hasattr_or_getattr():
    import re

    probe = re.compile(r"\b(hasattr|getattr)\(\s*(self\.)?(target|backend|plan\.target)\b")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in _modules().values()
            for i, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert hits == []


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_runtime_load_and_run_leave_the_compiler_out(digits_bundle, tmp_path):
    """In a fresh interpreter, loading a cpu bundle and one inference import none of the build side."""
    code = (
        "import sys, numpy as np\nfrom edgecompile.runtime import load\n"
        f"with load({str(digits_bundle.path)!r}) as r:\n"
        "    y = r(np.zeros((2, 1, 8, 8), np.float32))\nassert y.shape == (2, 10)\n"
        "print(' '.join(sys.modules))\n"
    )
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              check=True).stdout.split())
    banned = ("edgecompile.compiler", "edgecompile.passes", "edgecompile.report", "edgecompile.verify",
              "onnx", "torch", "click")
    assert "onnxruntime" in mods
    assert sorted(m for m in mods if m.split(".")[0] in ("onnx", "torch", "click") or m.startswith(banned[:4])) == []
