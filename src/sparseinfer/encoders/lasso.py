"""`lasso`: the exact per-sample Lasso by an active-set method on working sets (see `_active_set`).

Minimises 1/2 ||x - s D||^2 + penalty ||s||_1 (optionally s >= 0) to its KKT conditions, |d_j^T r| <= penalty (1 +
tol) for every inactive atom: screen each sample's `working_set` atoms by |x D^T|, solve the Lasso on them by
sign-constrained Cholesky steps, verify KKT on the full dictionary and add violators, growing the working set as
needed (`max_iter` bounds its rounds). Worth it when codes are sparse (support much smaller than dim and n_latents):
about one product with the dictionary per KKT round instead of two per FISTA iteration, and its result does not
depend on an iteration count. `fista(active_set=True)` runs the same solver (`ExactLasso`), kept for old configs.
"""

from __future__ import annotations

from pydantic import Field, StrictInt
from torch import Tensor

from sparseinfer.encoders._active_set import ActiveSetLasso, Trace
from sparseinfer.encoders._proximal import LassoConfig
from sparseinfer.encoders._support import refit_with_sizes
from sparseinfer.encoders.base import Diagnostics, IterativeEncoder, configure, register
from sparseinfer.flops import proximal as flops
from sparseinfer.flops.primitives import Flops
from sparseinfer.validation import check_count, check_finite, check_positive


class ExactLasso:
    """The active-set solve and its FLOPs, for an encoder holding penalty, max_iter, tol, nonneg, debias and
    working_set (the `lasso` encoder, and `fista` with `active_set=True`)."""

    penalty: float
    max_iter: int
    tol: float
    nonneg: bool
    debias: bool
    working_set: int
    diagnostics: Diagnostics | None
    _trace: Trace | None
    _support_sizes: list[int] | None
    _warm: bool

    def exact_solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        """Codes at the Lasso optimum (warm start: init's support first); sets diagnostics and the FLOP trace."""
        self._warm = init is not None
        if init is not None:
            init = check_finite(init, "warm-start codes").to(dtype=x.dtype, device=x.device)
        solver = ActiveSetLasso(self.penalty, self.nonneg, self.working_set, self.tol, self.max_iter)
        codes, self.diagnostics = solver.solve(x, atoms, init)
        self._trace = solver.trace
        if self.debias:
            codes, self._support_sizes = refit_with_sizes(x, atoms, codes, self.nonneg)
        return codes

    def exact_flops(self, batch: int, dim: int, n_latents: int) -> Flops:
        """FLOPs of the last call, from its trace (before any call: one round on the working set, one check)."""
        full_gram = n_latents * n_latents <= ActiveSetLasso.GRAM_ENTRIES
        size = min(self.working_set, n_latents)
        trace = self._trace or Trace(batch, full_gram, [(batch, size)], [(batch, size)] * 2, [(batch, size)])
        total = flops.active_set(
            batch,
            dim,
            n_latents,
            trace.full_gram,
            trace.solves,
            trace.window_checks,
            trace.kkt_checks,
            trace.gram_blocks,
            trace.null_steps,
            trace.path_segments,
            trace.path_work,
        )
        if self.debias:
            sizes = self._support_sizes if self._support_sizes is not None else [min(dim, n_latents)]
            total += flops.refit(batch, dim, sizes, n_latents)
        return total


class ExactLassoConfig(LassoConfig):
    """The exact solver's hyperparameters: the Lasso's plus the initial working-set size."""

    working_set: StrictInt = Field(8, description="atoms screened per sample before the first KKT check")


@register
class LassoEncoder(ExactLasso, IterativeEncoder):
    """The exact Lasso per sample (see the module docstring); warm-startable, so also an `ito` refiner."""

    name = "lasso"
    summary = "exact Lasso: active-set solver on per-sample working sets, verified by KKT on the dictionary"
    Config = ExactLassoConfig

    def __init__(
        self,
        penalty: float = 0.01,
        max_iter: int = 1000,
        tol: float = 1e-5,
        nonneg: bool = False,
        debias: bool = False,
        working_set: int = 8,
    ) -> None:
        c = configure(LassoEncoder, locals())
        super().__init__()
        self.penalty = float(check_positive(c.penalty, "penalty"))
        self.max_iter = check_count(c.max_iter, "max_iter")
        self.tol = float(check_positive(c.tol, "tol", allow_zero=True))
        self.nonneg, self.debias = c.nonneg, c.debias
        self.working_set = check_count(c.working_set, "working_set")
        self._trace = None
        self._support_sizes = None
        self._warm = False
        self.config = c

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        """The exact active-set solve."""
        return self.exact_solve(x, atoms, init)

    def flops(self, batch: int, dim: int, n_latents: int) -> Flops:
        """FLOPs split into matmul and elementwise, for the rounds (and refit) of the last call."""
        return self.exact_flops(batch, dim, n_latents)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return self.exact_flops(batch, dim, n_latents).total
