"""Sparse coding on CPU: our exact Lasso and OMP against SPAMS (the reference) and scikit-learn's `sparse_encode`.

    python benchmarks/bench_sparse_coding.py --signals 10000 --threads 1,2 --conditions quiet,loaded --repeats 3

Problems: unit-norm random dictionaries (N atoms of dimension M), signals = K-sparse codes (|s| in [0.5, 1.5],
random signs) times D plus 0.01 noise. Every Lasso solves per sample 1/2 ||x - s D||^2 + penalty ||s||_1 (SPAMS'
`lasso` mode 2 with lambda1 = penalty; sklearn's `alpha` in `sparse_encode`). Ours and SPAMS compute in float32,
sklearn in float64; objectives are always evaluated in float64. Accuracy: the summed Lasso objective relative to
the best one any method reached; a method counts only if that gap is <= 1e-4 (checked, printed). OMP at the same K:
the squared residual relative to sklearn's OMP (ours selects as sklearn does; SPAMS' `omp` selects by the
order-recursive rule, the atom whose addition leaves the smallest residual, so its supports and residual differ
where the two rules disagree: measured on 72 of 10,000 signals at (32, 64, 4), 5% lower total residual, and on
none at (256, 1024, 16)). Every timed call is checked to return some nonzero code. Methods: `ours_lasso` (the
`lasso` encoder: the compiled LARS homotopy, verified by KKT), `ours_fista` (the `fista` encoder at its defaults,
optional: `--fista`), `ours_omp`, `spams_lasso` / `spams_omp` (SPAMS on the same thread count),
`sklearn_lasso_cd` / `sklearn_omp` (n_jobs=1).

Timings: for each shape, condition and repeat, every (threads, method) pair runs once in turn, interleaved, and the
minimum per pair is kept, so each ratio (SPAMS seconds / ours) comes from one run on one machine state; each call
waits `PAUSE` first, so that it is not timed beside the previous method's still-spinning OpenMP workers. The
`loaded` condition starts a second process that spins on one core for the duration of its timings (a busy
laptop). Appends one JSON line to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
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
from sparseinfer.encoders.lasso import LassoEncoder
from sparseinfer.encoders.omp import OMPEncoder

SHAPES = {"small": (32, 64, 4), "large": (256, 1024, 16)}
ACCURACY = 1e-4
PAUSE = 0.05  # seconds between timed calls, so that no method is timed beside another one's spinning threads


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


def as_codes(out: object) -> torch.Tensor:
    """Codes (n, N) in float64 from a tensor, a numpy array or SPAMS' sparse (N, n) matrix."""
    if hasattr(out, "toarray"):
        return torch.from_numpy(np.asarray(out.toarray()).T.copy()).double()  # type: ignore[attr-defined]
    return torch.as_tensor(out).double()


def check_nonzero(method: str, out: object) -> None:
    """Stop on a call that returned no nonzero code at all (a failed call would be timed as a fast one)."""
    count = out.nnz if hasattr(out, "nnz") else int(np.count_nonzero(np.asarray(out)))  # type: ignore[attr-defined]
    if count == 0:
        raise SystemExit(f"{method} returned all-zero codes; its timing would be meaningless")


def lasso_total(x: torch.Tensor, atoms: torch.Tensor, codes: torch.Tensor, penalty: float) -> float:
    return float(lasso_objective(x, atoms, codes, penalty).sum())


def residual_total(x: torch.Tensor, atoms: torch.Tensor, codes: torch.Tensor) -> float:
    return float((x - codes @ atoms).pow(2).sum())


