"""Inference FLOPs of the greedy pursuits (`omp`, `matching_pursuit`), as functions of the steps actually run.

Both run every step on the whole batch (finished samples are frozen by masks, not dropped), so a count is a function
of (batch, dim, n_latents, steps). `matmul` is exactly what torch's FlopCounterMode sees: products against the
dictionary. The small per-sample systems on the support (triangular solves, NNLS) are in `elementwise` as estimates.
"""

from __future__ import annotations

from sparseinfer.flops.primitives import Flops, elementwise, matmul


def omp(batch: int, dim: int, n_latents: int, steps: int, nonneg: bool = False, nnls_solves: int = 0) -> Flops:
    """Orthogonal matching pursuit, `steps` selections; `nnls_solves` masked solves in the non-negative variant.

    Step t (support of size t before it): correlations r D^T (2 B M N), the new atom's inner products with the
    support (2 B t M), the residual x - gamma A_S (2 B (t+1) M). Summed over t < steps: 2 B M N T + 2 B M T^2.
    """
    total = Flops()
    for t in range(steps):
        total = total + matmul(batch, dim, n_latents)
        if t > 0:
            total = total + Flops(matmul=2 * batch * t * dim)
        total = total + Flops(matmul=2 * batch * (t + 1) * dim)
        # |c|, masking, argmax (3 B N); atom norm (2 B M); Cholesky row: triangular solve t^2, norm 2t;
        # the solve on the support: two triangular solves 2 (t+1)^2; residual subtraction and norm (3 B M).
        total = total + elementwise(batch * n_latents, 3) + elementwise(batch * dim, 5)
        total = total + elementwise(batch, t * t + 2 * t + 2 * (t + 1) ** 2)
    if nonneg:
        # Each masked solve on a support of at most `steps` atoms: Cholesky t^3/3 plus two triangular solves.
        t = max(steps, 1)
        total = total + elementwise(batch * nnls_solves, t**3 // 3 + 2 * t * t + 4 * t)
    return total


def batch_omp(batch: int, dim: int, n_latents: int, steps: int, work: int) -> Flops:
    """OMP from the Gram (the compiled Batch-OMP path): b = x D^T and G = D D^T once, then per step and signal
    with support size t: the pick (2 N), the Cholesky row (t^2), two triangular solves (2 t^2) and
    alpha = b - G_I gamma (2 N t). `work` is the sum of t over every signal's steps; `steps` the most steps any
    signal ran (for the O(t^2) terms, bounded by work * steps).
    """
    total = matmul(batch, dim, n_latents) + matmul(n_latents, dim, n_latents)
    return total + elementwise(work * (2 * n_latents + 3 * max(steps, 1)) + batch * steps * 2 * n_latents)


def matching_pursuit(batch: int, dim: int, n_latents: int, steps: int, warm_start: bool = False) -> Flops:
    """Matching pursuit, `steps` steps: correlations r D^T (2 B M N) then a rank-one residual update per sample.

    A warm start first forms the residual x - s0 D (2 B N M).
    """
    total = matmul(batch, n_latents, dim) + elementwise(batch * dim) if warm_start else Flops()
    per_step = matmul(batch, dim, n_latents) + elementwise(batch * n_latents, 3) + elementwise(batch * dim, 4)
    return total + per_step * steps
