"""Per-latent firing statistics (SAEBench's feature-density table), accumulated over batches of codes.

Per latent: how often it fires (non-zero), its mean value where it fires, its largest |value|, and its mean value
over all samples. `FiringStatistics` adds batches up exactly (float64 sums), so the table of a stream equals the
table of the concatenated codes (`latent_statistics`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sparseinfer.errors import SparseInferError
from sparseinfer.metrics._inputs import ArrayLike, as_matrix

COLUMNS = ("latent", "frequency", "count", "mean_when_active", "max_abs", "mean")


class FiringStatistics:
    """Running per-latent counts and sums over batches of codes (batch, n_latents)."""

    def __init__(self, n_latents: int) -> None:
        if n_latents < 1:
            raise SparseInferError(f"n_latents must be at least 1, got {n_latents}")
        self.n_latents = n_latents
        self.samples = 0
        self.count = np.zeros(n_latents, dtype=np.int64)
        self.total = np.zeros(n_latents)
        self.max_abs = np.zeros(n_latents)

    def update(self, codes: ArrayLike) -> None:
        """Add one batch of codes (dense, array-like or `SparseCodes`)."""
        c = as_matrix(codes, "codes")
        if c.shape[1] != self.n_latents:
            raise SparseInferError(f"codes have {c.shape[1]} latents, the statistics {self.n_latents}")
        self.samples += c.shape[0]
        self.count += (c != 0).sum(axis=0)
        self.total += c.sum(axis=0)
        self.max_abs = np.maximum(self.max_abs, np.abs(c).max(axis=0))

    def table(self) -> pd.DataFrame:
        """One row per latent: frequency, count, mean value where active (NaN if never), max |value|, mean."""
        if self.samples == 0:
            raise SparseInferError("no codes were added: the firing statistics are empty")
        active = np.where(self.count > 0, self.count, 1)
        return pd.DataFrame({
            "latent": np.arange(self.n_latents),
            "frequency": self.count / self.samples,
            "count": self.count,
            "mean_when_active": np.where(self.count > 0, self.total / active, np.nan),
            "max_abs": self.max_abs,
            "mean": self.total / self.samples,
        })  # fmt: skip


def latent_statistics(codes: ArrayLike) -> pd.DataFrame:
    """The firing statistics table of one matrix of codes (samples, n_latents)."""
    c = as_matrix(codes, "codes")
    stats = FiringStatistics(c.shape[1])
    stats.update(c)
    return stats.table()
