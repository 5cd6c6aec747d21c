"""`ista`: iterative shrinkage-thresholding (proximal gradient) for the Lasso, batched over samples."""

from __future__ import annotations

from torch import Tensor

from sparseinfer.encoders._proximal import GAP_TOL, GradientStep, Iterates, ProximalConfig, ProximalEncoder, shrink
from sparseinfer.encoders.base import configure, register
from sparseinfer.flops import proximal as flops
from sparseinfer.flops.primitives import Flops


@register
class ISTAEncoder(ProximalEncoder):
    """ISTA: s <- T_{step * penalty}(s + step (x D^T - s D D^T)), from zeros or warm-start codes.

    Minimises per sample 1/2 ||x - s D||^2 + penalty ||s||_1 (scikit-learn's `sparse_encode` convention, no 1/n:
    sklearn `Lasso(alpha)` with X = D^T solves it for alpha = penalty / dim); `nonneg` adds s >= 0.
    The protocol's loss mean((x - sD)^2) + lam mean|s| corresponds to penalty = lam * dim / (2 n_latents).
    `step_size` None means 1/L, L the largest eigenvalue of D D^T. Stops when, at a check (every `check_every`
    iterations), every sample's relative duality gap is below `tol` (as `fista`; ISTA's slower rate may need
    more than the default max_iter, which the diagnostics then report). `debias` refits least squares on the
    support found.
    """

    name = "ista"
    summary = "ISTA: proximal gradient on the Lasso (sparse coding)"
    Config = ProximalConfig

    def __init__(
        self,
        penalty: float = 0.01,
        max_iter: int = 1000,
        tol: float = GAP_TOL,
        nonneg: bool = False,
        debias: bool = False,
        step_size: float | None = None,
        check_every: int = 10,
    ) -> None:
        c = configure(ISTAEncoder, locals())
        super().__init__(c.penalty, c.max_iter, c.tol, c.nonneg, c.debias, c.step_size, c.check_every)
        self.config = c

    def _iterates(self, step: GradientStep, codes: Tensor, rate: float) -> Iterates:
        threshold = rate * self.penalty
        while True:
            new = shrink(step(codes), threshold, self.nonneg)
            yield new, codes
            codes = new

    def _formula(self, batch: int, dim: int, n_latents: int, iterations: int) -> Flops:
        return flops.ista(batch, dim, n_latents, iterations, self._needs_lipschitz(), self._check_interval())
