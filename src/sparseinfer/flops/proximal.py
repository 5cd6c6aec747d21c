"""Inference FLOPs of the proximal-gradient encoders (ista, fista, lca) and of the least-squares refit on a support.

Every iteration applies one least-squares gradient step s -> s + step (b - s G), with b = x D^T and G = D D^T, in
one of two forms: the Gram form multiplies by the (N, N) matrix I - step G; the factored form multiplies by D and
then by D^T, which is cheaper when N > 2M (`gram_is_cheaper`). `matmul` equals what FlopCounterMode counts;
`elementwise` counts thresholds, momentum and tolerance checks, and estimates the eigen/singular value
decompositions (which the counter ignores) by their leading term.
"""

from __future__ import annotations

from collections.abc import Sequence

from sparseinfer.flops.primitives import Flops, elementwise, matmul


def gram_is_cheaper(dim: int, n_latents: int) -> bool:
    """Whether one (N, N) product per iteration costs no more than two (N, M) products: N <= 2M."""
    return n_latents <= 2 * dim


def eigvalsh(size: int) -> Flops:
    """Eigenvalues of a symmetric (size, size) matrix: Householder tridiagonalisation, about 4/3 size^3."""
    return elementwise(4 * size**3 // 3)


def svd(rows: int, cols: int) -> Flops:
    """Thin SVD of a (rows, cols) matrix with U and V: about 4 m n^2 + 8 n^3 for m >= n (Golub & Van Loan)."""
    m, n = max(rows, cols), min(rows, cols)
    return elementwise(4 * m * n * n + 8 * n**3)


def setup(batch: int, dim: int, n_latents: int, lipschitz: bool) -> Flops:
    """Once per call: b = x D^T scaled by the step, the iteration matrix, and (optionally) L = ||D||_2^2."""
    flops = matmul(batch, dim, n_latents) + elementwise(batch * n_latents)
    if gram_is_cheaper(dim, n_latents):
        flops += matmul(n_latents, dim, n_latents) + elementwise(n_latents * n_latents, 2)
    else:
        flops += elementwise(n_latents * dim)
    if lipschitz:
        if n_latents <= dim:
            flops += eigvalsh(n_latents)
        else:
            flops += matmul(dim, n_latents, dim) + eigvalsh(dim)
    return flops


def gradient_step(batch: int, dim: int, n_latents: int) -> Flops:
    """One s + step (b - s G) on a (batch, N) tensor."""
    if gram_is_cheaper(dim, n_latents):
        return matmul(batch, n_latents, n_latents) + elementwise(batch * n_latents)
    return matmul(batch, n_latents, dim) + matmul(batch, dim, n_latents) + elementwise(batch * n_latents, 2)


def threshold(batch: int, n_latents: int) -> Flops:
    """Soft or one-sided threshold: a clamp and a subtraction per entry."""
    return elementwise(batch * n_latents, 2)


def tolerance_checks(batch: int, dim: int, n_latents: int, iterations: int, check_every: int) -> Flops:
    """ceil(iterations / check_every) relative duality gaps: r = x - s D and r D^T (two products), the primal and
    dual values and the scaling (element-wise passes over (batch, N) and (batch, M)). check_every 0: no checks."""
    checks = -(-iterations // check_every) if check_every else 0
    per_check = matmul(batch, n_latents, dim) + matmul(batch, dim, n_latents)
    return (per_check + elementwise(4 * batch * n_latents + 8 * batch * dim + 8 * batch)) * checks


def _proximal_loop(
    batch: int, dim: int, n_latents: int, iterations: int, lipschitz: bool, check_every: int, extra: Flops
) -> Flops:
    """Set-up, then per iteration a gradient step, a threshold and `extra` per-iteration work, plus the checks."""
    per_iter = gradient_step(batch, dim, n_latents) + threshold(batch, n_latents) + extra
    return (
        setup(batch, dim, n_latents, lipschitz)
        + per_iter * iterations
        + tolerance_checks(batch, dim, n_latents, iterations, check_every)
    )


def ista(batch: int, dim: int, n_latents: int, iterations: int, lipschitz: bool = True, check_every: int = 10) -> Flops:
    """ISTA: s <- T(s + step (b - s G))."""
    return _proximal_loop(batch, dim, n_latents, iterations, lipschitz, check_every, Flops())


def fista(
    batch: int,
    dim: int,
    n_latents: int,
    iterations: int,
    lipschitz: bool = True,
    check_every: int = 10,
    restart: bool = True,
) -> Flops:
    """FISTA: ISTA's step at an extrapolated point y = s + beta (s - s_prev); restart adds a per-sample test."""
    momentum = elementwise(batch * n_latents, 3)
    if restart:
        momentum += elementwise(batch * n_latents, 3) + elementwise(batch, 8)
    return _proximal_loop(batch, dim, n_latents, iterations, lipschitz, check_every, momentum)


def lca(
    batch: int,
    dim: int,
    n_latents: int,
    iterations: int,
    lipschitz: bool = True,
    check_every: int = 10,
    warm_start: bool = False,
) -> Flops:
    """LCA (Euler steps): u <- a + eta (b - a G) + (1 - eta)(u - a), a = T(u); a warm start sets u from the codes."""
    dynamics = elementwise(batch * n_latents, 3)
    flops = _proximal_loop(batch, dim, n_latents, iterations, lipschitz, check_every, dynamics)
    return flops + elementwise(batch * n_latents, 3) if warm_start else flops


REFIT_GRAM_LIMIT = 1 << 26  # entries of D D^T (256 MB in float32) up to which the refit gathers from it


def refit_uses_gram(n_latents: int) -> bool:
    """Whether the support refit gathers its systems from the dictionary's Gram matrix D D^T (`encoders._support`)."""
    return n_latents * n_latents <= REFIT_GRAM_LIMIT


def refit(batch: int, dim: int, support_sizes: Sequence[int], n_latents: int) -> Flops:
    """Least squares on each sample's support, padded to `k` atoms, once per round (k per round given): the normal
    equations by Cholesky with one refinement step when k <= dim (their matrices gathered from D D^T and x D^T, both
    computed once, when `refit_uses_gram`; else formed from the atoms), else an SVD (`encoders._support`)."""
    flops = Flops()
    by_gram = refit_uses_gram(n_latents) and any(k <= dim for k in support_sizes)
    if by_gram:
        flops += matmul(n_latents, dim, n_latents) + matmul(batch, dim, n_latents)
    for k in support_sizes:
        if k <= dim:
            formed = Flops() if by_gram else (matmul(k, dim, k) + matmul(k, dim, 1)) * batch
            flops += formed + matmul(k, k, 1) * batch + cholesky(batch, k) + elementwise(batch * k, 4 * k + 4)
            continue
        rank = min(dim, k)
        flops += svd(dim, k) * batch + matmul(rank, dim, 1) * batch + matmul(k, rank, 1) * batch
        flops += elementwise(batch * rank, 2)
    return flops


Rounds = Sequence[tuple[int, int]]  # (rows, padded working-set size) of each batched operation


def cholesky(rows: int, size: int) -> Flops:
    """Cholesky factor and two triangular solves of `rows` (size, size) systems (the counter ignores both)."""
    return elementwise(rows * (size**3 // 3 + 2 * size * size))


def active_set(
    batch: int,
    dim: int,
    n_latents: int,
    full_gram: bool,
    solves: Rounds,
    window_checks: Rounds,
    kkt_checks: Rounds,
    gram_blocks: Rounds = (),
    null_steps: Rounds = (),
    path_segments: int = 0,
    path_work: int = 0,
) -> Flops:
    """The exact active-set Lasso (`fista` with `active_set=True`), from the rows and sizes of what it ran.

    Set-up: b = x D^T, the screen, and D D^T when W's Gram blocks are gathered from it. Per solve: a masked Cholesky
    on (rows, P, P) and the ratio test. Per check inside W: c_W = b_W - z G_WW. Per full KKT check: r = x - z D_W
    and c = r D^T with its violator scan (with the full Gram: c = b - z G_W). Without the full Gram, each new W's
    block is D_W D_W^T. The compiled homotopy (counted element-wise: it runs outside torch): per unit of
    `path_work` (one active atom in one segment) a Gram-row update of the correlations' direction (2 N) and the
    O(|A|) triangular solves; per segment the correlation update and the entry scan (8 N).
    """
    flops = matmul(batch, dim, n_latents) + elementwise(batch * n_latents, 2)
    if full_gram:
        flops += matmul(n_latents, dim, n_latents)
    for rows, size in solves:
        flops += cholesky(rows, size) + elementwise(rows * size, 16)
    for rows, size in window_checks:
        flops += Flops(matmul=2 * rows * size * size) + elementwise(rows * size, 4)
    for rows, size in kkt_checks:
        if full_gram:  # c = b - z G_W, an embedding bag over the Gram's rows (element-wise for the counter)
            flops += elementwise(2 * rows * size * n_latents + 5 * rows * n_latents)
        else:  # c = r D^T; r = x - z D_W is an embedding bag
            flops += matmul(rows, dim, n_latents)
            flops += elementwise(2 * rows * size * dim + rows * dim + 4 * rows * n_latents)
    for rows, size in gram_blocks:
        flops += Flops(matmul=2 * rows * size * size * dim)
    for rows, size in null_steps:
        flops += cholesky(rows, size) + Flops(matmul=2 * rows * size * size) + elementwise(rows * size, 8)
    if path_segments:
        flops += elementwise(path_work * (2 * n_latents + 2 * dim) + path_segments * 8 * n_latents)
    return flops
