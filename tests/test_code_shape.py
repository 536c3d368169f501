"""Rooms small enough to hold in one's head: a class that grows past about 450 lines holds two jobs, and
a function past about 80 does several steps that want names of their own. A function's docstring does
not count: documenting every argument should not force its code apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nbtrain"
MAX_CLASS_LINES = 450
MAX_FUNCTION_LINES = 80


def _sizes(kind: type | tuple[type, ...]) -> list[tuple[str, int]]:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kind):
                n = node.end_lineno - node.lineno + 1
                doc = node.body[0] if node.body else None
                if (
                    isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    and isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)
                ):
                    n -= doc.end_lineno - doc.lineno + 1
                found.append((f"{path.name}:{node.lineno} {node.name}", n))
    return found


def test_no_class_is_longer_than_450_lines():
    assert [(name, n) for name, n in _sizes(ast.ClassDef) if n > MAX_CLASS_LINES] == []


def test_no_function_is_longer_than_80_lines():
    long = [(name, n) for name, n in _sizes((ast.FunctionDef, ast.AsyncFunctionDef)) if n > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_module_imports_with_a_star(path):
    stars = [
        n.lineno
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)
    ]
    assert stars == [], f"{path.name} imports * at lines {stars}: name what it uses"
