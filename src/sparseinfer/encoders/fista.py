"""`fista`: accelerated proximal gradient (Beck & Teboulle) for the Lasso, with per-sample adaptive restart."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor

from sparseinfer.encoders._active_set import Trace
from sparseinfer.encoders._proximal import GAP_TOL, GradientStep, Iterates, ProximalConfig, ProximalEncoder, shrink
from sparseinfer.encoders.base import configure, register
from sparseinfer.encoders.lasso import ExactLasso
from sparseinfer.flops import proximal as flops
from sparseinfer.flops.primitives import Flops
from sparseinfer.validation import check_count


def momentum_update(
    step: GradientStep, point: Tensor, codes: Tensor, t: Tensor, threshold: float | Tensor, nonneg: bool, restart: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One FISTA iteration from the extrapolation `point`: (new codes, next point, next t), with the restart test."""
    new = shrink(step(point), threshold, nonneg)
    delta = new - codes
    t_next = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
    beta = (t - 1.0) / t_next
    if restart:
        uphill = torch.linalg.vecdot(point - new, delta)[:, None] > 0
        beta = beta.masked_fill(uphill, 0.0)
        t_next = t_next.masked_fill(uphill, 1.0)
    return new, torch.addcmul(new, beta, delta), t_next


@functools.cache
def compiled_momentum_update() -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    """`momentum_update` through `torch.compile` (built once per process; shapes become dynamic after a change)."""
    return torch.compile(momentum_update)


@register
class FISTAEncoder(ExactLasso, ProximalEncoder):
    """FISTA: ISTA's step taken at y = s_t + beta_t (s_t - s_{t-1}), the Nesterov extrapolation.

    Minimises per sample 1/2 ||x - s D||^2 + penalty ||s||_1 (scikit-learn's `sparse_encode` convention, no 1/n:
    sklearn `Lasso(alpha)` with X = D^T solves it for alpha = penalty / dim); `nonneg` adds s >= 0.
    The protocol's loss mean((x - sD)^2) + lam mean|s| corresponds to penalty = lam * dim / (2 n_latents).
    `restart` resets a sample's momentum when it points uphill (O'Donoghue & Candes' gradient test), which keeps
    the fast rate without FISTA's oscillations; each sample carries its own momentum, so nothing synchronises.
    `step_size` None means 1/L, L the largest eigenvalue of D D^T. Stops when, at a check (every `check_every`
    iterations), every sample's relative duality gap is below `tol` (default 1e-6, a bound on the relative
    objective error; at least 50 eps of the dtype, 6e-6 in float32; tol = 0: no test, max_iter iterations).
    `debias` refits least squares on the support found.

    `active_set=True` replaces the iterations by the exact active-set solver of the `lasso` encoder (the same
    codes; `max_iter` bounds its rounds, `tol` is its KKT slack; step_size, check_every, restart and compile are
    unused). Prefer `lasso` itself; the flag stays for existing configs. Off by default so that published results
    stay unchanged.

    `compile=True` runs each iteration through `torch.compile` (its ~8 element-wise passes fused into one kernel):
    worth it for many calls on small problems, where those passes and not the products dominate; the first call
    pays the compilation (~10 s on CPU), and the results equal the eager ones to float rounding.
    """

    name = "fista"
    summary = "FISTA: accelerated proximal gradient on the Lasso (sparse coding)"

    class Config(ProximalConfig):
        restart: StrictBool = Field(True, description="reset a sample's momentum when it points uphill")
        active_set: StrictBool = Field(False, description="run the exact active-set solver instead (see `lasso`)")
        working_set: StrictInt = Field(8, description="with active_set: atoms screened per sample at first")
        compile: StrictBool = Field(False, description="fuse each iteration with torch.compile")

    def __init__(
        self,
        penalty: float = 0.01,
        max_iter: int = 1000,
        tol: float = GAP_TOL,
        nonneg: bool = False,
        debias: bool = False,
        step_size: float | None = None,
        check_every: int = 10,
        restart: bool = True,
        active_set: bool = False,
        working_set: int = 8,
        compile: bool = False,
    ) -> None:
        c = configure(FISTAEncoder, locals())
        super().__init__(c.penalty, c.max_iter, c.tol, c.nonneg, c.debias, c.step_size, c.check_every)
        self.restart = c.restart
        self.compile = c.compile
        self.active_set = c.active_set
        self.working_set = check_count(c.working_set, "working_set")
        self._trace: Trace | None = None
        self.config = c

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        """FISTA iterations, or with `active_set` the exact active-set solver (warm start: init's support first)."""
        if self.active_set:
            return self.exact_solve(x, atoms, init)
        return super().solve(x, atoms, init)

    def flops(self, batch: int, dim: int, n_latents: int) -> Flops:
        """FLOPs of the last call; with `active_set` those of the exact solver (see `lasso`)."""
        if self.active_set:
            return self.exact_flops(batch, dim, n_latents)
        return super().flops(batch, dim, n_latents)

    def _iterates(self, step: GradientStep, codes: Tensor, rate: float) -> Iterates:
        threshold: float | Tensor = rate * self.penalty
        update = momentum_update
        if self.compile:
            update = compiled_momentum_update()
            threshold = torch.tensor(threshold, dtype=codes.dtype, device=codes.device)
        point = codes
        t = codes.new_ones(codes.shape[0], 1)
        while True:
            new, point, t = update(step, point, codes, t, threshold, self.nonneg, self.restart)
            yield new, codes
            codes = new

    def _formula(self, batch: int, dim: int, n_latents: int, iterations: int) -> Flops:
        return flops.fista(
            batch, dim, n_latents, iterations, self._needs_lipschitz(), self._check_interval(), self.restart
        )
