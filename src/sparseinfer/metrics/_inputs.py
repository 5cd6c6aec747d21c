"""Shared input handling for the metrics: anything array-like becomes a checked float64 numpy matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparseinfer.codes import SparseCodes
from sparseinfer.errors import SparseInferError

ArrayLike = Any  # torch.Tensor | np.ndarray | SparseCodes | nested sequences


def as_matrix(a: ArrayLike, name: str) -> np.ndarray:
    """A finite float64 (rows, cols) numpy copy of a tensor, array or `SparseCodes`."""
    if isinstance(a, SparseCodes):
        a = a.to_dense()
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SparseInferError(f"{name} is not numeric: {err}") from None
    if out.ndim != 2:
        raise SparseInferError(f"{name} must be 2-D (samples, features), got shape {out.shape}")
    if out.shape[0] == 0:
        raise SparseInferError(f"{name} has no rows (samples)")
    if not np.isfinite(out).all():
        raise SparseInferError(f"{name} contains {int((~np.isfinite(out)).sum())} NaN/Inf value(s)")
    return out


def as_pair(
    a: ArrayLike, b: ArrayLike, names: tuple[str, str], same_cols: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Two checked matrices with the same number of rows (and, if `same_cols`, the same shape)."""
    x, y = as_matrix(a, names[0]), as_matrix(b, names[1])
    if x.shape[0] != y.shape[0]:
        raise SparseInferError(f"{names[0]} has {x.shape[0]} samples but {names[1]} has {y.shape[0]}")
    if same_cols and x.shape[1] != y.shape[1]:
        raise SparseInferError(f"{names[0]} has {x.shape[1]} columns but {names[1]} has {y.shape[1]}")
    return x, y
