"""The phase transition of L1 recovery: where basis pursuit recovers K-sparse codes in R^N from M random measurements.

Theory (Amelunxen, Lotz, McCoy & Tropp 2014, "Living on the edge: phase transitions in convex programs with random
data", Information and Inference 3(3), Prop. 4.5 and Sec. 4.6): L1 recovery succeeds with high probability when
M exceeds the statistical dimension of the L1 norm's descent cone at the code, which for an s-sparse code in R^N is
N * psi(s / N) with

    psi(eps) = inf_{tau >= 0}  eps (1 + tau^2) + c (1 - eps) J(tau),   J(tau) = E[(g - tau)_+^2], g ~ N(0, 1),

c = 2 for signed codes and c = 1 for non-negative codes with the constraint s >= 0 (the descent cone of the L1 norm
restricted to the orthant: off the support only the positive half-line is free). Setting delta = M / N equal to
psi(eps) and rho = eps / delta gives the curve in Donoho-Tanner coordinates (delta, rho = K / M); it coincides with
Donoho and Tanner's weak thresholds for the cross-polytope (signed) and the simplex (non-negative).

Practice: `basis_pursuit` solves min ||s||_1 subject to s D = x (and s >= 0) as a linear program (scipy's HiGHS),
and `empirical_transition` measures the fraction of exactly recovered codes over a (delta, rho) grid, with data from
the study's generator (unit-norm Gaussian atoms, exactly K active latents, half-normal magnitudes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import brentq, linprog, minimize_scalar
from scipy.stats import norm

from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_positive

EXACT_TOL = 1e-4  # relative L2 error below which a code counts as exactly recovered (the LP solves to ~1e-9)


def gaussian_tail_moment(tau: float) -> float:
    """J(tau) = E[(g - tau)_+^2] = (1 + tau^2) Q(tau) - tau phi(tau) for a standard normal g (closed form)."""
    return float((1.0 + tau * tau) * norm.sf(tau) - tau * norm.pdf(tau))


def statistical_dimension(eps: float, signed: bool = True) -> float:
    """psi(eps): the statistical dimension of the L1 descent cone at an (eps N)-sparse code, divided by N."""
    if not 0.0 <= eps <= 1.0:
        raise SparseInferError(f"sparsity fraction eps={eps} must lie in [0, 1]")
    if eps in (0.0, 1.0):
        return eps
    c = 2.0 if signed else 1.0

    def bound(tau: float) -> float:
        return eps * (1.0 + tau * tau) + c * (1.0 - eps) * gaussian_tail_moment(tau)

    best = minimize_scalar(bound, bounds=(0.0, 40.0), method="bounded", options={"xatol": 1e-12})
    return float(min(best.fun, bound(0.0)))


def transition_rho(delta: float, signed: bool = True) -> float:
    """The theoretical transition: the rho = K / M at which psi(rho delta) = delta (delta = M / N in (0, 1))."""
    check_positive(delta, "delta")
    if delta >= 1.0:
        raise SparseInferError(f"delta={delta} must be below 1 (M < N): at M >= N every code is recovered")
    return _transition_rho(float(delta), bool(signed))


@functools.lru_cache(maxsize=4096)
def _transition_rho(delta: float, signed: bool) -> float:
    eps = brentq(lambda e: statistical_dimension(e, signed) - delta, 1e-12, delta, xtol=1e-14)
    return eps / delta


def basis_pursuit(atoms: np.ndarray, x: np.ndarray, nonneg: bool = False) -> np.ndarray:
    """min ||s||_1 subject to s @ atoms = x (and s >= 0 if `nonneg`), one linear program per row of `x`.

    `atoms` is (N, M) with atoms as rows (the package's convention); returns codes (batch, N). Signed codes are split
    as s = u - v with u, v >= 0. An infeasible or failed solve is a SparseInferError."""
    atoms = np.asarray(atoms, dtype=np.float64)
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if atoms.ndim != 2 or x.shape[1] != atoms.shape[1]:
        raise SparseInferError(f"signals of shape {x.shape} do not match atoms of shape {atoms.shape}")
    if not (np.isfinite(atoms).all() and np.isfinite(x).all()):
        raise SparseInferError("basis pursuit needs finite atoms and signals (found NaN or Inf)")
    n = atoms.shape[0]
    equality = atoms.T if nonneg else np.hstack([atoms.T, -atoms.T])
    cost = np.ones(equality.shape[1])
    codes = np.zeros((x.shape[0], n))
    for i, row in enumerate(x):
        result = linprog(cost, A_eq=equality, b_eq=row, bounds=(0, None), method="highs")
        if result.status != 0:
            raise SparseInferError(f"basis pursuit failed on sample {i}: {result.message}")
        codes[i] = result.x if nonneg else result.x[:n] - result.x[n:]
    return codes


def exactly_recovered(true_codes: np.ndarray, codes: np.ndarray, tol: float = EXACT_TOL) -> np.ndarray:
    """Per sample: ||s_hat - s|| <= tol ||s|| (then the support is recovered too)."""
    true_codes, codes = np.asarray(true_codes, dtype=np.float64), np.asarray(codes, dtype=np.float64)
    return np.linalg.norm(codes - true_codes, axis=1) <= tol * np.linalg.norm(true_codes, axis=1)


def empirical_transition(
    deltas: Sequence[float],
    rhos: Sequence[float],
    n_latents: int,
    trials: int,
    signed: bool,
    seed: int = 0,
) -> pd.DataFrame:
    """Fraction of exactly recovered codes by basis pursuit at every (delta, rho): M = round(delta N),
    K = max(1, round(rho M)); each cell draws its own dictionary and `trials` codes. One row per cell."""
    check_positive(n_latents, "n_latents")
    check_positive(trials, "trials")
    rows = []
    for i, delta in enumerate(deltas):
        dim = max(1, round(delta * n_latents))
        for j, rho in enumerate(rhos):
            k = min(max(1, round(rho * dim)), n_latents)
            data = make_synthetic(
                n_latents=n_latents,
                dim=dim,
                k=k,
                n_train=trials,
                n_test=1,
                signed=signed,
                seed=seed + 1000 * i + j,
                dtype="float64",
            )
            atoms = data.dictionary.atoms.detach().numpy()
            truth = data.train_codes.numpy()
            codes = basis_pursuit(atoms, data.train_x.numpy(), nonneg=not signed)
            ok = exactly_recovered(truth, codes)
            rows.append(
                {
                    "signed": signed,
                    "delta": float(delta),
                    "rho": float(rho),
                    "n_latents": n_latents,
                    "dim": dim,
                    "k": k,
                    "delta_actual": dim / n_latents,
                    "rho_actual": k / dim,
                    "trials": trials,
                    "success": float(ok.mean()),
                }
            )
    return pd.DataFrame(rows)


def transition_crossings(cells: pd.DataFrame, level: float = 0.5) -> pd.DataFrame:
    """Per delta (and sign), the rho where the success fraction first falls below `level` (linear interpolation
    between grid points, in the realised rho = K / M), next to the theoretical transition rho at that delta."""
    rows = []
    for (signed, delta), part in cells.groupby(["signed", "delta"], sort=True):
        part = part.sort_values("rho_actual")
        rho, success = part["rho_actual"].to_numpy(), part["success"].to_numpy()
        below = np.flatnonzero(success < level)
        if len(below) == 0 or below[0] == 0:
            crossing = math.nan  # the grid does not bracket the crossing
        else:
            a, b = below[0] - 1, below[0]
            t = (success[a] - level) / (success[a] - success[b])
            crossing = float(rho[a] + t * (rho[b] - rho[a]))
        delta_actual = float(part["delta_actual"].iloc[0])
        rows.append(
            {
                "signed": bool(signed),
                "delta": float(delta),
                "delta_actual": delta_actual,
                "rho_empirical": crossing,
                "rho_theory": transition_rho(delta_actual, signed=bool(signed)) if delta_actual < 1 else math.nan,
            }
        )
    out = pd.DataFrame(rows)
    out["difference"] = out["rho_empirical"] - out["rho_theory"]
    return out


def agreement(cells: pd.DataFrame) -> float:
    """Fraction of grid cells on the side of the theoretical curve that their success fraction says (>= 0.5 below
    the curve, < 0.5 above it): a one-number summary of how well the curve predicts the experiment."""
    hits = []
    for _, cell in cells.iterrows():
        if cell["delta_actual"] >= 1:
            continue
        predicted = cell["rho_actual"] < transition_rho(cell["delta_actual"], signed=bool(cell["signed"]))
        hits.append(predicted == (cell["success"] >= 0.5))
    return float(np.mean(hits)) if hits else math.nan
