"""`fista`: accelerated proximal gradient (Beck & Teboulle) for the Lasso, with per-sample adaptive restart."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseinfer.encoders._proximal import GradientStep, Iterates, ProximalEncoder, shrink
from sparseinfer.encoders.base import register
from sparseinfer.flops import proximal as flops
from sparseinfer.flops.primitives import Flops


@register
class FISTAEncoder(ProximalEncoder):
    """FISTA: ISTA's step taken at y = s_t + beta_t (s_t - s_{t-1}), the Nesterov extrapolation.

    Minimises per sample 1/2 ||x - s D||^2 + penalty ||s||_1 (scikit-learn's `sparse_encode` convention, no 1/n:
    sklearn `Lasso(alpha)` with X = D^T solves it for alpha = penalty / dim); `nonneg` adds s >= 0.
    The protocol's loss mean((x - sD)^2) + lam mean|s| corresponds to penalty = lam * dim / (2 n_latents).
    `restart` resets a sample's momentum when it points uphill (O'Donoghue & Candes' gradient test), which keeps
    the fast rate without FISTA's oscillations; each sample carries its own momentum, so nothing synchronises.
    `step_size` None means 1/L, L the largest eigenvalue of D D^T. Stops when, at a check (every `check_every`
    iterations), max over samples of ||s_t - s_{t-1}|| / ||s_t|| < `tol`. `debias` refits least squares on the
    support found.
    """

    name = "fista"
    summary = "FISTA: accelerated proximal gradient on the Lasso (sparse coding)"

    def __init__(
        self,
        penalty: float = 0.01,
        max_iter: int = 1000,
        tol: float = 1e-5,
        nonneg: bool = False,
        debias: bool = False,
        step_size: float | None = None,
        check_every: int = 10,
        restart: bool = True,
    ) -> None:
        super().__init__(penalty, max_iter, tol, nonneg, debias, step_size, check_every)
        self.restart = bool(restart)

    def _iterates(self, step: GradientStep, codes: Tensor, rate: float) -> Iterates:
        threshold = rate * self.penalty
        point = codes
        t = codes.new_ones(codes.shape[0], 1)
        while True:
            new = shrink(step(point), threshold, self.nonneg)
            delta = new - codes
            t_next = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
            beta = (t - 1.0) / t_next
            if self.restart:
                uphill = torch.linalg.vecdot(point - new, delta)[:, None] > 0
                beta = beta.masked_fill(uphill, 0.0)
                t_next = t_next.masked_fill(uphill, 1.0)
            point = torch.addcmul(new, beta, delta)
            t = t_next
            yield new, codes
            codes = new

    def _formula(self, batch: int, dim: int, n_latents: int, iterations: int) -> Flops:
        return flops.fista(batch, dim, n_latents, iterations, self._needs_lipschitz(), self.check_every, self.restart)
