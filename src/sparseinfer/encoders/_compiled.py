"""Compiled per-signal kernels (numba) of the Gram-based solvers: Batch-OMP and the LARS-Lasso homotopy.

Why: the batched torch solvers spend their time in many small ops (batched 8 x 8 Cholesky, gathers, masks) and
in full `r D^T` products, and torch's intra-op threads collapse when another process holds a core. These kernels
solve one signal at a time in compiled loops, touch only the Gram rows of the signal's own support (O(N k) per
step instead of O(N M)), grow the support's Cholesky factor by one row per step, and run blocks of signals in
parallel with dynamic scheduling, so a busy core slows only the blocks it takes. Importing this module imports
numba; the solvers import it lazily and keep their torch paths (tested equal to these kernels).

Both take the Gram G = D D^T (N, N) and the correlations b = x D^T (B, N) (`products`: large ones in blocks of
signals on a pool of single-threaded products, so a busy core does not hold up the set-up).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import torch

BLOCK = 64  # signals per scheduled block (scratch is allocated once per block)
SMALL_OP_FLOPS = 1 << 28  # below this a torch product runs on one thread (2 threads collapse on a busy machine)
# Below this a kernel runs on one thread. 2^26 kept OMP at (32, 64, 4) x 10,000 signals (~1.8e7) on one thread;
# measured on 2 threads (2026-12-03, best / median of 30 calls): 3.1 / 3.4 ms split against 5.3 / 5.9 ms on one
# thread quiet, and 3.0 / 7.4 ms against 6.8 / 10.1 ms with a second process spinning on one core.
PARALLEL_FLOPS = 1 << 20
# Below this (a batch of a few ms) a kernel runs on one thread while another process holds a core: a worker thread
# preempted while it holds a block delays the join by up to a scheduler slice. Measured at (32, 64, 4) x 10,000
# signals with a second process spinning on one core (best of 10): OMP 7.3 ms on 2 threads against 6.0 on 1, Lasso
# 16.0 against 14.2 ms; at (256, 1024, 16) (~3e9) 2 threads still won under that load (0.18 vs 0.19 s, 0.39 vs 0.48).
BUSY_PROBE_FLOPS = 1 << 27


ROWS = 512  # signals per block of b = x D^T when several threads share it


@contextlib.contextmanager
def one_thread() -> Iterator[int]:
    """torch ops inside run on the calling thread only; yields the thread count it restores on exit (what the
    kernels and `products` inside may still use on their own pools)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def products(x: torch.Tensor, atoms: torch.Tensor, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The set-up of both kernels: the Gram G = D D^T and the correlations b = x D^T.

    Small products run on one thread: measured on the project's 2-core box under load, a (10,000, 32) x (32, 64)
    product took 84 ms on 2 threads against 3 ms on 1. Large ones are split into blocks of `ROWS` signals that
    single-threaded products on a pool of torch's thread count take in turn (the Gram is one more block), so a
    thread on a busy core takes fewer blocks instead of holding up a statically split product. `threads`: the pool's
    size (default: torch's thread count).
    """
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    threads = threads or torch.get_num_threads()
    small = 2 * x.shape[0] * x.shape[1] * atoms.shape[0] < SMALL_OP_FLOPS or x.shape[0] <= ROWS
    if small or threads == 1 or _get_current_dispatch_mode() is not None:  # a FLOP counter sees this thread only
        with one_thread():
            return atoms @ atoms.T, x @ atoms.T
    from concurrent.futures import ThreadPoolExecutor

    b = x.new_empty(x.shape[0], atoms.shape[0])
    with one_thread(), ThreadPoolExecutor(threads) as pool:
        gram = pool.submit(lambda: atoms @ atoms.T)
        rows = [pool.submit(torch.mm, x[lo : lo + ROWS], atoms.T, out=b[lo : lo + ROWS])
                for lo in range(0, x.shape[0], ROWS)]  # fmt: skip
        for done in rows:
            done.result()
        return gram.result(), b


PROBE_SECONDS = 0.25  # a load probe's answer is reused this long (it costs 70-300 us; loads change over seconds)
_probe: list[Any] = [-math.inf, None]  # time of the last probe, its answer


def others_running() -> int | None:
    """Threads of other processes running or runnable (the kernel's count in /proc/loadavg less this process's
    threads in state R; Linux, None elsewhere), probed at most every `PROBE_SECONDS`."""
    now = time.monotonic()
    if now - _probe[0] >= PROBE_SECONDS:
        _probe[:] = [now, _probe_running()]
    return _probe[1]


def _probe_running() -> int | None:
    """One reading for `others_running`: one small file per thread of this process, 70-300 us in all."""
    try:
        with open("/proc/loadavg", "rb") as f:
            total = int(f.read().split()[3].split(b"/")[0])
        own = 0
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/stat", "rb") as f:
                own += f.read().rsplit(b")", 1)[1][1:2] == b"R"
    except (OSError, ValueError, IndexError):
        return None
    return max(0, total - own)


def kernel_threads(flops: int | None, threads: int | None = None) -> int:
    """Threads for one kernel call: `threads` (default torch's thread count, capped by numba's); one below
    `PARALLEL_FLOPS` of work; for work below `BUSY_PROBE_FLOPS` only as many as there are cores that no other
    process is running on."""
    threads = max(1, min(threads or torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if threads == 1 or (flops is not None and flops < PARALLEL_FLOPS):
        return 1
    if flops is not None and flops < BUSY_PROBE_FLOPS:
        busy = others_running()
        if busy is not None:
            return max(1, min(threads, len(os.sched_getaffinity(0)) - busy))
    return threads


def run_parallel(kernel: Any, *args: Any, flops: int | None = None, threads: int | None = None) -> None:
    """Call a `prange` kernel on `kernel_threads(flops, threads)` threads (`flops`: the caller's estimate of its
    work), in dynamically scheduled blocks."""
    numba.set_num_threads(kernel_threads(flops, threads))
    with numba.parallel_chunksize(1):  # one block at a time: a thread on a busy core takes fewer blocks
        kernel(*args)


@numba.njit(cache=True, inline="always")
def _pick(alpha: Any, selected: Any, nonneg: bool) -> tuple[int, float]:
    best, pick = -1.0, -1
    for a in range(alpha.shape[0]):
        if not selected[a]:
            v = alpha[a] if nonneg else abs(alpha[a])
            if v > best:
                best, pick = v, a
    return pick, best


@numba.njit(cache=True, inline="always")
def _chol_solve(chol: Any, rhs: Any, t: int, out: Any) -> None:
    """out[:t] = (L L^T)^{-1} rhs[:t] for the lower factor chol[:t, :t]."""
    for s in range(t):
        v = rhs[s]
        for q in range(s):
            v -= chol[s, q] * out[q]
        out[s] = v / chol[s, s]
    for s in range(t - 1, -1, -1):
        v = out[s]
        for q in range(s + 1, t):
            v -= chol[q, s] * out[q]
        out[s] = v / chol[s, s]


@numba.njit(cache=True, inline="always")
def _chol_append(chol: Any, cross: Any, index: Any, t: int, diag: float) -> float:
    """Row t of the Cholesky factor of G on index[:t] + [j], from cross = G's row or column j (a view) and
    diag = G[j, j]; returns the squared new diagonal (not yet stored)."""
    for s in range(t):
        v = float(cross[index[s]])
        for q in range(s):
            v -= chol[s, q] * chol[t, q]
        w = v / chol[s, s]
        chol[t, s] = w
        diag -= w * w
    return diag


def abs_mask(dtype: np.dtype) -> np.ndarray:
    """The integer mask that clears a float's sign bit, as a one-element array of the float's width.

    The bits of |v| read as an integer order like |v| (finite values), and integer max reductions vectorise where
    float ones, in numba, do not (measured: 0.088 s against 0.008 s for 160,000 maxima over 1,024 float32s).
    """
    width = np.dtype(dtype).itemsize * 8
    return np.array([(1 << (width - 1)) - 1], dtype=np.int32 if width == 32 else np.int64)


@numba.njit(cache=True, fastmath=True)
def _argmax_abs(alpha: Any, mask: Any) -> tuple[int, int]:
    """First index of the largest |alpha| and the bits of that |alpha| (0: all scores are 0).

    A vectorised integer max over the sign-cleared bits, then a search for its first place, 128 entries per pass.
    """
    bits = alpha.view(mask.dtype)
    m = mask[0]
    n = bits.shape[0]
    best = m & 0
    for a in range(n):
        v = bits[a] & m
        best = v if v > best else best
    c = 0
    while c + 128 <= n:
        hit = 0
        for a in range(c, c + 128):
            hit += (bits[a] & m) == best
        if hit:
            break
        c += 128
    for a in range(c, n):
        if (bits[a] & m) == best:
            return a, best
    return 0, best


@numba.njit(cache=True, fastmath=True)
def _orthogonal_row(gram_row: Any, basis: Any, coef: Any, t: int, alpha: Any) -> None:
    """basis[t] = (gram_row - coef[:t] basis[:t]) * coef[t], then alpha -= coef[-1] basis[t], vectorised in the
    storage dtype (coef holds the scalars in that dtype too, so nothing is promoted to float64).

    Four earlier rows per pass, so the new row is loaded and stored t / 4 times instead of t.
    """
    row = basis[t]
    inverse, z = coef[t], coef[coef.shape[0] - 1]
    n = row.shape[0]
    for a in range(n):
        row[a] = gram_row[a]
    s = 0
    while s + 4 <= t:
        b0, b1, b2, b3 = basis[s], basis[s + 1], basis[s + 2], basis[s + 3]
        c0, c1, c2, c3 = coef[s], coef[s + 1], coef[s + 2], coef[s + 3]
        for a in range(n):
            row[a] -= c0 * b0[a] + c1 * b1[a] + c2 * b2[a] + c3 * b3[a]
        s += 4
    while s < t:
        b0, c0 = basis[s], coef[s]
        for a in range(n):
            row[a] -= c0 * b0[a]
        s += 1
    for a in range(n):
        v = row[a] * inverse
        row[a] = v
        alpha[a] -= z * v


@numba.njit(parallel=True, cache=True)
def batch_omp(
    gram: Any,
    b: Any,
    x: Any,
    atoms: Any,
    k: int,
    tol: float,
    mask: Any,
    index_out: Any,
    codes_out: Any,
    steps_out: Any,
    size_out: Any,
    change_out: Any,
    residual_out: Any,
) -> None:
    """OMP per signal from the Gram (Batch-OMP, Rubinstein et al. 2008, in its orthogonalised form).

    With L the Cholesky factor of the support's Gram (float64, grown by one exact row per step) and q_s the
    orthonormal directions it defines, the scores alpha = D r obey alpha <- alpha - z_t (D q_t), where
    D q_t = (G_j - sum_s L[t, s] D q_s) / L[t, t] and z = L^{-1} b_I: one row of N per step, built from the
    signal's earlier rows (kept in scratch, storage dtype) and one Gram row, instead of all t Gram rows of the
    support. Codes come from L^T gamma = z at the end (per step only when tol > 0), written into the zeroed dense
    `codes_out` (B, N); ||x||^2 is summed here too, so the caller adds no elementwise passes over x or the codes.

    A signal stops after k atoms, when its squared residual is <= tol (tol > 0: computed explicitly from x and the
    support's atoms, O(M t), since ||x||^2 - |z|^2 cancels below the dtype's precision), when no atom has a
    nonzero score (selected atoms' scores are set to 0; `mask` is `abs_mask(b.dtype)`), or when the picked atom
    lies (numerically) in its support's span.
    """
    batch, n = b.shape
    eps = np.finfo(b.dtype).eps
    for block in numba.prange((batch + BLOCK - 1) // BLOCK):  # scratch allocated once per block of signals
        alpha = np.empty(n, dtype=b.dtype)
        basis = np.empty((k, n), dtype=b.dtype)
        coef = np.empty(k + 1, dtype=b.dtype)  # a row of L, 1 / its diagonal; the last slot: z_t
        chol = np.zeros((k, k))
        z = np.zeros(k)
        gamma = np.zeros(k)
        previous = np.zeros(k)
        for i in range(block * BLOCK, min(batch, (block + 1) * BLOCK)):
            _omp_one(gram, b, x, atoms, k, tol, mask, eps, i, alpha, basis, coef, chol, z, gamma, previous,
                     index_out, codes_out, steps_out, size_out, change_out, residual_out)  # fmt: skip


@numba.njit(cache=True)
def _back_solve(chol: Any, z: Any, t: int, out: Any) -> None:
    """out[:t] = L^{-T} z[:t] for the lower factor chol[:t, :t]."""
    for s in range(t - 1, -1, -1):
        v = z[s]
        for q in range(s + 1, t):
            v -= chol[q, s] * out[q]
        out[s] = v / chol[s, s]


@numba.njit(cache=True)
def _omp_one(gram, b, x, atoms, k, tol, mask, eps, i, alpha, basis, coef, chol, z, gamma, previous,
             index_out, codes_out, steps_out, size_out, change_out, residual_out):  # fmt: skip
    """`batch_omp` on signal i, in the given scratch arrays."""
    alpha[:] = b[i]
    index = index_out[i]
    err = 0.0
    for q in range(x.shape[1]):
        err += float(x[i, q]) ** 2
    steps, size = 0, 0
    if err > tol:
        for t in range(k):
            steps += 1
            j, best = _argmax_abs(alpha, mask)
            if best == 0:
                break
            diag = _chol_append(chol, gram[j], index, t, float(gram[j, j]))  # a row: contiguous
            if not diag > 100 * eps * gram[j, j]:
                break
            chol[t, t] = math.sqrt(diag)
            v = float(b[i, j])
            for s in range(t):
                v -= chol[t, s] * z[s]
                coef[s] = chol[t, s]
            z[t] = v / chol[t, t]
            coef[t], coef[k] = 1.0 / chol[t, t], z[t]
            index[t] = j
            size = t + 1
            _orthogonal_row(gram[j], basis, coef, t, alpha)
            for s in range(size):
                alpha[index[s]] = 0.0
            if tol > 0:
                _back_solve(chol, z, size, gamma)
                err = 0.0
                for q in range(x.shape[1]):
                    r = float(x[i, q])
                    for s in range(size):
                        r -= gamma[s] * atoms[index[s], q]
                    err += r * r
                if err <= tol:
                    break
    change = 0.0
    if size:
        _back_solve(chol, z, size, gamma)
        if steps == size:  # the last step added an atom: its relative change of the codes
            _back_solve(chol, z, size - 1, previous)
            num, den = gamma[size - 1] ** 2, 0.0
            for s in range(size):
                den += gamma[s] ** 2
                if s < size - 1:
                    num += (gamma[s] - previous[s]) ** 2
            change = math.sqrt(num) / max(math.sqrt(den), 1e-300)
    for s in range(size):
        codes_out[i, index[s]] = gamma[s]
    steps_out[i] = steps
    size_out[i] = size
    change_out[i] = change
    residual_out[i] = err


@numba.njit(cache=True)
def _refactor(chol: Any, gram: Any, index: Any, size: int) -> bool:
    """Cholesky factor of G on index[:size] from scratch (after an atom leaves); False if not positive definite."""
    for t in range(size):
        diag = _chol_append(chol, gram[:, index[t]], index, t, float(gram[index[t], index[t]]))
        if not diag > 0:
            return False
        chol[t, t] = math.sqrt(diag)
    return True


@numba.njit(parallel=True, cache=True)
def lars_lasso(
    gram: Any,
    b: Any,
    penalty: float,
    nonneg: bool,
    limit: float,
    max_steps: int,
    index_out: Any,
    value_out: Any,
    size_out: Any,
    steps_out: Any,
    work_out: Any,
    status_out: Any,
) -> None:
    """The Lasso 1/2 ||x - s D||^2 + penalty ||s||_1 per signal by the LARS homotopy (Efron et al.; Osborne's
    Lasso modification) from s = 0 at lambda = max |b| down to lambda = penalty.

    On a segment with active set A and signs theta, s_A moves along w = G_AA^{-1} theta as lambda falls; the
    segment ends where an inactive correlation reaches +-lambda (the atom enters), an active coefficient reaches
    zero (it leaves), or lambda reaches the penalty. The end point is re-solved exactly on A and verified against
    the KKT conditions (every |c_j| <= `limit`, c = b - s G); status 1 marks a signal that failed (sign
    inconsistency, a singular support, more than `max_steps` segments or more atoms than slots): the caller
    finishes those with its exact active-set solver.
    """
    batch, n = b.shape
    slots = index_out.shape[1]
    eps = np.finfo(b.dtype).eps
    for block in numba.prange((batch + BLOCK - 1) // BLOCK):  # scratch allocated once per block of signals
        c = np.empty(n)
        a = np.zeros(n)
        active = np.zeros(n, dtype=np.bool_)
        chol = np.zeros((slots, slots))
        theta = np.zeros(slots)
        beta = np.zeros(slots)
        w = np.zeros(slots)
        ratio = np.empty(n)
        for i in range(block * BLOCK, min(batch, (block + 1) * BLOCK)):
            _lars_one(
                gram,
                b,
                penalty,
                nonneg,
                limit,
                max_steps,
                eps,
                i,
                c,
                a,
                active,
                chol,
                theta,
                beta,
                w,
                ratio,
                index_out,
                value_out,
                size_out,
                steps_out,
                work_out,
                status_out,
            )


@numba.njit(cache=True, inline="always", fastmath=True)
def _direction(gram: Any, index: Any, w: Any, size: int, a: Any) -> None:
    """a = sum_s w[s] gram[index[s]] (the correlations' rate of change along the segment), four Gram rows per pass
    so that `a` is loaded and stored size / 4 times instead of size."""
    n = a.shape[0]
    for q in range(n):
        a[q] = 0.0
    s = 0
    while s + 4 <= size:
        r0, r1, r2, r3 = gram[index[s]], gram[index[s + 1]], gram[index[s + 2]], gram[index[s + 3]]
        w0, w1, w2, w3 = w[s], w[s + 1], w[s + 2], w[s + 3]
        for q in range(n):
            a[q] += w0 * r0[q] + w1 * r1[q] + w2 * r2[q] + w3 * r3[q]
        s += 4
    while s < size:
        r0, w0 = gram[index[s]], w[s]
        for q in range(n):
            a[q] += w0 * r0[q]
        s += 1


@numba.njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def _entering(a: Any, c: Any, lam: float, active: Any, dropped: int, nonneg: bool, step: float,
              ratio: Any) -> tuple[int, float]:  # fmt: skip
    """The first inactive atom (not `dropped`) whose correlation reaches +-lam along `a`, and its step; (-1, step)
    when none comes before `step`.

    Branch-free: every atom's step goes into `ratio` (inf where none; a zero denominator gives inf or nan, and
    both fail the tests), then one min pass and one search for its first place, so the loops vectorise (the
    branchy single pass took a third of the kernel at (256, 1024, 16)).
    """
    n = a.shape[0]
    inf = np.inf
    for q in range(n):
        up = 1.0 - a[q]
        d = (lam - c[q]) / up
        d = d if (up > 0) & (d > 0) else inf
        if not nonneg:
            down = 1.0 + a[q]
            e = (lam + c[q]) / down
            d = min(d, e if (down > 0) & (e > 0) else inf)
        ratio[q] = inf if active[q] else d
    if dropped >= 0:
        ratio[dropped] = inf
    best = step
    for q in range(n):
        best = min(best, ratio[q])
    if best < step:
        for q in range(n):
            if ratio[q] == best:
                return q, best
    return -1, step


@numba.njit(cache=True, error_model="numpy")
def _lars_one(gram, b, penalty, nonneg, limit, max_steps, eps, i, c, a, active, chol, theta, beta, w, ratio,
              index_out, value_out, size_out, steps_out, work_out, status_out):  # fmt: skip
    """`lars_lasso` on signal i, in the given scratch arrays."""
    n, slots = b.shape[1], index_out.shape[1]
    c[:] = b[i]
    beta[:] = 0.0
    index = index_out[i]
    size, steps, work, status = 0, 0, 0, 0
    j, lam = _pick(c, active, nonneg)
    if lam > penalty:
        index[0] = j
        theta[0] = 1.0 if nonneg or c[j] > 0 else -1.0
        chol[0, 0] = math.sqrt(gram[j, j])
        active[j] = True
        size = 1
        dropped = -1
        while True:
            steps += 1
            if steps > max_steps:
                status = 1
                break
            _chol_solve(chol, theta, size, w)
            _direction(gram, index, w, size, a)
            work += size
            step, kind, who = lam - penalty, 0, -1
            q, d = _entering(a, c, lam, active, dropped, nonneg, step, ratio)
            if q >= 0:
                step, kind, who = d, 1, q
            for s in range(size):
                if beta[s] * w[s] < 0:
                    d = -beta[s] / w[s]
                    if 0 < d < step:
                        step, kind, who = d, 2, s
            for s in range(size):
                beta[s] += step * w[s]
            for q in range(n):
                c[q] -= step * a[q]
            lam -= step
            dropped = -1
            if kind == 0:
                break
            if kind == 1:
                if size == slots:
                    status = 1
                    break
                diag = _chol_append(chol, gram[:, who], index, size, float(gram[who, who]))
                if not diag > 100 * eps * gram[who, who]:
                    status = 1
                    break
                chol[size, size] = math.sqrt(diag)
                index[size] = who
                theta[size] = 1.0 if nonneg or c[who] > 0 else -1.0
                beta[size] = 0.0
                active[who] = True
                size += 1
            else:
                dropped = index[who]
                active[dropped] = False
                for s in range(who, size - 1):
                    index[s] = index[s + 1]
                    theta[s] = theta[s + 1]
                    beta[s] = beta[s + 1]
                size -= 1
                if size == 0 or not _refactor(chol, gram, index, size):
                    status = 1
                    break
        if status == 0:  # the exact end point on A, then KKT on the whole dictionary
            rhs = np.empty(size)
            for s in range(size):
                rhs[s] = b[i, index[s]] - penalty * theta[s]
            _chol_solve(chol, rhs, size, beta)
            c[:] = b[i]
            for s in range(size):
                if beta[s] * theta[s] < 0:
                    status = 1
                row = gram[index[s]]
                bs = beta[s]
                for q in range(n):
                    c[q] -= bs * row[q]
            work += size
            for q in range(n):
                if not active[q]:
                    if (c[q] if nonneg else abs(c[q])) > limit:
                        status = 1
    for s in range(size):
        value_out[i, s] = beta[s]
    for s in range(size):
        active[index[s]] = False
    size_out[i] = size
    steps_out[i] = steps
    work_out[i] = work
    status_out[i] = status
