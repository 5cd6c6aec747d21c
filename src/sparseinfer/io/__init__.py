"""Reading and writing SAEs: one format of our own for every trained pair, plus SAELens v6 and EleutherAI sparsify.

`save_sae` is the one writer (every run folder the project writes holds its output); `load_sae(path)` is the one
reader: our format (any version), older run layouts, SAELens and sparsify folders. A sparsify checkpoint with
several hookpoints needs `hookpoint=`. Codes equal the source library's unless `fold=True` is asked for.
Exports (`save_saelens`, `save_sparsify`) fold the input scale into the weights and carry the model/hook metadata.
"""

from __future__ import annotations

from pathlib import Path

from sparseinfer.errors import SparseInferError
from sparseinfer.io._common import LoadedSAE, read_json
from sparseinfer.io.native import (
    ENCODER_FILE,
    RUN_FILE,
    is_legacy_run,
    is_native,
    load_legacy_run,
    load_native,
    save_native,
    save_sae,
)
from sparseinfer.io.saelens import is_saelens, load_saelens, save_saelens
from sparseinfer.io.sparsify import is_sparsify, load_sparsify, save_sparsify

FORMATS = ("native", "run", "saelens", "sparsify")


def detect_format(path: str | Path) -> str:
    """Which layout a folder holds: 'native' (ours), 'run' (an older run layout), 'saelens' or 'sparsify'."""
    folder = Path(path)
    if not folder.is_dir():
        raise SparseInferError(f"SAE path must be a folder, got {folder}")
    tests = (("native", is_native), ("run", is_legacy_run), ("saelens", is_saelens), ("sparsify", is_sparsify))
    for name, test in tests:
        if test(folder):
            return name
    for name in ("cfg.json", "run.json"):  # present but unreadable: say which file and what is wrong with it
        if (folder / name).exists():
            read_json(folder / name)
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and is_sparsify(p))
    hint = f"; it has sparsify hookpoints {subs}, pass one of them" if subs else ""
    raise SparseInferError(f"{folder} holds no known SAE layout (sparseinfer, run folder, SAELens, sparsify){hint}")


def load_sae(path: str | Path, hookpoint: str | None = None, fold: bool = False) -> LoadedSAE:
    """Load an SAE folder of any supported layout as our encoder + dictionary with its input scale and provenance.

    `fold=True` folds SAELens / sparsify decoder norms into the codes (unit-norm atoms; codes then differ from the
    source library's by those norms, reconstructions do not)."""
    folder = Path(path) / hookpoint if hookpoint else Path(path)
    kind = detect_format(folder)
    if kind == "native":
        return load_native(folder)
    if kind == "run":
        return load_legacy_run(folder)
    return load_saelens(folder, fold=fold) if kind == "saelens" else load_sparsify(folder, fold=fold)


__all__ = [
    "ENCODER_FILE",
    "FORMATS",
    "RUN_FILE",
    "LoadedSAE",
    "detect_format",
    "load_native",
    "load_sae",
    "load_saelens",
    "load_sparsify",
    "save_native",
    "save_sae",
    "save_saelens",
    "save_sparsify",
]
