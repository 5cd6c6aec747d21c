"""How often latents fire: L0, per-latent frequencies, dead and dense latents (active = nonzero)."""

from __future__ import annotations

import numpy as np

from sparseinfer.errors import SparseInferError
from sparseinfer.metrics._inputs import ArrayLike, as_matrix


def _active(codes: ArrayLike) -> np.ndarray:
    return as_matrix(codes, "codes") != 0


def l0(codes: ArrayLike) -> float:
    """Mean number of nonzero latents per sample."""
    return float(_active(codes).sum(axis=1).mean())


def latent_frequencies(codes: ArrayLike) -> np.ndarray:
    """Fraction of samples on which each latent is nonzero: shape (n_latents,)."""
    return _active(codes).mean(axis=0)


def dead_latents(codes: ArrayLike) -> np.ndarray:
    """Boolean mask of latents never active on these samples."""
    return latent_frequencies(codes) == 0


def dense_latents(codes: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask of latents active on more than `threshold` of the samples."""
    if not 0 <= threshold <= 1:
        raise SparseInferError(f"threshold must be a fraction in [0, 1], got {threshold}")
    return latent_frequencies(codes) > threshold
