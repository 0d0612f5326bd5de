"""Docstrings say what a thing does and the one reason why, in three lines or fewer (the stories of workarounds
live in docs/workarounds.md)."""

import ast

from conftest import ROOT


def test_every_docstring_of_the_package_is_three_lines_or_fewer():
    long = []
    for path in sorted((ROOT / "distgan").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                text = ast.get_docstring(node, clean=True) or ""
                if len(text.strip().splitlines()) > 3:
                    long.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}")
    assert not long, long
