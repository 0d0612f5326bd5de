"""The package's imports point down its layers, and the training math imports no Ray (README, "Layout")."""

import ast
from pathlib import Path

from conftest import ROOT

# bottom to top; a module may import its own layer and those below it
LAYERS = [
    {"errors"},
    {"io", "config", "cli", "models", "losses", "objectives"},
    {"data"},
    {"engine"},
    {"evaluation"},
    {"launch"},
    {"bench", "train", "tune", "sample", "evaluate", "__main__", "__init__"},
]
RAY_FREE = {"errors", "io", "config", "cli", "models", "losses", "objectives", "data", "engine", "evaluation"}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path) -> set[str]:
    """Every module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def package_modules():
    for path in sorted((ROOT / "distgan").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "distgan", path


def test_no_import_points_up_the_layers():
    upward = []
    for module, path in package_modules():
        for imported in imports(path):
            if imported.startswith("distgan.") and layer_of(imported) > layer_of(module):
                upward.append(f"{module} -> {imported}")
    assert not upward, upward


def test_the_training_math_imports_no_ray():
    with_ray = [f"{module} -> {imported}" for module, path in package_modules()
                if module.split(".")[1:2] and module.split(".")[1] in RAY_FREE
                for imported in imports(path) if imported == "ray" or imported.startswith("ray.")]
    assert not with_ray, with_ray


def test_every_module_has_a_layer():
    for module, _ in package_modules():
        layer_of(module)  # StopIteration for a new top-level name: give it a layer above
