"""Shared pieces of the proximal-gradient encoders (ista, fista, lca): thresholds, the gradient step, the step size
from the dictionary's Lipschitz constant, the batched stopping rule, and the common encoder base.

All of them minimise, per sample, the Lasso objective 1/2 ||x - s D||^2 + penalty ||s||_1 (optionally s >= 0),
and all stop on its relative duality gap: with r = x - s D and the dual point theta = r min(1, penalty /
max_j |r . d_j|) (max_j (r . d_j)_+ when s >= 0), gap = P(s) - (theta . x - ||theta||^2 / 2) >= P(s) - P(s*), so
a gap below tol P(s) bounds the relative objective error by tol (a certificate, unlike a small change per
iteration, which a slow solver also shows far from the optimum).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor

from sparseinfer.encoders._support import refit_with_sizes
from sparseinfer.encoders.base import Diagnostics, EncoderConfig, IterativeEncoder
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import proximal as flops
from sparseinfer.flops.primitives import Flops
from sparseinfer.validation import check_count, check_finite, check_positive

Iterates = Iterator[tuple[Tensor, Tensor]]


class LassoConfig(EncoderConfig):
    """Hyperparameters of every Lasso solver: 1/2 ||x - s D||^2 + penalty ||s||_1 per sample."""

    penalty: float = Field(0.01, description="L1 weight of the per-sample Lasso (> 0)")
    max_iter: StrictInt = Field(1000, description="iteration (active set: round) limit")
    tol: float = Field(1e-5, description="stopping tolerance (relative change; active set: KKT slack)")
    nonneg: StrictBool = Field(False, description="constrain codes to s >= 0")
    debias: StrictBool = Field(False, description="refit least squares on the support found")


GAP_TOL = 1e-6  # default relative duality gap of ista, fista and lca


class ProximalConfig(LassoConfig):
    """A proximal-gradient solver's hyperparameters: the Lasso's plus its step and stopping check."""

    tol: float = Field(GAP_TOL, description="stop when every sample's relative duality gap is below (0: never)")

    step_size: float | None = Field(None, description="gradient step (None: 1/L, L = ||D||_2^2)")
    check_every: StrictInt = Field(10, description="iterations between convergence checks")


def shrink(v: Tensor, threshold: float | Tensor, nonneg: bool) -> Tensor:
    """Proximal map of threshold * ||.||_1: soft threshold, or max(v - threshold, 0) when `nonneg`.

    A tensor `threshold` (what a compiled loop passes, so that a new value needs no recompilation) takes the
    equivalent v - clamp(v, -threshold, threshold)."""
    if nonneg:
        return (v - threshold).clamp_min_(0.0)
    if isinstance(threshold, Tensor):
        return v - v.clamp(-threshold, threshold)
    return torch.nn.functional.softshrink(v, threshold)  # one fused pass


def lasso_objective(x: Tensor, atoms: Tensor, codes: Tensor, penalty: float) -> Tensor:
    """Per-sample 1/2 ||x - s D||^2 + penalty ||s||_1 (for tests and diagnostics)."""
    return 0.5 * (x - codes @ atoms).pow(2).sum(1) + penalty * codes.abs().sum(1)


def lipschitz_constant(atoms: Tensor, gram: Tensor | None = None) -> float:
    """Largest eigenvalue of atoms @ atoms.T, from whichever of the two Gram matrices is smaller."""
    n_latents, dim = atoms.shape
    if n_latents <= dim:
        small = gram if gram is not None else atoms @ atoms.T
    else:
        small = atoms.T @ atoms
    value = float(torch.linalg.eigvalsh(small.to(torch.promote_types(small.dtype, torch.float32)))[-1])
    if not value > 0:
        raise SparseInferError("the dictionary's atoms are all zero: no step size can be derived")
    return value


class GradientStep:
    """s -> s + step (b - s G), one batched gradient step on 1/2 ||x - s D||^2 (b = x D^T, G = D D^T)."""

    def __init__(self, x: Tensor, atoms: Tensor, step: float, gram: Tensor | None) -> None:
        self.offset = (x @ atoms.T).mul_(step)
        self.atoms = atoms
        self.gram_form = gram is not None
        if gram is not None:
            eye = torch.eye(atoms.shape[0], dtype=atoms.dtype, device=atoms.device)
            self.matrix: Tensor = eye.sub_(gram, alpha=step)
        else:
            self.matrix = atoms.T * -step

    def __call__(self, s: Tensor) -> Tensor:
        if self.gram_form:
            return torch.addmm(self.offset, s, self.matrix)
        return torch.addmm(s + self.offset, s @ self.atoms, self.matrix)


def relative_change(new: Tensor, old: Tensor) -> Tensor:
    """Per sample ||new - old|| / max(||new||, eps)."""
    eps = torch.finfo(new.dtype).eps
    return (new - old).norm(dim=1) / new.norm(dim=1).clamp_min(eps)


def relative_duality_gap(x: Tensor, atoms: Tensor, codes: Tensor, penalty: float, nonneg: bool) -> Tensor:
    """Per sample (P(s) - D(theta)) / P(s) for the Lasso, with the scaled residual as dual point (module docstring)."""
    residual = x - codes @ atoms
    corr = residual @ atoms.T
    worst = corr.amax(1) if nonneg else corr.abs().amax(1)
    scale = torch.where(worst > penalty, penalty / worst.clamp_min(torch.finfo(x.dtype).tiny), 1.0)
    primal = 0.5 * residual.pow(2).sum(1) + penalty * codes.abs().sum(1)
    theta = residual * scale[:, None]
    dual = (theta * x).sum(1) - 0.5 * theta.pow(2).sum(1)
    return ((primal - dual) / primal.clamp_min(torch.finfo(x.dtype).tiny)).clamp_min(0.0)


def gap_floor(dtype: torch.dtype) -> float:
    """The smallest relative gap worth asking for in `dtype`: the gap's own rounding (50 eps: 6e-6 in float32)."""
    return 50 * torch.finfo(dtype).eps


