"""The debiasing refit (least squares on each code's support) at the language-model study's shape: the library's
refit (`encoders._support`: Cholesky on the normal equations when the support is smaller than dim) against a plain
batched SVD least squares (the refit before this change, kept here as the reference).

    python benchmarks/bench_refit.py --solver library      # or --solver svd
Time the two with any whole-process timer, A B A B; each run prints the seconds of the solve, and with `--check`
the largest difference between the two solvers' codes (the other solver then runs too, after the timed part).
"""

from __future__ import annotations

import argparse
import time

import torch

from sparseinfer.encoders._support import refit_on_support


def svd_refit(x: torch.Tensor, atoms: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares on each row's support by one batched SVD (padded to the largest support)."""
    support = codes != 0
    k = int(support.sum(1).max())
    index = torch.topk(support.to(torch.int8), k, dim=1).indices
    valid = support.gather(1, index)
    system = (atoms[index] * valid[..., None]).mT
    u, s, vh = torch.linalg.svd(system, full_matrices=False)
    inv = torch.where(s > s[:, :1] * max(system.shape[1:]) * torch.finfo(x.dtype).eps, 1.0 / s, 0.0)
    values = (vh.mT @ ((u.mT @ x[..., None]).squeeze(2) * inv)[..., None]).squeeze(2) * valid
    return torch.zeros_like(codes).scatter_(1, index, values)


def problem(batch: int, dim: int, n_latents: int, k: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Unit atoms, K-sparse supports, signals with noise (float32, as in the study)."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_latents, dim, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(batch, n_latents)
    codes.scatter_(1, torch.rand(batch, n_latents, generator=gen).topk(k, dim=1).indices, 1.0)
    x = codes @ atoms + 0.1 * torch.randn(batch, dim, generator=gen)
    return x, atoms, codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", choices=("library", "svd"), default="library")
    parser.add_argument("--shape", default="2560,576,2304,64", help="batch,dim,n_latents,k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="also run the other solver and compare the codes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, atoms, codes = problem(*map(int, args.shape.split(",")))
    solve = refit_on_support if args.solver == "library" else svd_refit
    start = time.perf_counter()
    out = solve(x, atoms, codes)
    seconds = time.perf_counter() - start
    print(f"{args.solver}: {seconds:.3f} s")
    if args.check:
        other = svd_refit(x, atoms, codes) if args.solver == "library" else refit_on_support(x, atoms, codes)
        print(f"max |difference| to the other solver: {float((out - other).abs().max()):.2e}")


if __name__ == "__main__":
    main()
