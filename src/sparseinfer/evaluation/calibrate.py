"""Sparsity matched by construction: an inference method set up on one dictionary so that its mean L0 on held-out
activations lands at a target.

- Penalised iterative methods (`fista`, `ista`, `lca`, `gradient`, and `ito`, the `gradient` refiner warm-started
  from a trained encoder): bisection on log(penalty) until the mean L0 on the calibration signals is within
  `tolerance` (default 5%) of the target; a target out of reach is refused with the L0 range seen.
- Budgeted methods (`omp`, `matching_pursuit`, `topk`): k = round(target).

The penalty is bisected on the Lasso scale (1/2 ||x - sD||^2 + lambda ||s||_1); `gradient` and `ito` take the study's
per-element scale, converted by `study_penalty` (same minimisers). Every bisection trial's FLOPs are summed in
`Calibration.flops`: a one-off cost per dictionary, reported apart from the per-token inference cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparseinfer.codes import as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, IterativeEncoder, create, get
from sparseinfer.encoders.gradient import study_penalty
from sparseinfer.encoders.ito import ITOEncoder
from sparseinfer.errors import SparseInferError
from sparseinfer.metrics import l0
from sparseinfer.validation import check_count

PENALISED = ("fista", "ista", "lca", "gradient", "ito")
BUDGETED = ("omp", "matching_pursuit", "topk")
METHODS = PENALISED + BUDGETED
TOLERANCE = 0.05
COARSE_TOLERANCE = 0.25  # the wide search only centres the narrow one (a factor 8 either side of its penalty)
MAX_STEPS = 30
SPAN = 1e-6  # the bisection's lowest penalty, relative to the one at which every Lasso code is zero
LASSO_DEFAULTS: dict[str, Any] = {"nonneg": True, "debias": True, "max_iter": 500}
GRADIENT_DEFAULTS: dict[str, Any] = {"parameterisation": "relu", "lr": 0.05, "max_iter": 100, "debias": True}


@dataclass
class Bisection:
    """The outcome of `bisect_penalty`: the penalty whose L0 came closest to the target, and what it cost."""

    penalty: float
    l0: float
    steps: int
    flops: int
    within: bool
    trials: list[tuple[float, float]] = field(default_factory=list)  # (penalty, L0) of every trial


@dataclass
class Calibration:
    """An inference method matched to `target` L0 on one dictionary: the ready encoder and how it was set."""

    method: str
    target: float
    l0: float  # achieved mean L0 on the calibration signals
    encoder: Encoder
    penalty: float | None = None  # Lasso-scale penalty (penalised methods)
    k: int | None = None  # budget (budgeted methods)
    steps: int = 0
    flops: int = 0
    samples: int = 0

    def summary(self) -> dict[str, Any]:
        """The calibration as plain values (for a results row)."""
        return {"method": self.method, "target_l0": self.target, "calibrated_l0": self.l0, "penalty": self.penalty,
                "k": self.k, "calibration_steps": self.steps, "calibration_flops": self.flops,
                "calibration_samples": self.samples}  # fmt: skip


def zero_penalty(x: Tensor, dictionary: Dictionary) -> float:
    """The Lasso penalty at and above which every code of `x` is zero: max |<x - b, d_j>|."""
    return float((dictionary.centre(x) @ dictionary.atoms.T).abs().max()) + 1e-12


@torch.no_grad()
def bisect_penalty(
    build: Callable[[float], Encoder],
    x: Tensor,
    dictionary: Dictionary,
    target: float,
    init: Tensor | None = None,
    tolerance: float = TOLERANCE,
    max_steps: int = MAX_STEPS,
    high: float | None = None,
    span: float = SPAN,
) -> Bisection:
    """Search log(penalty) in [high * span, high] (default `high`: `zero_penalty`; bisection, then interpolation:
    `_next_trial`) for the mean L0 of `build(penalty)(x, dictionary[, init])` to land within `tolerance` (relative)
    of `target`; stops at the first trial that does, else after `max_steps`. Returns the closest trial (`within`
    says whether it is close enough)."""
    if not target > 0:
        raise SparseInferError(f"target L0 must be positive, got {target}")
    check_count(max_steps, "max_steps")
    high = zero_penalty(x, dictionary) if high is None else high
    lo, hi = math.log(high * span), math.log(high)
    at_lo = at_hi = None  # the L0 measured at each end of the bracket, once a trial has moved it there
    best = Bisection(high, math.inf, 0, 0, False)
    batch = x.shape[0]
    for step in range(1, max_steps + 1):
        mid = _next_trial(lo, hi, at_lo, at_hi, target)
        solver = build(math.exp(mid))
        codes = solver(x, dictionary) if init is None else solver(x, dictionary, init=init)  # type: ignore[call-arg]
        best.flops += solver.inference_flops(batch, dictionary.dim, dictionary.n_latents)
        count = l0(as_dense(codes))
        best.trials.append((math.exp(mid), count))
        best.steps = step
        if abs(count - target) < abs(best.l0 - target):
            best.penalty, best.l0 = math.exp(mid), count
        if abs(count - target) <= tolerance * target:
            best.within = True
            break
        if count > target:
            lo, at_lo = mid, count
        else:
            hi, at_hi = mid, count
    return best


def _next_trial(lo: float, hi: float, at_lo: float | None, at_hi: float | None, target: float) -> float:
    """The next log-penalty in the bracket [lo, hi]: where log L0 interpolated linearly between the two ends meets
    log(target) once both ends are measured (L0 falls about as a power of the penalty, so this takes fewer trials
    than halving: 5 against 7 in tests/test_calibrate.py), kept at least 15% of the bracket from either end so that
    the bracket always shrinks; the midpoint before that."""
    if at_lo is None or at_hi is None:
        return (lo + hi) / 2
    top, bottom = math.log(max(at_lo, 0.5)), math.log(max(at_hi, 0.5))
    share = (top - math.log(target)) / (top - bottom) if top > bottom else 0.5
    return lo + min(max(share, 0.15), 0.85) * (hi - lo)


def _refuse(method: str, target: float, found: Bisection, tolerance: float) -> SparseInferError:
    """A one-line explanation of why `target` was not reached."""
    seen = [c for _, c in found.trials]
    if max(seen) < target * (1 - tolerance):
        why = f"the densest code it reaches has L0 {max(seen):.1f} (penalty {min(p for p, _ in found.trials):.3g})"
    elif min(seen) > target * (1 + tolerance):
        why = f"the sparsest code it reaches has L0 {min(seen):.1f}"
    else:
        why = f"L0 jumps over the target (closest {found.l0:.1f} at penalty {found.penalty:.3g})"
    return SparseInferError(
        f"{method} cannot reach mean L0 {target:g} within {tolerance:.0%} on this dictionary after {found.steps} "
        f"bisection steps: {why}"
    )


def penalised_builder(
    method: str, dictionary: Dictionary, params: dict[str, Any] | None = None
) -> Callable[[float], IterativeEncoder]:
    """`penalty (Lasso scale) -> solver` for a penalised method (`ito` builds its `gradient` refiner)."""
    params = dict(params or {})
    dim, n = dictionary.dim, dictionary.n_latents
    if method in ("gradient", "ito"):
        settings = {**GRADIENT_DEFAULTS, **params}

        def gradient(penalty: float) -> IterativeEncoder:
            solver = create("gradient", dim=dim, n_latents=n, **settings, penalty=study_penalty(penalty, dim, n))
            assert isinstance(solver, IterativeEncoder)
            return solver

        return gradient
    if method not in PENALISED:
        raise SparseInferError(f"{method!r} has no penalty to calibrate; penalised methods: {', '.join(PENALISED)}")
    settings = {**LASSO_DEFAULTS, **params}

    def lasso(penalty: float) -> IterativeEncoder:
        solver = create(method, dim=dim, n_latents=n, **settings, penalty=penalty)
        assert isinstance(solver, IterativeEncoder)
        return solver

    return lasso


def budgeted(
    method: str, dictionary: Dictionary, k: int, params: dict[str, Any] | None = None, warm: Encoder | None = None
) -> Encoder:
    """A budgeted method with k codes per token: pursuit (non-negative unless `params` says otherwise), or TopK:
    `warm`'s trained weights when it is a TopK-style encoder, else a TopK encoder tied to the atoms (D x)."""
    params = dict(params or {})
    dim, n = dictionary.dim, dictionary.n_latents
    if method in ("omp", "matching_pursuit"):
        return create(method, dim=dim, n_latents=n, **{"nonneg": True, **params, "k": k})
    if warm is not None and hasattr(warm, "k") and get(method) is type(warm):
        copy = deepcopy(warm)
        copy.k = k
        return copy
    encoder = create(method, dim=dim, n_latents=n, **{**params, "k": k})
    with torch.no_grad():
        encoder.linear.weight.copy_(dictionary.atoms.detach())  # type: ignore[union-attr]
        if encoder.linear.bias is not None:  # type: ignore[union-attr]
            encoder.linear.bias.zero_()  # type: ignore[union-attr]
    return encoder