def run_until_converged(
    iterates: Iterates, max_iter: int, tol: float, check_every: int, gap: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Diagnostics]:
    """Advance `iterates` (yielding (new, previous) codes) until every sample's `gap` (relative duality gap) is
    below `tol`, or for `max_iter` iterations; tol = 0 runs max_iter iterations with no convergence test.

    The gap is measured only every `check_every` iterations and at the last one (two products with the
    dictionary per check), so the device synchronises once per check rather than once per iteration.
    """
    for it, (new, _old) in enumerate(iterates, start=1):
        last = it >= max_iter
        if tol > 0 and (it % check_every == 0 or last):
            measured = gap(new)
            worst = float(measured.max()) if measured.numel() else 0.0
            if worst < tol or last:
                stuck = int((measured >= tol).sum())
                return new, Diagnostics(
                    iterations=it,
                    converged=stuck == 0,
                    max_change=worst,
                    n_unconverged=stuck,
                    measure="max relative duality gap",
                )
        elif last:
            return new, Diagnostics(iterations=it, converged=False, max_change=0.0, tested=False)
    raise AssertionError("iterates ended early")  # pragma: no cover - the generators are infinite


class ProximalEncoder(IterativeEncoder):
    """Base of ista/fista/lca: validates hyperparameters, sets up the gradient step, runs the loop, debiases.

    Subclasses provide `_iterates` (the iteration itself), `_rate` (step from L) and `_formula` (FLOPs).
    """

    def __init__(
        self,
        penalty: float,
        max_iter: int,
        tol: float,
        nonneg: bool,
        debias: bool,
        step_size: float | None,
        check_every: int,
    ) -> None:
        super().__init__()
        self.penalty = float(check_positive(penalty, "penalty"))
        self.max_iter = check_count(max_iter, "max_iter")
        self.tol = float(check_positive(tol, "tol", allow_zero=True))
        self.step_size = None if step_size is None else float(check_positive(step_size, "step_size"))
        self.check_every = check_count(check_every, "check_every")
        self.nonneg = bool(nonneg)
        self.debias = bool(debias)
        self._warm = False
        self._support_sizes: list[int] | None = None

    def _needs_lipschitz(self) -> bool:
        return self.step_size is None

    def _check_interval(self) -> int:
        """Iterations between gap checks, 0 when none run (tol = 0), for the FLOP formulas."""
        return self.check_every if self.tol > 0 else 0

    def _rate(self, lipschitz: float | None) -> float:
        """Gradient step size: `step_size`, or 1/L."""
        return self.step_size if self.step_size is not None else 1.0 / lipschitz  # type: ignore[operator]

    def _iterates(self, step: GradientStep, codes: Tensor, rate: float) -> Iterates:  # pragma: no cover
        raise NotImplementedError

    def _formula(self, batch: int, dim: int, n_latents: int, iterations: int) -> Flops:  # pragma: no cover
        raise NotImplementedError

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        """Minimise 1/2 ||x - s D||^2 + penalty ||s||_1 per row of `x`, from `init` codes or zeros."""
        n_latents, dim = atoms.shape
        gram = atoms @ atoms.T if flops.gram_is_cheaper(dim, n_latents) else None
        rate = self._rate(lipschitz_constant(atoms, gram) if self._needs_lipschitz() else None)
        self._warm = init is not None
        if init is None:
            codes = x.new_zeros(x.shape[0], n_latents)
        else:
            codes = check_finite(init, "warm-start codes").to(dtype=x.dtype, device=x.device)
            codes = codes.clamp_min(0.0) if self.nonneg else codes
        if x.shape[0] == 0:
            self.diagnostics = Diagnostics(iterations=0, converged=True, max_change=0.0)
            return codes
        step = GradientStep(x, atoms, rate, gram)
        tol = max(self.tol, gap_floor(x.dtype)) if self.tol > 0 else 0.0

        def gap(codes: Tensor) -> Tensor:
            return relative_duality_gap(x, atoms, codes, self.penalty, self.nonneg)

        codes, self.diagnostics = run_until_converged(
            self._iterates(step, codes, rate), self.max_iter, tol, self.check_every, gap
        )
        if self.debias:
            codes, self._support_sizes = refit_with_sizes(x, atoms, codes, self.nonneg)
        return codes

    def flops(self, batch: int, dim: int, n_latents: int) -> Flops:
        """FLOPs split into matmul and elementwise, for the iterations (and refit) of the last call."""
        iterations = self.max_iter if self.diagnostics is None else self.diagnostics.iterations
        total = self._formula(batch, dim, n_latents, iterations)
        if self.debias:
            sizes = self._support_sizes if self._support_sizes is not None else [min(dim, n_latents)]
            total += flops.refit(batch, dim, sizes, n_latents)
        return total

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return self.flops(batch, dim, n_latents).total
