"""The package's layer line, walked with `ast`: no package imports one above it, and no two packages import each
other (directly or round a longer loop). docs/architecture.md draws the same line; this test keeps it true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "sparseinfer"

# Bottom (0) to top. A module may import its own layer's modules (within one package, or the core files among
# themselves) and anything below; never above. Files at the package root count as their own unit.
LAYERS: dict[str, int] = {
    "errors": 0, "validation": 0, "codes": 0, "dictionary": 0, "progress": 0, "locks": 0, "memory": 0, "atomic": 0,
    "lm": 1, "flops": 1,
    "encoders": 2, "metrics": 2,
    "data": 3, "io": 3,
    "training": 4, "theory": 4,
    "evaluation": 5, "interp": 5, "sklearn": 5,
    "experiments": 6,
    "cli": 7, "__main__": 8,
}  # fmt: skip
CORE = {"errors", "validation", "codes", "dictionary", "progress", "locks", "memory", "atomic"}


def unit_of(module: str) -> str:
    """'sparseinfer.training.activations.train' -> 'training'; the package root's '__init__' is the facade."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1 and parts[-2] != "sparseinfer":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, package: str = "sparseinfer") -> set[str]:
    """Every sparseinfer module `path` (in `package`) imports, at any depth of the file (lazy imports inside
    functions count); relative imports are resolved against `package`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sparseinfer")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("sparseinfer"):
                found.add(name)
    return found


def edges() -> list[tuple[str, str, str]]:
    """(importing file, imported module, imported unit) for every import between units of the package."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        src = unit_of(module_name(path))
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target in imports_of(path, package):
            dst = unit_of(target)
            if dst != src and dst != "__init__":
                out.append((str(path.relative_to(ROOT)), target, dst))
    return out


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in ROOT.rglob("*.py")} - {"__init__"}
    missing = sorted(units - set(LAYERS))
    assert not missing, f"new top-level modules need a layer in LAYERS (and in docs/architecture.md): {missing}"


def test_no_import_points_up() -> None:
    upward = []
    for file, target, dst in edges():
        src = unit_of(module_name(ROOT / file))
        if src == "__init__":
            continue  # the root facade re-exports core types and the registry
        if LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src] and not {src, dst} <= CORE):
            upward.append(f"{file} imports {target} ({src}: layer {LAYERS[src]} -> {dst}: layer {LAYERS[dst]})")
    assert not upward, "imports against the layer line:\n" + "\n".join(upward)


def test_no_cycles_between_units() -> None:
    graph: dict[str, set[str]] = {}
    for file, _, dst in edges():
        src = unit_of(module_name(ROOT / file))
        if src != "__init__":
            graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cyclic = sorted(u for u in graph if reaches(u, u, {u}))
    assert not cyclic, f"units in an import cycle: {cyclic}"


@pytest.mark.parametrize("package", ["lm"])
def test_lm_is_model_access_only(package: str) -> None:
    """lm/ loads models, hooks, text: it imports nothing of training, data, encoders or evaluation."""
    bad = [f"{f} imports {t}" for f, t, d in edges() if f.startswith(f"{package}/") and d not in CORE]
    assert not bad, "\n".join(bad)


def test_walker_sees_a_planted_upward_import(tmp_path: Path) -> None:
    """The walker itself works: a lazy import inside a function is found, and a relative one resolved."""
    f = tmp_path / "m.py"
    f.write_text(
        "def g():\n    from sparseinfer.cli.app import app\n    import sparseinfer.training.fit\nfrom .x import y\n"
    )
    found = imports_of(f, "sparseinfer.lm")
    assert found == {"sparseinfer.cli.app", "sparseinfer.training.fit", "sparseinfer.lm.x"}


def test_no_two_modules_share_a_name() -> None:
    """One name, one thing: two `store.py` (or `report.py`, `config.py`) in different packages mislead readers."""
    seen: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not shared, f"module names used twice: {shared}"
