"""Layers only point down (docs/theory.md §10): base ← operators ← theory ← solvers ← influence ← adapters."""

import ast
from pathlib import Path

import invhvp

ROOT = Path(invhvp.__file__).parent

# module (first path component under invhvp/) -> layer; a module may import its own layer or lower
LAYERS = {
    "_backend": 0, "_arrays": 0, "_checks": 0, "errors": 0, "result": 0,
    "distributed": 0, "store": 0, "_storeio": 0, "_storeread": 0,
    "operators": 1,
    "estimators": 2, "bounds": 2, "damping": 2,
    "solvers": 3,
    "influence": 4, "scale": 4,
    "interop": 5, "adapters": 5, "testing": 5,
    "validate": 6, "cli": 6, "__main__": 6, "__init__": 7,
}


def _component(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imported(path: Path, node) -> str | None:
    """The invhvp top-level component an import node refers to (None for outside packages)."""
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            mod = node.module or ""
            return mod.split(".")[1] if mod.startswith("invhvp.") else None
        base = path.relative_to(ROOT).parts[:-1]
        parts = list(base[: len(base) - (node.level - 1)]) if node.level > 1 else list(base)
        target = parts + (node.module.split(".") if node.module else [])
        if target:
            return target[0].removesuffix(".py")
        return node.names[0].name  # "from . import x" at the package root
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name.startswith("invhvp."):
                return a.name.split(".")[1]
    return None


def test_imports_only_point_down():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        comp = _component(path)
        if comp not in LAYERS:
            bad.append(f"{path.relative_to(ROOT)}: module not assigned to a layer")
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            target = _imported(path, node)
            if target is None or target == comp:
                continue
            if target not in LAYERS:
                continue
            if LAYERS[target] > LAYERS[comp]:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target} (layer {LAYERS[target]} > {LAYERS[comp]})")
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long
