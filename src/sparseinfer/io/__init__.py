"""Reading and writing SAEs: our own format, SAELens v6 and EleutherAI sparsify, all as (encoder, dictionary).

`load_sae(path)` detects the layout; a sparsify checkpoint with several hookpoints needs `hookpoint=`.
"""

from __future__ import annotations

from pathlib import Path

from sparseinfer.errors import SparseInferError
from sparseinfer.io._common import LoadedSAE
from sparseinfer.io.native import is_native, load_native, save_native
from sparseinfer.io.saelens import is_saelens, load_saelens, save_saelens
from sparseinfer.io.sparsify import is_sparsify, load_sparsify, save_sparsify

FORMATS = ("native", "saelens", "sparsify")


def detect_format(path: str | Path) -> str:
    """Which layout a folder holds: 'native', 'saelens' or 'sparsify'."""
    folder = Path(path)
    if not folder.is_dir():
        raise SparseInferError(f"SAE path must be a folder, got {folder}")
    for name, test in (("native", is_native), ("saelens", is_saelens), ("sparsify", is_sparsify)):
        if test(folder):
            return name
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and is_sparsify(p))
    hint = f"; it has sparsify hookpoints {subs}, pass one of them" if subs else ""
    raise SparseInferError(f"{folder} holds no known SAE layout (native, SAELens, sparsify){hint}")


def load_sae(path: str | Path, hookpoint: str | None = None, fold: bool = True) -> LoadedSAE:
    """Load an SAE folder of any supported layout as our encoder + dictionary."""
    folder = Path(path) / hookpoint if hookpoint else Path(path)
    kind = detect_format(folder)
    if kind == "native":
        return load_native(folder)
    return load_saelens(folder, fold=fold) if kind == "saelens" else load_sparsify(folder, fold=fold)


__all__ = [
    "FORMATS",
    "LoadedSAE",
    "detect_format",
    "load_native",
    "load_sae",
    "load_saelens",
    "load_sparsify",
    "save_native",
    "save_saelens",
    "save_sparsify",
]
