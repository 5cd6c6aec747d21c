"""The study's recovery boundary M = 2 K ln(N / K): above it (more measurements), L1 recovery of K-sparse codes from a
random dictionary is expected to succeed; the same line in the phase-transition coordinates (delta, rho)."""

from __future__ import annotations

import math

from scipy.optimize import brentq

from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_positive


def recovery_boundary(n_latents: float, k: float) -> float:
    """M* = 2 K ln(N / K), the number of measurements the study draws as the recovery boundary (needs 0 < K <= N)."""
    check_positive(n_latents, "n_latents")
    check_positive(k, "k")
    if k > n_latents:
        raise SparseInferError(f"k={k} exceeds n_latents={n_latents}: the boundary needs K <= N")
    return 2.0 * k * math.log(n_latents / k)


def is_above_boundary(n_latents: float, dim: float, k: float) -> bool:
    """True when M >= 2 K ln(N / K): the size lies on the recoverable side of the boundary."""
    return dim >= recovery_boundary(n_latents, k)


def boundary_rho(delta: float) -> float:
    """The boundary in Donoho-Tanner coordinates: the rho = K / M solving 1 = 2 rho ln(1 / (rho delta)), delta = M / N.

    The left side of M = 2 K ln(N / K), divided by M, is 2 rho ln(1 / (rho delta)); it rises from 0 then falls back to
    0 at rho = 1 / delta, so the smaller root (where it first reaches 1) is the boundary; NaN where it never reaches 1.
    """
    check_positive(delta, "delta")
    if delta > 1:
        raise SparseInferError(f"delta={delta} > 1: the boundary is drawn for undersampled problems (M <= N)")

    def gap(rho: float) -> float:
        return 2.0 * rho * math.log(1.0 / (rho * delta)) - 1.0

    peak = 1.0 / (math.e * delta)  # where 2 rho ln(1 / (rho delta)) is largest
    if gap(min(peak, 1.0)) < 0:
        return math.nan
    return brentq(gap, 1e-12, min(peak, 1.0), xtol=1e-12)