def matched_encoder(method: str, dictionary: Dictionary, penalty: float | None = None, k: int | None = None,
                    params: dict[str, Any] | None = None, warm: Encoder | None = None) -> Encoder:  # fmt: skip
    """The encoder a calibration of `method` settles on, from its Lasso-scale `penalty` (penalised methods, refining
    `warm`'s codes when given) or its budget `k`: how `calibrate` builds its result, and how a saved calibration is
    rebuilt without a second search."""
    if method in BUDGETED:
        if k is None:
            raise SparseInferError(f"{method} needs its budget k")
        return budgeted(method, dictionary, k, params, warm).eval()
    if penalty is None:
        raise SparseInferError(f"{method} needs its calibrated penalty")
    solver = penalised_builder(method, dictionary, params)(penalty)
    return solver if warm is None else ITOEncoder.wrap(warm, refiner=solver)


def _two_phase(
    method: str,
    dictionary: Dictionary,
    params: dict[str, Any],
    x: Tensor,
    target: float,
    init: Tensor | None,
    tolerance: float,
    max_steps: int,
) -> Bisection:
    """The search, made cheap for debiased solvers: the wide search runs (to 25%) without the debiasing refit (whose
    least-squares solves on dense early trials dominate the cost), then a narrow one (a factor 8 either side of the
    penalty found) with it, since debiasing only changes values and drops negative ones. Steps and FLOPs of both
    summed; the trials listed are the narrow search's (what the debiased solver reaches)."""
    build = penalised_builder(method, dictionary, params)
    settings = {**(GRADIENT_DEFAULTS if method in ("gradient", "ito") else LASSO_DEFAULTS), **params}
    if not settings.get("debias"):
        return bisect_penalty(build, x, dictionary, target, init, tolerance, max_steps)
    coarse = bisect_penalty(penalised_builder(method, dictionary, {**params, "debias": False}), x, dictionary,
                            target, init, max(tolerance, COARSE_TOLERANCE), max_steps)  # fmt: skip
    fine = bisect_penalty(build, x, dictionary, target, init, tolerance, max_steps, high=coarse.penalty * 8,
                          span=1 / 64)  # fmt: skip
    fine.steps += coarse.steps
    fine.flops += coarse.flops
    return fine


