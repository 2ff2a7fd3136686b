"""The import graph of wsviz (every import statement, also those inside functions, read with
``ast``): data flows one way, io -> compute -> recipes / analysis -> eval -> zoo -> search ->
session -> ui -> commands -> cli, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "wsviz"

#: subpackage (or top-level module) -> layer; an import may only go to a lower layer or
#: stay inside its own subpackage
LAYERS = {
    "wsviz": 0, "errors": 0, "textsafe": 0, "cache_dir": 0,
    "io": 1, "compute": 2, "recipes": 3, "analysis": 4, "eval": 5, "zoo": 6, "search": 7,
    "session": 8, "ui": 9, "commands": 10, "cli": 11,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every wsviz module named by an import in ``path`` (``from a import b`` gives
    ``a.b`` when that is a module, else ``a``)."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "wsviz" or m.startswith("wsviz.")}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {mod: {m for m in _imports(p) if m in files and m != mod}
            for mod, p in files.items()}


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "wsviz"


def test_every_subpackage_has_a_layer():
    missing = sorted({_layer(m) for m in _graph()} - set(LAYERS))
    assert not missing, f"add {missing} to LAYERS in {__file__}"


def test_imports_only_go_down_the_layers():
    back = sorted(f"{a} -> {b}" for a, deps in _graph().items() for b in deps
                  if _layer(a) != _layer(b) and LAYERS[_layer(b)] >= LAYERS[_layer(a)]
                  and _layer(b) not in ("wsviz",))
    assert not back, "imports against the data flow:\n" + "\n".join(back)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _module_graph() -> dict[str, set[str]]:
    """Module -> modules it imports; a package's ``__init__`` re-exporting its own modules
    is not an edge back from those modules (``a.b`` importing ``a`` only runs ``a``)."""
    g = _graph()
    return {a: {b for b in deps if not a.startswith(b + ".")} for a, deps in g.items()}


def test_no_import_cycles_between_modules():
    cycles = _cycles(_module_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_back_arrow_and_a_cycle():
    """The checks are not vacuous: a function-level import against the flow and a loop of
    two modules are both found."""
    g = {"wsviz.eval.factory": {"wsviz.zoo.evaluator"}, "wsviz.zoo.evaluator": {"wsviz.eval.base"},
         "wsviz.eval.base": set(), "wsviz.recipes.recipe": {"wsviz.recipes.slices"},
         "wsviz.recipes.slices": {"wsviz.recipes.recipe"}}
    assert _cycles(g) == [["wsviz.recipes.recipe", "wsviz.recipes.slices"]]
    a, b = "wsviz.eval.factory", "wsviz.zoo.evaluator"
    assert LAYERS[_layer(b)] >= LAYERS[_layer(a)]
    src = "def f():\n    from wsviz.zoo.evaluator import ZooEvaluator\n"
    tree = ast.parse(src)
    assert any(isinstance(n, ast.ImportFrom) and n.module == "wsviz.zoo.evaluator"
               for n in ast.walk(tree))


@pytest.mark.parametrize("mod", ["wsviz.session.args", "wsviz.session"])
def test_cli_argument_helpers_stay_import_light(mod):
    """``wsviz serve --help`` parses with the shared helpers without importing torch/panel."""
    import subprocess
    import sys

    code = (f"import sys, {mod}\n"
            "bad = [m for m in ('torch', 'panel') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
