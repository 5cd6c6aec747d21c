"""Robust centres of activation samples, for initialising a dictionary's bias (the SAE decoder bias).

- `mean`: the coordinate-wise mean.
- `median`: the coordinate-wise median (each dimension on its own; cheap, but not rotation-invariant).
- `geometric_median`: the point minimising the sum of Euclidean distances to the samples (rotation-invariant;
  Bricken et al. 2023 initialise the decoder bias there), found by Weiszfeld's iteration in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_count

BIAS_INITS = ("mean", "median", "geometric_median", "zero")


def geometric_median(x: Tensor, max_iter: int = 200, tol: float = 1e-7, eps: float = 1e-12) -> Tensor:
    """argmin_c sum_i ||x_i - c|| by Weiszfeld's iteration, started at the mean; stops when the point moves less
    than `tol` times its scale. A sample coinciding with the iterate gets weight 1/eps (bounded, no division by 0)."""
    check_count(max_iter, "max_iter")
    xd = x.detach().double()
    point = xd.mean(0)
    scale = float(xd.abs().max()) or 1.0
    for _ in range(max_iter):
        weights = 1.0 / (xd - point).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * xd).sum(0) / weights.sum()
        moved = float((new - point).norm())
        point = new
        if moved <= tol * scale:
            break
    return point.to(x.dtype)


def centre_of(x: Tensor, how: str) -> Tensor:
    """The bias init `how` (one of BIAS_INITS) of samples `x` (n, dim)."""
    if how not in BIAS_INITS:
        raise SparseInferError(f"bias init must be one of {', '.join(BIAS_INITS)}; got {how!r}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise SparseInferError(f"a bias init needs samples of shape (n, dim) with n >= 1, got {tuple(x.shape)}")
    if how == "mean":
        return x.mean(0)
    if how == "median":
        return torch.quantile(x.double(), 0.5, dim=0).to(x.dtype)  # numpy's median: middle pair averaged
    if how == "geometric_median":
        return geometric_median(x)
    return torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
