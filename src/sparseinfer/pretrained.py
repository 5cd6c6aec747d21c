"""Better codes for a pretrained SAE: its own encoder's codes against codes refined against its own decoder, at
matched L0, with the FVU gained and the inference FLOPs paid.

Refiners (all non-negative, since SAE codes are):
- `ito`: keep the SAE's support, refit the values by non-negative least squares (L0 <= the SAE's, per sample);
- `omp`: orthogonal matching pursuit with a budget of k = the SAE's mean L0, rounded;
- `fista`, `lca`: the Lasso warm-started from the SAE's codes and debiased, its penalty set by bisection on a
  calibration slice so the mean L0 matches the SAE's (the bisection is a one-off per SAE and is not counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import Tensor

from sparseinfer.codes import as_dense
from sparseinfer.encoders._support import refit_with_sizes
from sparseinfer.encoders.base import IterativeEncoder, create
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import proximal
from sparseinfer.io import LoadedSAE, load_sae
from sparseinfer.metrics import fvu, l0
from sparseinfer.validation import check_signals

REFINERS = ("ito", "fista", "omp", "lca")
BISECTION_STEPS = 16


@dataclass
class RefineResult:
    """One row of the comparison: codes from `method` on the signals."""

    method: str
    fvu: float
    l0: float
    flops: int
    extra_flops: int
    detail: str = ""


def _result(
    method: str, x: Tensor, sae: LoadedSAE, codes: Tensor, flops: int, base: int, detail: str = ""
) -> RefineResult:
    with torch.no_grad():
        return RefineResult(method, fvu(x, sae.dictionary.decode(codes)), l0(codes), flops, flops - base, detail)


def _solver(name: str, params: dict[str, Any], penalty: float | None = None) -> IterativeEncoder:
    hp = {"nonneg": True, **params}
    if name in ("fista", "lca"):
        hp = {"debias": True, "max_iter": 500, **hp}
        if penalty is not None:
            hp["penalty"] = penalty
    solver = create(name, **hp)
    assert isinstance(solver, IterativeEncoder)
    return solver


def _calibrate(name: str, params: dict[str, Any], sae: LoadedSAE, x: Tensor, start: Tensor, target: float) -> float:
    """Bisect log(penalty) so the solver's mean L0 on `x` is as close as possible to `target`."""
    centred = sae.dictionary.centre(x)
    high = float((centred @ sae.dictionary.atoms.T).abs().max()) + 1e-12  # every code is zero at this penalty
    lo, hi = math.log(high * 1e-6), math.log(high)
    best, best_gap = high, math.inf
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        solver = _solver(name, params, math.exp(mid))
        count = l0(as_dense(solver(x, sae.dictionary, init=start)))
        if abs(count - target) < best_gap:
            best, best_gap = math.exp(mid), abs(count - target)
        if count > target:
            lo = mid
        else:
            hi = mid
    return best


@torch.no_grad()
def refine(
    sae: LoadedSAE, x: Tensor, method: str, params: dict[str, Any] | None = None, calibration: int = 256
) -> tuple[Tensor, RefineResult]:
    """Codes of `x` from `method` ('sae' = the SAE's own encoder, or one of REFINERS) and their scores."""
    params = dict(params or {})
    dico = sae.dictionary
    x = check_signals(x.to(dico.atoms.dtype), dico.dim)
    batch, dim, n_latents = x.shape[0], dico.dim, dico.n_latents
    base = sae.encoder.inference_flops(batch, dim, n_latents)
    own = sae.encode(x)
    if method == "sae":
        return own, _result("sae", x, sae, own, base, base)
    if method not in REFINERS:
        raise SparseInferError(f"unknown refiner {method!r}; choose one of {', '.join(REFINERS)}")
    target = l0(own)
    if method == "ito":
        codes, sizes = refit_with_sizes(dico.centre(x), dico.atoms.detach(), own, nonneg=True)
        flops = base + proximal.refit(batch, dim, sizes).total
        return codes, _result("ito", x, sae, codes, flops, base, "NNLS on the SAE's support")
    if method == "omp":
        k = min(n_latents, max(1, round(target)))
        solver = _solver("omp", {"k": k, **params})
        codes = as_dense(solver(x, dico))
        flops = solver.inference_flops(batch, dim, n_latents)
        return codes, _result("omp", x, sae, codes, flops, base, f"k={solver.k}")
    cal = slice(0, min(calibration, batch))
    penalty = params.pop("penalty", None)
    if penalty is None:
        penalty = _calibrate(method, params, sae, x[cal], own[cal], l0(own[cal]))
    solver = _solver(method, params, penalty)
    codes = as_dense(solver(x, dico, init=own))
    flops = base + solver.inference_flops(batch, dim, n_latents)
    return codes, _result(method, x, sae, codes, flops, base, f"penalty={penalty:.3g}, {solver.diagnostics}")


def compare(
    sae: LoadedSAE | str | Path, x: Tensor, methods: list[str], params: dict[str, Any] | None = None
) -> list[RefineResult]:
    """The SAE's own codes, then each refiner in `methods`, on the same signals."""
    loaded = sae if isinstance(sae, LoadedSAE) else load_sae(sae)
    return [refine(loaded, x, m, params)[1] for m in ["sae", *methods]]


def refine_table(rows: list[RefineResult], title: str = "SAE codes vs refined codes") -> Table:
    """A terminal table of a comparison."""
    table = Table(title=title)
    for column in ("method", "FVU", "L0", "FLOPs", "extra FLOPs", "detail"):
        table.add_column(column, justify="left" if column in ("method", "detail") else "right")
    for r in rows:
        table.add_row(r.method, f"{r.fvu:.4f}", f"{r.l0:.2f}", f"{r.flops:.3e}", f"{r.extra_flops:.3e}", r.detail)
    return table


def run_refine(
    sae: Path, signals: Path | None, method: str, params: dict[str, Any] | None = None, out: Path | None = None
) -> Table:
    """`sparseinfer infer --sae`: load the SAE and the signals, compare its codes with `method` ('all': every
    refiner), optionally save the refined codes (last method) to `out`; returns the table."""
    from safetensors.torch import save_file

    from sparseinfer.inference import load_signals

    if signals is None:
        raise SparseInferError("--sae needs --signals (activations, batch x d_in)")
    methods = list(REFINERS) if method == "all" else [method]
    if any(m not in REFINERS for m in methods):
        raise SparseInferError(f"with --sae, --encoder must be one of {', '.join(REFINERS)} or all; got {method!r}")
    loaded = load_sae(sae)
    x = load_signals(signals)
    rows = [refine(loaded, x, "sae")[1]]
    codes = None
    for m in methods:
        codes, row = refine(loaded, x, m, params)
        rows.append(row)
    if out is not None and codes is not None:
        save_file({"codes": codes.contiguous()}, str(out))
    return refine_table(rows, f"{loaded.source} SAE on {x.shape[0]} signals (N={loaded.dictionary.n_latents})")