class Busy:
    """A second process spinning on one core while the `loaded` timings run."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Busy:
        if self.active:
            self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def methods_for(
    x: torch.Tensor, atoms: torch.Tensor, k: int, penalty: float, threads: int, fista: bool, with_sklearn: bool
) -> dict[str, Callable[[], object]]:
    import spams

    x32, atoms32 = x.float(), atoms.float()
    xs, ds = np.asfortranarray(x32.numpy().T), np.asfortranarray(atoms32.numpy().T)
    xn, dn = x.numpy(), atoms.numpy()
    lasso, omp = LassoEncoder(penalty=penalty), OMPEncoder(k=k)
    methods: dict[str, Callable[[], object]] = {
        "ours_lasso": lambda: lasso.solve(x32, atoms32, None),
        "spams_lasso": lambda: spams.lasso(xs, D=ds, lambda1=penalty, mode=2, numThreads=threads),
        "ours_omp": lambda: omp.solve(x32, atoms32, None),
        # eps=0.0 given explicitly: without it SPAMS 2.6.14's float32 omp returned all-zero codes in some processes
        "spams_omp": lambda: spams.omp(xs, ds, L=k, eps=0.0, numThreads=threads),
    }
    if fista:
        encoder = FISTAEncoder(penalty=penalty, max_iter=20_000)
        methods["ours_fista"] = lambda: encoder.solve(x32, atoms32, None)
    if with_sklearn and threads == 1:  # sklearn runs single-threaded (n_jobs=1): timed once per repeat
        methods["sklearn_lasso_cd"] = lambda: sparse_encode(xn, dn, algorithm="lasso_cd", alpha=penalty, n_jobs=1)
        methods["sklearn_omp"] = lambda: sparse_encode(xn, dn, algorithm="omp", n_nonzero_coefs=k, n_jobs=1)
    return methods


def run_shape(
    name: str, n: int, penalty: float, repeats: int, threads: list[int], conditions: list[str], fista: bool, sk: bool
) -> dict:
    dim, n_latents, k = SHAPES[name]
    x, atoms = problem(dim, n_latents, k, n)
    per_threads = {t: methods_for(x, atoms, k, penalty, t, fista, sk) for t in threads}
    seconds: dict[str, dict[str, float]] = {}
    outputs: dict[str, object] = {}
    for condition in conditions:
        with Busy(condition == "loaded"):
            for _ in range(repeats):
                for t in threads:
                    torch.set_num_threads(t)
                    for method, fn in per_threads[t].items():
                        time.sleep(PAUSE)  # the previous method's OpenMP workers spin a while after their last call
                        start = time.perf_counter()
                        outputs[method] = fn()
                        elapsed = time.perf_counter() - start
                        check_nonzero(method, outputs[method])
                        times = seconds.setdefault(condition, {})
                        times[f"{t}/{method}"] = min(times.get(f"{t}/{method}", float("inf")), elapsed)
    codes = {m: as_codes(out) for m, out in outputs.items()}
    lasso = {m: lasso_total(x, atoms, c, penalty) for m, c in codes.items() if "omp" not in m}
    best = min(lasso.values())
    gaps = {m: (v - best) / best for m, v in lasso.items()}
    resid = {m: residual_total(x, atoms, c) for m, c in codes.items() if "omp" in m}
    base = resid.get("sklearn_omp", resid["spams_omp"])
    gaps.update({m: (v - base) / base for m, v in resid.items()})
    ratios = {
        condition: {
            f"{t}/{task}": times[f"{t}/spams_{task}"] / times[f"{t}/ours_{task}"]
            for t in threads
            for task in ("lasso", "omp")
        }
        for condition, times in seconds.items()
    }
    return {
        "shape": {"dim": dim, "n_latents": n_latents, "k": k, "signals": n, "penalty": penalty},
        "seconds": seconds,
        "ratio_spams_over_ours": ratios,
        "relative_objective_gap": gaps,
        "accurate": {m: abs(g) <= ACCURACY for m, g in gaps.items()},
    }


def versions() -> dict[str, str]:
    """Versions of what the timings depend on."""
    from importlib.metadata import version

    return {
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "spams-bin": version("spams-bin"),
        "numba": version("numba"),
        "python": platform.python_version(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| M | N | K | condition | threads | task | ours (s) | SPAMS (s) | SPAMS / ours | sklearn (s) "
        "| gap ours | gap SPAMS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s, gaps = row["shape"], row["relative_objective_gap"]
        for condition, times in row["seconds"].items():
            for key in sorted({k.split("/")[0] for k in times}, key=int):
                for task, sk in (("lasso", "sklearn_lasso_cd"), ("omp", "sklearn_omp")):
                    ours, spams = times[f"{key}/ours_{task}"], times[f"{key}/spams_{task}"]
                    skl = times.get(f"1/{sk}")
                    lines.append(
                        f"| {s['dim']} | {s['n_latents']} | {s['k']} | {condition} | {key} | {task} | {ours:.3f} | "
                        f"{spams:.3f} | {spams / ours:.2f}x | {'' if skl is None else f'{skl:.3f}'} | "
                        f"{gaps[f'ours_{task}']:.1e} | {gaps[f'spams_{task}']:.1e} |"
                    )
                if f"{key}/ours_fista" in times:
                    lines.append(
                        f"| {s['dim']} | {s['n_latents']} | {s['k']} | {condition} | {key} | fista (defaults) | "
                        f"{times[f'{key}/ours_fista']:.3f} | | | | {gaps['ours_fista']:.1e} | |"
                    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--signals", type=int, default=10_000)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, interleaved")
    parser.add_argument("--conditions", default="quiet,loaded", help="quiet, loaded (a second process on one core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--penalty", type=float, default=0.1)
    parser.add_argument("--shapes", default="small,large", help="small = (32, 64, 4), large = (256, 1024, 16)")
    parser.add_argument("--fista", action="store_true", help="also time the fista encoder at its defaults")
    parser.add_argument("--no-sklearn", action="store_true", help="leave out scikit-learn (slow on the large shape)")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    conditions = args.conditions.split(",")
    rows = [
        run_shape(name, args.signals, args.penalty, args.repeats, threads, conditions, args.fista, not args.no_sklearn)
        for name in args.shapes.split(",")
    ]
    print(table(rows))
    record = {
        "benchmark": "sparse_coding_cpu_spams",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()},
        "load_average": os.getloadavg(),
        "versions": versions(),
        "results": rows,
    }
    print(json.dumps(record))
    with open(Path(__file__).with_name("results.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
