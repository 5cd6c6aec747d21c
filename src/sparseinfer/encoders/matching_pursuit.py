"""`matching_pursuit`: plain (non-orthogonal) matching pursuit, batched, optionally non-negative.

Each step picks, per sample, the atom with the largest normalised correlation with the residual (|c_j| / ||d_j||,
or the largest positive one when `nonneg`), adds c_j / ||d_j||^2 to its code and removes that projection from the
residual. An atom may be picked again. A sample stops when its squared residual norm is <= `tol`, when no atom
correlates (positively, if `nonneg`) with the residual, or when its next pick would be a (k+1)-th distinct atom
(`k`, optional). All samples run for at most `max_iter` steps; finished ones are frozen by masks.
"""

from __future__ import annotations

import torch
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor

from sparseinfer.encoders.base import Diagnostics, EncoderConfig, IterativeEncoder, configure, register
from sparseinfer.flops import pursuit
from sparseinfer.validation import check_k, check_positive


@register
class MatchingPursuitEncoder(IterativeEncoder):
    """At most `max_iter` greedy steps and at most `k` distinct atoms per sample (k=None: no limit)."""

    name = "matching_pursuit"
    summary = "matching pursuit (greedy, one coefficient per step; optional non-negative)"

    class Config(EncoderConfig):
        max_iter: StrictInt = Field(100, description="greedy steps per sample (at most)")
        k: StrictInt | None = Field(None, description="distinct atoms per sample (at most; None: no limit)")
        tol: float = Field(0.0, description="stop a sample once its squared residual norm is <= tol")
        nonneg: StrictBool = Field(False, description="pick only positively correlated atoms")

    def __init__(self, max_iter: int = 100, k: int | None = None, tol: float = 0.0, nonneg: bool = False) -> None:
        c = configure(MatchingPursuitEncoder, locals())
        super().__init__()
        check_k(c.max_iter, c.max_iter, "max_iter")  # a positive integer
        if c.k is not None:
            check_k(c.k, c.k, "k")
        check_positive(c.tol, "tol", allow_zero=True)
        self.max_iter = c.max_iter
        self.k = c.k
        self.tol = c.tol
        self.nonneg = c.nonneg
        self._warm = False
        self.config = c

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        n_latents = atoms.shape[0]
        if self.k is not None:
            check_k(self.k, n_latents, "k")
        batch = x.shape[0]
        rows = torch.arange(batch, device=x.device)
        norms = atoms.norm(dim=1)
        self._warm = init is not None
        if init is None:
            codes = x.new_zeros(batch, n_latents)
            residual = x
        else:
            codes = init.clamp_min(0.0) if self.nonneg else init.clone()
            residual = x - codes @ atoms
        distinct = (codes != 0).sum(1)
        active = (residual * residual).sum(1) > self.tol
        steps, change = 0, 0.0
        for _ in range(self.max_iter):
            if not bool(active.any()):
                break
            steps += 1
            corr = residual @ atoms.T
            score = corr / norms if self.nonneg else corr.abs() / norms
            best, pick = score.max(1)
            ok = active & (best > 0)
            is_new = codes[rows, pick] == 0
            if self.k is not None:
                ok = ok & ~(is_new & (distinct >= self.k))
            coef = torch.where(ok, corr[rows, pick] / norms[pick] ** 2, 0.0)
            codes[rows, pick] += coef
            distinct = distinct + (ok & is_new).long()
            residual = residual - coef[:, None] * atoms[pick]
            change = float((coef.abs() / codes.norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)).max())
            active = ok & ((residual * residual).sum(1) > self.tol)
        left = int(((residual * residual).sum(1) > self.tol).sum()) if self.tol > 0 else 0
        self.diagnostics = Diagnostics(
            iterations=steps, converged=left == 0, max_change=change, n_unconverged=left, tested=self.tol > 0
        )
        return codes

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        steps = self.iterations_run()
        steps = self.max_iter if steps is None else steps
        return pursuit.matching_pursuit(batch, dim, n_latents, steps, self._warm).total
