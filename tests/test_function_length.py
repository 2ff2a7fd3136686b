"""The house rule "functions under 80 lines" holds for every function in wsviz/ (read with
``ast``: a function's lines run from its ``def`` to its last statement, docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "wsviz"
LIMIT = 80


def long_functions(root: Path = PKG, limit: int = LIMIT) -> list[str]:
    """``path:name (lines)`` of every function in ``root`` longer than ``limit`` lines."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.name} ({n} lines)")
    return out


def test_no_function_over_80_lines():
    assert long_functions() == [], "split these by meaning"


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:f ({LIMIT + 1} lines)"]
