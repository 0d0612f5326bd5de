"""Words of prose: the package's docstrings, and README.md + docs/ (issue 27 halved both; docs/benchmarks.md).

    python benchmarks/prose_words.py [ROOT]      (a checkout; default: this one)
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path


def words(text: str) -> int:
    return len(re.findall(r"\S+", text))


def docstring_words(root: Path) -> dict[str, int]:
    counts = {}
    for path in sorted((root / "distgan").rglob("*.py")):
        total = 0
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                total += words(ast.get_docstring(node, clean=False) or "")
        counts[str(path.relative_to(root))] = total
    return counts


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    docs = {str(p.relative_to(root)): words(p.read_text()) for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))]}
    doc_strings = docstring_words(root)
    for name, n in sorted(docs.items()):
        print(f"{n:>6}  {name}")
    print(f"{sum(docs.values()):>6}  README.md + docs/")
    print(f"{sum(doc_strings.values()):>6}  docstrings of distgan/ ({len(doc_strings)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
