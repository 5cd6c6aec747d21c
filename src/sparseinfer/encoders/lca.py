"""`lca`: the locally competitive algorithm (Rozell et al. 2008), Euler-integrated and batched over samples."""

from __future__ import annotations

from pydantic import Field, StrictInt
from torch import Tensor

from sparseinfer.encoders._proximal import GAP_TOL, GradientStep, Iterates, LassoConfig, ProximalEncoder, shrink
from sparseinfer.encoders.base import configure, register
from sparseinfer.flops import proximal as flops
from sparseinfer.flops.primitives import Flops
from sparseinfer.validation import check_positive


@register
class LCAEncoder(ProximalEncoder):
    """LCA: membrane potentials u follow tau du/dt = x D^T - u - a (D D^T - I), with codes a = T_penalty(u).

    Its fixed point is the minimiser, per sample, of 1/2 ||x - s D||^2 + penalty ||s||_1 (scikit-learn's
    `sparse_encode` convention, no 1/n: sklearn `Lasso(alpha)` with X = D^T solves it for alpha = penalty / dim);
    `nonneg` uses the one-sided threshold (s >= 0). The protocol's loss mean((x - sD)^2) + lam mean|s|
    corresponds to penalty = lam * dim / (2 n_latents). An Euler step of length `dt` reads, with eta = dt / tau,
    u <- a + eta (x D^T - a D D^T) + (1 - eta)(u - a): a gradient step from a plus the decaying
    threshold residual. `dt` None means dt = tau / L, L the largest eigenvalue of D D^T. Stops when, at a check
    (every `check_every` iterations), every sample's relative duality gap at the codes a is below `tol` (as
    `fista`). A warm start
    sets u = a + penalty * sign(a), whose threshold is the given codes. `debias` refits least squares on the
    support found.
    """

    name = "lca"
    summary = "LCA: locally competitive algorithm (sparse coding dynamics)"

    class Config(LassoConfig):
        tau: float = Field(1.0, description="time constant of the dynamics (> 0)")
        dt: float | None = Field(None, description="Euler step (None: tau / L)")
        check_every: StrictInt = Field(10, description="iterations between convergence checks")
        tol: float = Field(GAP_TOL, description="stop when every sample's relative duality gap is below (0: never)")

    def __init__(
        self,
        penalty: float = 0.01,
        max_iter: int = 1000,
        tol: float = GAP_TOL,
        nonneg: bool = False,
        debias: bool = False,
        tau: float = 1.0,
        dt: float | None = None,
        check_every: int = 10,
    ) -> None:
        c = configure(LCAEncoder, locals())
        super().__init__(c.penalty, c.max_iter, c.tol, c.nonneg, c.debias, None, c.check_every)
        self.tau = float(check_positive(c.tau, "tau"))
        self.dt = None if c.dt is None else float(check_positive(c.dt, "dt"))
        self.config = c

    def _needs_lipschitz(self) -> bool:
        return self.dt is None

    def _rate(self, lipschitz: float | None) -> float:
        """eta = dt / tau, with dt = tau / L by default."""
        return self.dt / self.tau if self.dt is not None else 1.0 / lipschitz  # type: ignore[operator]

    def _iterates(self, step: GradientStep, codes: Tensor, rate: float) -> Iterates:
        potential = codes + self.penalty * codes.sign()
        while True:
            potential = step(codes).add_(potential - codes, alpha=1.0 - rate)
            new = shrink(potential, self.penalty, self.nonneg)
            yield new, codes
            codes = new

    def _formula(self, batch: int, dim: int, n_latents: int, iterations: int) -> Flops:
        return flops.lca(
            batch, dim, n_latents, iterations, self._needs_lipschitz(), self._check_interval(), warm_start=self._warm
        )
