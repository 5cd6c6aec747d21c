"""Reconstruction quality: FVU, explained variance, MSE of x_hat against x (both (batch, dim)).

FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, where mean(x) is the per-dimension mean over the batch:
0 for a perfect reconstruction, 1 for predicting the batch mean.
"""

from __future__ import annotations

import numpy as np

from sparseinfer.errors import SparseInferError
from sparseinfer.metrics._inputs import ArrayLike, as_pair


def fvu(x: ArrayLike, x_hat: ArrayLike) -> float:
    """Fraction of variance unexplained (see the module docstring for the formula)."""
    a, b = as_pair(x, x_hat, ("signals x", "reconstruction x_hat"))
    total = float(((a - a.mean(axis=0)) ** 2).sum())
    if total == 0:
        raise SparseInferError("signals x have zero variance over the batch: FVU is undefined")
    return float(((a - b) ** 2).sum()) / total


def explained_variance(x: ArrayLike, x_hat: ArrayLike) -> float:
    """1 - FVU."""
    return 1.0 - fvu(x, x_hat)


def mse(x: ArrayLike, x_hat: ArrayLike) -> float:
    """Mean squared error over all elements."""
    a, b = as_pair(x, x_hat, ("signals x", "reconstruction x_hat"))
    return float(np.mean((a - b) ** 2))
