"""Sparse coding on CPU: our FISTA (iterative, exact active-set) and OMP against sklearn's `sparse_encode`.

    python benchmarks/bench_sparse_coding.py --signals 10000 --threads 2 --repeats 3

Problems: unit-norm random dictionaries (N atoms of dimension M), signals = K-sparse codes (|s| in [0.5, 1.5],
random signs) times D plus 0.01 noise, float64 data. Every method solves the same penalty: per sample
1/2 ||x - s D||^2 + penalty ||s||_1 (sklearn's `alpha` for lasso_* has this meaning; it divides by n_features
internally). Accuracy: the summed objective relative to the best one known (any method's, or a float64 FISTA run
to tol 1e-12 where affordable, whichever is lower); a method counts only if that gap is <= 1e-4 (checked, printed). Ours
computes in float32 (the objective is always evaluated in float64). `ours_active_set_f32` is the `fista` encoder
with `active_set=True` (exact: KKT to a relative `--tol`, working set `--working-set`); `ours_fista_compiled_f32`
is FISTA with `compile=True` (compiled before the timings). OMP is compared on the
squared residual against sklearn's omp at the same K. Timings: the methods are run interleaved, `--repeats`
rounds, the minimum per method is kept, so ratios come from one run on one machine state. Appends one JSON line
to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
from sklearn.decomposition import sparse_encode

from sparseinfer.encoders._proximal import lasso_objective
from sparseinfer.encoders.fista import FISTAEncoder
from sparseinfer.encoders.omp import OMPEncoder

SHAPES = ((32, 64, 4), (256, 1024, 16))
GOAL_FISTA, GOAL_OMP, ACCURACY = 10.0, 5.0, 1e-4


def problem(dim: int, n_latents: int, k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals (n, dim) and unit-norm atoms (n_latents, dim), float64."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_latents, dim, generator=g, dtype=torch.float64)
    atoms /= atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, n_latents, dtype=torch.float64)
    support = torch.rand(n, n_latents, generator=g).argsort(1)[:, :k]
    values = (torch.rand(n, k, generator=g, dtype=torch.float64) + 0.5) * torch.randn(n, k, generator=g).sign()
    codes.scatter_(1, support, values.double())
    return codes @ atoms + 0.01 * torch.randn(n, dim, generator=g, dtype=torch.float64), atoms


def lasso_total(x: torch.Tensor, atoms: torch.Tensor, codes: np.ndarray | torch.Tensor, penalty: float) -> float:
    return float(lasso_objective(x, atoms, torch.as_tensor(codes).to(torch.float64), penalty).sum())


def residual_total(x: torch.Tensor, atoms: torch.Tensor, codes: np.ndarray | torch.Tensor) -> float:
    return float((x - torch.as_tensor(codes).to(torch.float64) @ atoms).pow(2).sum())


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_shape(
    dim: int, n_latents: int, k: int, n: int, penalty: float, repeats: int, tol: float, working_set: int
) -> dict:
    x, atoms = problem(dim, n_latents, k, n)
    xn, dn = x.numpy(), atoms.numpy()
    x32, atoms32 = x.float(), atoms.float()
    fista = FISTAEncoder(penalty=penalty, max_iter=5000, tol=tol, check_every=5)
    compiled = FISTAEncoder(penalty=penalty, max_iter=5000, tol=tol, check_every=5, compile=True)
    compiled.solve(x32, atoms32, None)  # compilation happens here, outside the timings
    active = FISTAEncoder(penalty=penalty, tol=tol, active_set=True, working_set=working_set)
    omp = OMPEncoder(k=k)
    methods: dict[str, Callable[[], object]] = {
        "ours_fista_f32": lambda: fista.solve(x32, atoms32, None),
        "ours_fista_compiled_f32": lambda: compiled.solve(x32, atoms32, None),
        "ours_active_set_f32": lambda: active.solve(x32, atoms32, None),
        "sklearn_lasso_cd": lambda: sparse_encode(xn, dn, algorithm="lasso_cd", alpha=penalty, n_jobs=1),
        "sklearn_lasso_lars": lambda: sparse_encode(xn, dn, algorithm="lasso_lars", alpha=penalty, n_jobs=1),
        "ours_omp_f32": lambda: omp.solve(x32, atoms32, None),
        "sklearn_omp": lambda: sparse_encode(xn, dn, algorithm="omp", n_nonzero_coefs=k, n_jobs=1),
    }
    best_times = {name: float("inf") for name in methods}
    outputs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in methods.items():  # interleaved: each round runs every method once
            seconds, outputs[name] = timed(fn)
            best_times[name] = min(best_times[name], seconds)
    lasso = {name: lasso_total(x, atoms, outputs[name], penalty) for name in methods if "_omp" not in name}
    best = min(lasso.values())
    if n * n_latents * max(dim, n_latents) <= 1e8:  # a tight float64 solve where affordable
        exact = FISTAEncoder(penalty=penalty, max_iter=200_000, tol=1e-12).solve(x, atoms, None)
        best = min(best, lasso_total(x, atoms, exact, penalty))
    gaps = {name: (value - best) / best for name, value in lasso.items()}
    resid = {name: residual_total(x, atoms, outputs[name]) for name in methods if "_omp" in name}
    gaps["ours_omp_f32"] = (resid["ours_omp_f32"] - resid["sklearn_omp"]) / resid["sklearn_omp"]
    gaps["sklearn_omp"] = 0.0
    accurate_lasso = [m for m in ("sklearn_lasso_cd", "sklearn_lasso_lars") if gaps[m] <= ACCURACY]
    fastest = min(accurate_lasso, key=best_times.__getitem__)
    return {
        "shape": {"dim": dim, "n_latents": n_latents, "k": k, "signals": n, "penalty": penalty},
        "seconds": best_times,
        "relative_objective_gap": gaps,
        "fista_iterations": fista.diagnostics.iterations if fista.diagnostics else None,
        "fista_tol": tol,
        "fastest_sklearn_lasso": fastest,
        "ratio_fista": best_times[fastest] / best_times["ours_fista_f32"],
        "ratio_fista_compiled": best_times[fastest] / best_times["ours_fista_compiled_f32"],
        "ratio_omp": best_times["sklearn_omp"] / best_times["ours_omp_f32"],
        "ratio_active_set": best_times[fastest] / best_times["ours_active_set_f32"],
        "active_set_rounds": active.diagnostics.iterations if active.diagnostics else None,
        "active_set_working_set": working_set,
        "fista_accurate": gaps["ours_fista_f32"] <= ACCURACY,
        "fista_compiled_accurate": gaps["ours_fista_compiled_f32"] <= ACCURACY,
        "active_set_accurate": gaps["ours_active_set_f32"] <= ACCURACY,
        "omp_accurate": abs(gaps["ours_omp_f32"]) <= ACCURACY,
    }


def versions() -> dict[str, str]:
    """Versions of what the timings depend on."""
    return {
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def table(rows: list[dict]) -> str:
    header = "| M | N | K | method | seconds | rel. objective gap | speed-up of ours |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        s = row["shape"]
        for name, seconds in row["seconds"].items():
            if name.startswith("ours_active_set"):
                speed = f"{row['ratio_active_set']:.1f}x vs {row['fastest_sklearn_lasso']} (goal {GOAL_FISTA:.0f}x)"
            elif name.startswith("ours_fista_compiled"):
                speed = f"{row['ratio_fista_compiled']:.1f}x vs {row['fastest_sklearn_lasso']} (goal {GOAL_FISTA:.0f}x)"
            elif name.startswith("ours_fista"):
                speed = f"{row['ratio_fista']:.1f}x vs {row['fastest_sklearn_lasso']} (goal {GOAL_FISTA:.0f}x)"
            elif name.startswith("ours_omp"):
                speed = f"{row['ratio_omp']:.1f}x vs sklearn_omp (goal {GOAL_OMP:.0f}x)"
            else:
                speed = ""
            gap = row["relative_objective_gap"][name]
            lines.append(f"| {s['dim']} | {s['n_latents']} | {s['k']} | {name} | {seconds:.3f} | {gap:.1e} | {speed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--penalty", type=float, default=0.1)
    parser.add_argument("--tol", type=float, default=1e-3, help="our FISTA's stopping tolerance (relative change)")
    parser.add_argument("--working-set", type=int, default=8, help="active-set solver's initial working set")
    parser.add_argument("--shapes", default="small,large", help="small = (32, 64, 4), large = (256, 1024, 16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [shape for shape, name in zip(SHAPES, ("small", "large"), strict=True) if name in args.shapes.split(",")]
    rows = [
        run_shape(m, n, k, args.signals, args.penalty, args.repeats, args.tol, args.working_set) for m, n, k in chosen
    ]
    print(table(rows))
    record = {
        "benchmark": "sparse_coding_cpu",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "threads": args.threads},
        "versions": versions(),
        "results": rows,
    }
    print(json.dumps(record))
    with open(Path(__file__).with_name("results.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
