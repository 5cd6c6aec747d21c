"""Reconstruction fidelity beyond FVU, as SAEBench's core metrics report it (x, x_hat both (batch, dim)):

- cosine similarity of each reconstruction with its signal, cos(x_i, x_hat_i), averaged over rows;
- shrinkage: the relative L2 norm ||x_hat_i|| / ||x_i|| per row, averaged (below 1: the codes shrink the signal,
  as an L1 penalty does; SAEBench's `l2_ratio`);
- the normalised KL score (KL_zero - KL) / KL_zero: 1 when splicing the reconstruction in leaves the next-token
  distribution as clean, 0 when it is as far off as zero-ablating the activation.
"""

from __future__ import annotations

import math

import numpy as np

from sparseinfer.errors import SparseInferError
from sparseinfer.metrics._inputs import ArrayLike, as_pair


def _norms(x: ArrayLike, x_hat: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a, b = as_pair(x, x_hat, ("signals x", "reconstruction x_hat"))
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    if (na == 0).any():
        raise SparseInferError(f"{int((na == 0).sum())} signal row(s) are all zero: their cosine and L2 ratio are "
                               "undefined")  # fmt: skip
    return a, b, na, nb


def row_cosines(x: ArrayLike, x_hat: ArrayLike) -> np.ndarray:
    """cos(x_i, x_hat_i) per row; 0 where the reconstruction is all zero."""
    a, b, na, nb = _norms(x, x_hat)
    return (a * b).sum(axis=1) / (na * np.where(nb > 0, nb, 1.0))


def row_l2_ratios(x: ArrayLike, x_hat: ArrayLike) -> np.ndarray:
    """||x_hat_i|| / ||x_i|| per row."""
    _, _, na, nb = _norms(x, x_hat)
    return nb / na


def cosine_similarity(x: ArrayLike, x_hat: ArrayLike) -> float:
    """Mean over rows of cos(x_i, x_hat_i)."""
    return float(row_cosines(x, x_hat).mean())


def shrinkage(x: ArrayLike, x_hat: ArrayLike) -> float:
    """Mean over rows of ||x_hat_i|| / ||x_i|| (1: no shrinkage)."""
    return float(row_l2_ratios(x, x_hat).mean())


def kl_score(kl: float, kl_zero: float) -> float:
    """(KL_zero - KL) / KL_zero, from the KL of the spliced and of the zero-ablated next-token distributions."""
    if not (math.isfinite(kl) and math.isfinite(kl_zero)) or kl < 0 or kl_zero < 0:
        raise SparseInferError(f"KL values must be finite and non-negative, got kl={kl}, kl_zero={kl_zero}")
    if kl_zero == 0:
        raise SparseInferError("KL of the zero-ablated model is 0: the normalised KL score is undefined")
    return (kl_zero - kl) / kl_zero
