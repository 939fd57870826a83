"""The package layout (docs/ARCHITECTURE.md): no import cycles, arrows pointing down the pipeline's layers,
nfedge imports at module top outside the CLI, and modules small enough to read.

The import graph is read statically (ast) from every file under nfedge/, function-local imports included,
so a cycle hidden inside a function body fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "nfedge"
MAX_MODULE_LINES = 420  # "no module over about 400 lines": split by responsibility before it grows past this

# Layers, lowest first: a module may import its own layer and the ones below, never one above.
LAYERS = [
    ("nfedge", "nfedge.errors", "nfedge.config", "nfedge.fileio", "nfedge.progress", "nfedge.executor",
     "nfedge.registry", "nfedge.runtime", "nfedge._data"),
    ("nfedge.quant", "nfedge.models", "nfedge.data"),
    ("nfedge.sram",),
    ("nfedge.integer",),
    ("nfedge.train",),
    ("nfedge.analysis",),
    ("nfedge.deploy",),
    ("nfedge.stages", "nfedge.pipeline"),
    ("nfedge.cli", "nfedge.__main__"),
]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, dict[str, list[tuple[int, bool]]]]:
    """{module: {imported nfedge module: [(line, at module top?)]}} for every .py file under `root`."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    graph: dict[str, dict[str, list[tuple[int, bool]]]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        top_level = {id(n) for n in tree.body}
        edges: dict[str, list[tuple[int, bool]]] = {}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in files else src for a in node.names]
            for t in targets:
                if t == top or t.startswith(top + "."):
                    while t not in files and "." in t:  # `import nfedge.x.y` of a non-module attribute
                        t = t.rsplit(".", 1)[0]
                    if t != mod:
                        edges.setdefault(t, []).append((node.lineno, id(node) in top_level))
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, {})):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def layer_of(mod: str) -> int:
    best, rank = -1, None
    for i, members in enumerate(LAYERS):
        for m in members:
            if (mod == m or mod.startswith(m + ".")) and len(m) > best and not (m == "nfedge" and mod != "nfedge"):
                best, rank = len(m), i
    if rank is None:
        raise AssertionError(f"{mod} is in no layer: add it to LAYERS here and to docs/ARCHITECTURE.md")
    return rank


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE_DIR)


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers(graph):
    bad = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)}) at line {ln}"
           for m, edges in graph.items() for t, uses in edges.items() for ln, _ in uses if layer_of(t) > layer_of(m)]
    assert not bad, "\n".join(bad)


def test_library_imports_nfedge_at_module_top(graph):
    """A function-local import of nfedge code hides a cycle; only the CLI defers imports (startup time)."""
    bad = [f"{m} line {ln}: function-local import of {t}" for m, edges in graph.items() if layer_of(m) < layer_of("nfedge.cli")
           for t, uses in edges.items() for ln, at_top in uses if not at_top]
    assert not bad, "\n".join(bad)


def test_modules_stay_small():
    big = {module_name(p, PACKAGE_DIR): n for p in PACKAGE_DIR.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split by responsibility): {big}"


def rooms_crossed(graph: dict[str, dict], rooms: tuple[str, ...] = ("nfedge.deploy.compile", "nfedge.deploy.run")) -> list[str]:
    """Imports from one deploy room into another: compiling and running share only what lies beside them
    (targets, the bundle format, the guest I/O protocol), so either can change without the other."""
    def room(m: str) -> str | None:
        return next((r for r in rooms if m == r or m.startswith(r + ".")), None)

    return [f"{m} imports {t} (line {ln})" for m, edges in graph.items() for t, uses in edges.items() for ln, _ in uses
            if room(m) and room(t) and room(m) != room(t)]


def test_compile_and_run_never_import_each_other(graph):
    assert any(m.startswith("nfedge.deploy.compile.") for m in graph) and any(m.startswith("nfedge.deploy.run.") for m in graph)
    bad = rooms_crossed(graph)
    assert not bad, "\n".join(bad)


def test_the_room_check_finds_a_crossing(tmp_path):
    pkg = tmp_path / "nfedge"
    for d in ("deploy/compile", "deploy/run"):
        (pkg / d).mkdir(parents=True)
    for f in ("__init__.py", "deploy/__init__.py", "deploy/compile/__init__.py", "deploy/run/__init__.py", "deploy/guest_io.py"):
        (pkg / f).write_text("")
    (pkg / "deploy" / "compile" / "build.py").write_text("from nfedge.deploy.guest_io import X\n")
    (pkg / "deploy" / "run" / "harness.py").write_text("from nfedge.deploy.guest_io import X\n")
    assert rooms_crossed(import_graph(pkg)) == []
    (pkg / "deploy" / "run" / "faultrun.py").write_text("def f():\n    from nfedge.deploy.compile.build import g\n")
    assert rooms_crossed(import_graph(pkg)) == ["nfedge.deploy.run.faultrun imports nfedge.deploy.compile.build (line 2)"]


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    """The checks above can fail: a package with a two-module cycle through a function-local import."""
    pkg = tmp_path / "nfedge"
    (pkg / "sram").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sram" / "__init__.py").write_text("")
    (pkg / "sram" / "faults.py").write_text("def f():\n    from nfedge.deploy import build\n")
    (pkg / "deploy").mkdir()
    (pkg / "deploy" / "__init__.py").write_text("")
    (pkg / "deploy" / "build.py").write_text("from nfedge.sram.faults import f\n")
    g = import_graph(pkg)
    assert g["nfedge.sram.faults"] == {"nfedge.deploy.build": [(2, False)]}
    assert find_cycle(g) == ["nfedge.deploy.build", "nfedge.sram.faults", "nfedge.deploy.build"]
    assert layer_of("nfedge.deploy.build") > layer_of("nfedge.sram.faults")
