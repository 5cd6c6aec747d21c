"""Exact batched Lasso by an active-set method on per-sample working sets (the `fista` encoder's `active_set` mode).

Minimises per sample 1/2 ||x - s D||^2 + penalty ||s||_1 (optionally s >= 0) to its KKT conditions, touching the
full dictionary only to screen and to verify:

1. b = x D^T once; each sample's working set W is its `size` atoms with the largest |b| (padded, shape (B, P)).
2. Inside W, a sign-constrained active-set method (feature-sign search, Lee et al. 2007; Lawson-Hanson for the
   signs): with active set A and signs theta, solve G_AA z = b_A - penalty theta_A by a batched Cholesky on padded
   (B, P, P) systems; step towards it only as far as the first coordinate whose sign would flip, and drop that
   coordinate. Each step lowers the objective (it is a quadratic on the current orthant), so no cycling.
3. At a stationary point, add every atom of W with |b - z G|_j > penalty (the violators); coordinates added
   together that come out with the wrong sign are dropped and retried, keeping the worst violator, which always
   enters with its sign (a positive Schur complement).
4. When W holds no violator, check KKT on the FULL dictionary, c = (x - z D_W) D^T; violators outside W replace
   W's inactive slots (W doubles when some row has no free slot). A sample is done when no atom violates.

Rows are solved together as one tensor program; finished rows are removed, so later rounds cost only what is left.
The FLOPs of every product are recorded in a `Trace` (row counts and sizes) for `flops.proximal.active_set`.

On CPU without a warm start, when the full Gram fits, the LARS-Lasso homotopy runs first in a compiled per-signal
kernel (`_compiled.lars_lasso`: rank-one Cholesky growth, O(N |A|) per segment, blocks of signals in parallel);
its end points are re-solved on their support and verified by KKT there, and the few signals it cannot finish
(a singular support, a sign inconsistency, too many segments) go through the batched method above.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional as F

from sparseinfer.encoders.base import Diagnostics

COMPILED = importlib.util.find_spec("numba") is not None  # use the compiled homotopy where it applies


@dataclass
class Trace:
    """What one call did, for FLOP accounting: rows and padded sizes of each batched operation."""

    batch: int = 0
    full_gram: bool = False
    solves: list[tuple[int, int]] = field(default_factory=list)  # (rows, P) Cholesky solves
    window_checks: list[tuple[int, int]] = field(default_factory=list)  # (rows, P) c_W = b_W - z G_WW
    kkt_checks: list[tuple[int, int]] = field(default_factory=list)  # (rows, P) r = x - z D_W, c = r D^T
    gram_blocks: list[tuple[int, int]] = field(default_factory=list)  # (rows, P) G_WW by a product (no full Gram)
    null_steps: list[tuple[int, int]] = field(default_factory=list)  # (rows, P) null directions (|A| > dim)
    path_segments: int = 0  # compiled homotopy: segments over all signals
    path_work: int = 0  # compiled homotopy: sum of |A| over all segments (each an O(N |A|) update)


class _State:
    """Per-row working-set state of the rows still being solved (all tensors share the leading row axis)."""

    def __init__(self, rows: Tensor, index: Tensor, valid: Tensor) -> None:
        self.rows = rows  # (R,) original row numbers
        self.index = index  # (R, P) atoms of W
        self.valid = valid  # (R, P) slot holds an atom of W (False: padding)
        shape = index.shape
        dtype_device = {"device": index.device}
        self.active = torch.zeros(shape, dtype=torch.bool, **dtype_device)
        self.new = torch.zeros(shape, dtype=torch.bool, **dtype_device)  # added since the last stationary point
        self.top = torch.zeros(shape[0], dtype=torch.long, **dtype_device)  # worst violator among `new`
        self.z: Tensor
        self.sign: Tensor
        self.gram: Tensor  # (R, P, P) G_WW
        self.b: Tensor  # (R, P) b_W

    _FIELDS = ("rows", "index", "valid", "active", "new", "top", "z", "sign", "gram", "b")

    def keep(self, mask: Tensor) -> None:
        """Drop the rows where `mask` is False."""
        where = mask.nonzero().squeeze(1)
        for name in self._FIELDS:
            setattr(self, name, getattr(self, name).index_select(0, where))

    def grow(self, size: int) -> None:
        """Pad W to `size` slots (new slots are invalid and inactive; their Gram block is the identity)."""
        extra = size - self.index.shape[1]
        for name in ("index", "valid", "active", "new", "z", "sign", "b"):
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, t.new_zeros(t.shape[0], extra)], 1))
        r, p = self.gram.shape[:2]
        gram = self.gram.new_zeros(r, size, size)
        gram[:, :p, :p] = self.gram
        self.gram = gram


class ActiveSetLasso:
    """Exact Lasso per row of `x` against `atoms` (rows); see the module docstring for the method."""

    GRAM_ENTRIES = 1 << 24  # precompute D D^T (and gather W's blocks from it) up to this many entries
    solve_segments: int | None = None  # the compiled homotopy's segment limit per signal (None: 8 min(M, N) + 16)

    def __init__(self, penalty: float, nonneg: bool, size: int, rtol: float, max_rounds: int) -> None:
        self.penalty = penalty
        self.nonneg = nonneg
        self.size = size
        self.rtol = rtol
        self.max_rounds = max_rounds
        self.trace = Trace()

    def _score(self, c: Tensor) -> Tensor:
        return c if self.nonneg else c.abs()

    def _sign(self, c: Tensor) -> Tensor:
        return torch.ones_like(c) if self.nonneg else torch.sign(c)

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> tuple[Tensor, Diagnostics]:
        """Codes (batch, n_latents) at the Lasso optimum (KKT within `rtol`), and the convergence summary."""
        batch, n_latents = x.shape[0], atoms.shape[0]
        trace = self.trace = Trace(batch=batch)
        if batch == 0:
            return x.new_zeros(batch, n_latents), Diagnostics(iterations=0, converged=True, max_change=0.0, measure="")
        limit = self.penalty * (1.0 + max(self.rtol, 64 * torch.finfo(x.dtype).eps))
        trace.full_gram = n_latents * n_latents <= self.GRAM_ENTRIES
        if trace.full_gram and init is None and _compiled_applies(x, atoms):
            return self._solve_compiled(x, atoms, limit)
        b = x @ atoms.T
        full_gram = atoms @ atoms.T if trace.full_gram else None
        return self._solve_batched(x, atoms, b, full_gram, limit, init, x.new_zeros(batch, n_latents))

    def _solve_compiled(self, x: Tensor, atoms: Tensor, limit: float) -> tuple[Tensor, Diagnostics]:
        """The compiled homotopy on every row; rows it could not finish are solved by the batched method."""
        from sparseinfer.encoders import _compiled

        batch, slots = x.shape[0], min(x.shape[1], atoms.shape[0])
        with _compiled.one_thread() as threads:  # torch's own ops here: on 2 threads they wait on a busy core
            full_gram, b = _compiled.products(x, atoms, threads)
            out = x.new_zeros(batch, atoms.shape[0])
            index = torch.zeros(batch, slots, dtype=torch.long)
            value = x.new_zeros(batch, slots)
            sizes, segments, work = (torch.zeros(batch, dtype=torch.long) for _ in range(3))
            status = torch.zeros(batch, dtype=torch.int8)
            max_segments = self.solve_segments if self.solve_segments is not None else 8 * slots + 16
            _compiled.run_parallel(
                _compiled.lars_lasso,
                full_gram.contiguous().numpy(),
                b.contiguous().numpy(),
                self.penalty,
                self.nonneg,
                limit,
                max_segments,
                *(t.numpy() for t in (index, value, sizes, segments, work, status)),
                flops=batch * atoms.shape[0] * slots,  # a path's rough cost: slots segments of an N-wide pass
                threads=threads,
            )
            self.trace.path_segments, self.trace.path_work = int(segments.sum()), int(work.sum())
            failed = status != 0
            out.scatter_add_(1, index, torch.where(failed[:, None], 0.0, value))
            iterations = int(segments.max())
            any_failed = bool(failed.any())
        if not any_failed:
            return out, Diagnostics(iterations=iterations, converged=True, max_change=0.0, measure="")
        rows = failed.nonzero().squeeze(1)
        rest, diagnostics = self._solve_batched(
            x[rows], atoms, b[rows], full_gram, limit, None, out.new_zeros(rows.numel(), atoms.shape[0])
        )
        out[rows] = rest
        diagnostics.iterations = max(iterations, diagnostics.iterations)
        return out, diagnostics

    def _solve_batched(
        self,
        x: Tensor,
        atoms: Tensor,
        b: Tensor,
        full_gram: Tensor | None,
        limit: float,
        init: Tensor | None,
        out: Tensor,
    ) -> tuple[Tensor, Diagnostics]:
        """The batched active-set method of the module docstring, on every row of `x` (its `b` rows given)."""
        batch, n_latents = x.shape[0], atoms.shape[0]
        size = min(self.size, n_latents)
        screen = self._score(b)
        if init is not None:  # a warm start's support enters W first
            screen = torch.where(init != 0, torch.inf, screen)
        index = screen.topk(size, dim=1).indices
        state = _State(torch.arange(batch, device=x.device), index, torch.ones_like(index, dtype=torch.bool))
        state.z = x.new_zeros(batch, size)
        state.sign = x.new_zeros(batch, size)
        state.b = b.gather(1, index)
        state.gram = self._gram_block(atoms, full_gram, index)
        stationary = torch.ones(batch, dtype=torch.bool, device=x.device)
        if init is not None:  # ... and is the first active set, with its signs
            start = init.gather(1, index)
            start = start > 0 if self.nonneg else start != 0
            state.active, state.new = start, start.clone()
            state.sign = torch.where(start, self._sign(init.gather(1, index)), 0.0)
            state.top = init.gather(1, index).abs().argmax(1)
            stationary = ~start.any(1)
        rounds = 0
        while True:
            done = self._check(state, stationary, x, atoms, b, full_gram, limit)
            if bool(done.any()):
                finished = done.nonzero().squeeze(1)
                out.index_put_(
                    (state.rows[finished, None].expand(-1, state.index.shape[1]), state.index[finished]),
                    state.z[finished],
                    accumulate=True,
                )
                state.keep(~done)
            if state.rows.numel() == 0 or rounds >= self.max_rounds:
                break
            rounds += 1
            stationary = self._step(state)
        left = int(state.rows.numel())
        if left:  # out of rounds: return the current (feasible, not yet optimal) iterate
            out.index_put_(
                (state.rows[:, None].expand(-1, state.index.shape[1]), state.index), state.z, accumulate=True
            )
        return out, Diagnostics(iterations=rounds, converged=left == 0, max_change=0.0, n_unconverged=left, measure="")

    def _gram_block(self, atoms: Tensor, full_gram: Tensor | None, index: Tensor) -> Tensor:
        """G_WW per row, gathered from the full Gram or computed from the gathered atoms."""
        if full_gram is not None:
            return full_gram.view(-1).take(index[:, :, None] * full_gram.shape[1] + index[:, None, :])
        self.trace.gram_blocks.append((index.shape[0], index.shape[1]))
        block = atoms[index]
        return torch.bmm(block, block.mT)

    def _step(self, s: _State) -> Tensor:
        """One active-set step on every row: solve on A, then retry, step to a sign flip, or land; True = landed."""
        self.trace.solves.append(tuple(s.index.shape))  # type: ignore[arg-type]
        target, failed = _masked_solve(s.gram, s.b - self.penalty * s.sign, s.active)
        direction = target - s.z
        reach = torch.ones_like(s.z[:, 0])
        single = failed & (s.new.sum(1) == 1)
        if bool(single.any()):  # one atom too many for the dimension: slide along the null direction instead
            rows = single.nonzero().squeeze(1)
            direction[rows], reach[rows] = self._null_direction(s, rows)
        failed &= ~single
        bad_new = s.active & s.new & (s.sign * direction <= 0) & ~single[:, None]
        retry = bad_new.any(1) | failed
        # retry: drop the wrong-signed new coordinates (all but the worst violator if it is wrong too); z stays
        top_hot = torch.zeros_like(s.new).scatter_(1, s.top[:, None], True)
        top_bad = bad_new.gather(1, s.top[:, None]).squeeze(1) | failed
        lost = self._not_violating(s, top_bad)
        keep_new = torch.where(top_bad[:, None], top_hot, s.new & ~bad_new) & s.active & ~lost[:, None]
        s.active &= ~(retry[:, None] & s.new & ~keep_new)
        # move along the direction up to the first sign flip of an old coordinate (or `reach`)
        crossing = s.active & ~s.new & (s.sign * direction < 0) & ~retry[:, None]
        ratio = torch.where(crossing, -s.z / torch.where(crossing, direction, -1.0), torch.inf)
        t = torch.minimum(ratio.min(1).values, reach)
        t = torch.where(retry | ~torch.isfinite(t), 0.0, t)
        hit = crossing & (ratio <= t[:, None])
        s.z = torch.where(s.active & ~hit, s.z + t[:, None] * direction, 0.0)
        s.active &= ~hit
        move = ~retry
        s.new = torch.where(move[:, None], False, keep_new)
        return (move & ~hit.any(1) & ~single) | lost

    def _not_violating(self, s: _State, top_bad: Tensor) -> Tensor:
        """Rows whose wrong-signed `top` is no KKT violator at z, so it cannot enter alone (only a warm start's
        guessed support, whose top is its largest code, not a violator): they drop all new coordinates and go back
        to their stationary point, where `_check` adds violators. Without this, such a row retries forever."""
        lost = torch.zeros_like(top_bad)
        rows = top_bad.nonzero().squeeze(1)
        if rows.numel() == 0:
            return lost
        top = s.top[rows, None]
        column = s.gram[rows].gather(2, top[:, :, None].expand(-1, s.gram.shape[1], 1)).squeeze(2)
        c = s.b[rows].gather(1, top).squeeze(1) - (s.z[rows] * column).sum(1)
        lost[rows] = ~(self._score(c) > self.penalty)
        return lost

    def _null_direction(self, s: _State, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Descent direction keeping the old stationarity when the one new atom lies in the old atoms' span.

        v_new = sign, v_old = -G_oo^{-1} G_o,new sign: the objective falls linearly along v (v G v = 0), so the
        ratio test always stops it at a sign flip; `reach` bounds the step by the curvature if v G v > 0.
        """
        self.trace.null_steps.append((int(rows.numel()), s.index.shape[1]))
        gram, top = s.gram[rows], s.top[rows]
        old = s.active[rows] & ~s.new[rows]
        column = gram.gather(2, top[:, None, None].expand(-1, gram.shape[1], 1)).squeeze(2)
        solution, _ = _masked_solve(gram, column, old)
        sign = s.sign[rows].gather(1, top[:, None])
        v = (-solution).scatter(1, top[:, None], 1.0) * sign
        curvature = torch.bmm(v[:, None, :], gram).squeeze(1).mul(v).sum(1)
        c = s.b[rows].gather(1, top[:, None]).squeeze(1) - (s.z[rows] * column).sum(1)
        gain = self._score(c) - self.penalty
        reach = torch.where(curvature > 0, gain / curvature.clamp_min(torch.finfo(v.dtype).tiny), torch.inf)
        return v, reach

    def _check(
        self,
        s: _State,
        stationary: Tensor,
        x: Tensor,
        atoms: Tensor,
        b: Tensor,
        full_gram: Tensor | None,
        limit: float,
    ) -> Tensor:
        """At stationary rows add violators, from W first, then from the full dictionary; True = row optimal."""
        done = torch.zeros_like(stationary)
        rows = stationary.nonzero().squeeze(1)
        if rows.numel() == 0:
            return done
        p = s.index.shape[1]
        self.trace.window_checks.append((int(rows.numel()), p))
        z = s.z[rows]
        c = s.b[rows] - torch.bmm(z[:, None, :], s.gram[rows]).squeeze(1)
        score = torch.where(s.valid[rows] & ~s.active[rows], self._score(c), -torch.inf)
        viol = score > limit
        has = viol.any(1)
        if bool(has.any()):
            r = rows[has]
            v = viol[has]
            s.active[r] |= v
            s.sign[r] = torch.where(v, self._sign(c[has]), s.sign[r])
            s.new[r] = v
            s.top[r] = score[has].argmax(1)
        rows = rows[~has]  # W-optimal: verify on the full dictionary
        if rows.numel() == 0:
            return done
        self.trace.kkt_checks.append((int(rows.numel()), p))
        if full_gram is not None:  # c = b - z G_W: rows x P x N multiply-adds instead of rows x dim x N
            c = b[s.rows[rows]] - F.embedding_bag(s.index[rows], full_gram, per_sample_weights=s.z[rows], mode="sum")
        else:  # c = (x - z D_W) D^T, the residual as an embedding bag (no (rows, P, dim) gather of atoms)
            residual = x[s.rows[rows]] - F.embedding_bag(s.index[rows], atoms, per_sample_weights=s.z[rows], mode="sum")
            c = residual @ atoms.T
        in_w = torch.zeros(c.shape, dtype=torch.int32, device=c.device)
        in_w.scatter_add_(1, s.index[rows], s.valid[rows].to(torch.int32))
        score = torch.where(in_w > 0, -torch.inf, self._score(c))
        viol = score > limit
        n_viol = viol.sum(1)
        done[rows[n_viol == 0]] = True
        need = n_viol > 0
        if not bool(need.any()):
            return done
        rows, score, c, n_viol = rows[need], score[need], c[need], n_viol[need]
        n_active = s.active[rows].sum(1)
        if bool((n_active == p).any()) and p < atoms.shape[0]:  # a row with no free slot left
            s.grow(min(2 * p, atoms.shape[0]))
            p = s.index.shape[1]
        n_free = p - n_active
        count = torch.minimum(n_viol, n_free)
        width = int(count.max())
        cand_score, cand = score.topk(width, dim=1)
        free = torch.argsort(s.active[rows].to(torch.int8), dim=1, stable=True)[:, :width]  # inactive slots first
        put = torch.arange(width, device=c.device)[None, :] < count[:, None]
        grid = rows[:, None].expand(-1, width)
        s.index[grid, free] = torch.where(put, cand, s.index[grid, free])
        s.valid[grid, free] |= put
        s.active[grid, free] |= put
        s.sign[grid, free] = torch.where(put, self._sign(c.gather(1, cand)), s.sign[grid, free])
        s.new[rows] = False
        s.new[grid, free] = put
        s.top[rows] = free[:, 0]
        s.b[rows] = _pick(b, s.rows[rows], s.index[rows])
        s.gram[rows] = self._gram_block(atoms, full_gram, s.index[rows])
        del cand_score
        return done


def _masked_solve(gram: Tensor, rhs: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
    """Solve G_AA z_A = rhs_A per row on padded (R, P, P) systems (inactive slots: identity rows, z = 0).

    Returns the solution and a per-row flag for a singular active Gram (those rows' solutions are zeros).
    """
    mask = active.to(gram.dtype)
    system = gram * (mask[:, :, None] * mask[:, None, :])
    system.diagonal(dim1=1, dim2=2).add_(1.0 - mask)
    factor, info = torch.linalg.cholesky_ex(system)
    failed = info != 0
    solution = torch.cholesky_solve((rhs * mask)[:, :, None], factor).squeeze(2) * mask
    if bool(failed.any()):
        solution = torch.where(failed[:, None], 0.0, solution)
    return solution, failed


def _pick(matrix: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """matrix[rows[i], columns[i, j]] as one flat `take` (no copy of whole rows)."""
    return matrix.view(-1).take(rows[:, None] * matrix.shape[1] + columns)


def _compiled_applies(x: Tensor, atoms: Tensor) -> bool:
    """Whether the compiled homotopy can take this call: numba present, CPU, float32/float64, one dtype."""
    return COMPILED and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and atoms.dtype == x.dtype