@torch.no_grad()
def calibrate(
    method: str,
    dictionary: Dictionary,
    x: Tensor,
    target: float,
    params: dict[str, Any] | None = None,
    warm: Encoder | None = None,
    tolerance: float = TOLERANCE,
    max_steps: int = MAX_STEPS,
) -> Calibration:
    """`method` on `dictionary` with its mean L0 on the signals `x` matched to `target` (see the module doc).

    `warm`: a trained encoder whose codes start the solver (required for `ito`; with a Lasso solver it makes the
    same warm-started hybrid, FLOPs of both counted); for TopK, the trained encoder whose k is set. Raises
    `SparseInferError` when the target cannot be reached."""
    if method not in METHODS:
        raise SparseInferError(f"cannot calibrate {method!r}; choose one of {', '.join(METHODS)}")
    params = dict(params or {})
    if not 0 < target <= dictionary.n_latents:
        raise SparseInferError(f"target L0 must be in (0, {dictionary.n_latents}], got {target}")
    x = x.to(dictionary.atoms.dtype)
    if method in BUDGETED:
        k = max(1, round(target))
        encoder = matched_encoder(method, dictionary, k=k, params=params, warm=warm)
        count = l0(as_dense(encoder(x, dictionary)))
        flops = encoder.inference_flops(x.shape[0], dictionary.dim, dictionary.n_latents)
        return Calibration(method, target, count, encoder, k=k, flops=flops, samples=x.shape[0])
    if method == "ito" and warm is None:
        raise SparseInferError("ito refines a trained encoder's codes: give the encoder to warm-start from")
    if "penalty" in params:
        raise SparseInferError(f"{method}'s penalty is what calibration sets; do not give one")
    init = as_dense(warm(x, dictionary)).detach() if warm is not None else None
    spent = warm.inference_flops(x.shape[0], dictionary.dim, dictionary.n_latents) if warm is not None else 0
    found = _two_phase(method, dictionary, params, x, target, init, tolerance, max_steps)
    if not found.within:
        raise _refuse(method, target, found, tolerance)
    encoder = matched_encoder(method, dictionary, found.penalty, params=params, warm=warm)
    return Calibration(method, target, found.l0, encoder, penalty=found.penalty, steps=found.steps,
                       flops=found.flops + spent, samples=x.shape[0])  # fmt: skip
