"""`omp`: batched orthogonal matching pursuit (optionally non-negative), all samples solved together.

Each step picks, per sample, the atom most correlated with the residual (largest |c|, or largest positive c when
`nonneg`), then refits the coefficients on the support by least squares (non-negative least squares when `nonneg`).
The support's Gram is kept as a batched Cholesky factor grown by one row per step, as scikit-learn's
`orthogonal_mp` does per sample, so no Python loop runs over samples. Finished samples are frozen by masks (a
dummy slot with coefficient 0), so every step costs the same and FLOPs depend only on the number of steps.

A warm start (`init` codes, used by `ito`) first adds each sample's nonzero init atoms, largest first (at most k),
then continues greedily.

On CPU (signed codes, no warm start, a Gram of at most `GRAM_ENTRIES` entries) the same algorithm runs as
Batch-OMP (Rubinstein et al. 2008) in a compiled per-signal kernel (`_compiled.batch_omp`): after b = x D^T and
G = D D^T, step t costs O(N t) on the Gram rows of the support instead of a full (batch, M) x (M, N) product, and
blocks of signals run in parallel. The batched torch path below is kept (other devices, `nonneg`, warm starts)
and tested equal to the kernel.

Differences from scikit-learn, by design: a sample whose squared norm is already <= `tol` selects nothing (sklearn
takes one atom first), and already-selected atoms are excluded from the choice (sklearn stops if it would pick one).
"""

from __future__ import annotations

import importlib.util

import torch
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor

from sparseinfer.encoders.base import Diagnostics, EncoderConfig, IterativeEncoder, configure, register
from sparseinfer.flops import pursuit
from sparseinfer.validation import check_k, check_positive

GRAM_ENTRIES = 1 << 24  # the compiled path holds D D^T: up to this many entries
COMPILED = importlib.util.find_spec("numba") is not None  # use the compiled kernel where it applies


def compiled_applies(x: Tensor, atoms: Tensor) -> bool:
    """Whether the compiled kernels can take this call: numba present, CPU, float32/float64, one dtype."""
    return COMPILED and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and atoms.dtype == x.dtype


@register
class OMPEncoder(IterativeEncoder):
    """Select up to `k` atoms per sample; stop a sample early once its squared residual norm is <= `tol`."""

    name = "omp"
    summary = "orthogonal matching pursuit (greedy, least-squares refit on the support; optional non-negative)"

    class Config(EncoderConfig):
        k: StrictInt = Field(3, description="atoms selected per sample (at most)")
        tol: float = Field(0.0, description="stop a sample once its squared residual norm is <= tol")
        nonneg: StrictBool = Field(False, description="non-negative codes (NNLS refits)")

    def __init__(self, k: int = 3, tol: float = 0.0, nonneg: bool = False) -> None:
        c = configure(OMPEncoder, locals())
        super().__init__()
        check_k(c.k, c.k, "k")  # a positive integer; the bound k <= n_latents is checked against the dictionary
        check_positive(c.tol, "tol", allow_zero=True)
        self.k = c.k
        self.tol = c.tol
        self.nonneg = c.nonneg
        self._nnls_solves = 0
        self._compiled_work: int | None = None  # sum over signals of their support sizes per step (compiled path)
        self.config = c

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        n_latents = atoms.shape[0]
        check_k(self.k, n_latents, "k")
        self._compiled_work = None
        if init is None and not self.nonneg and n_latents**2 <= GRAM_ENTRIES and compiled_applies(x, atoms):
            return self._solve_compiled(x, atoms)
        return self._solve_batched(x, atoms, init)

    def _solve_compiled(self, x: Tensor, atoms: Tensor) -> Tensor:
        """Batch-OMP in the compiled kernel: the same selections and refits as `_solve_batched`."""
        from sparseinfer.encoders import _compiled

        batch, n_latents, k = x.shape[0], atoms.shape[0], self.k
        with _compiled.one_thread() as threads:  # torch's own ops here: on 2 threads they wait on a busy core
            gram, b = _compiled.products(x, atoms, threads)
            codes = x.new_zeros(batch, n_latents)
            index = torch.zeros(batch, k, dtype=torch.long)
            steps = torch.zeros(batch, dtype=torch.long)
            sizes = torch.zeros(batch, dtype=torch.long)
            change = torch.zeros(batch, dtype=torch.float64)
            residual = torch.zeros(batch, dtype=torch.float64)
            inputs = [t.contiguous().numpy() for t in (gram, b, x, atoms)]
            outputs = [t.numpy() for t in (index, codes, steps, sizes, change, residual)]
            mask = _compiled.abs_mask(inputs[1].dtype)
            work = batch * n_latents * k * (k + 3)  # per signal and step t: the new row (2 N t), the update, the pick
            _compiled.run_parallel(
                _compiled.batch_omp, *inputs, k, float(self.tol), mask, *outputs, flops=work, threads=threads
            )
            last = int(steps.max()) if batch else 0
            worst = float(change[steps == last].max()) if batch and last else 0.0
            left = int((residual > self.tol).sum()) if self.tol > 0 else 0
            self._compiled_work = int((sizes * (sizes + 1) // 2).sum())
        self.diagnostics = Diagnostics(
            iterations=last, converged=left == 0, max_change=worst, n_unconverged=left, tested=self.tol > 0
        )
        return codes

    def _solve_batched(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        """All samples as one tensor program, one selection per step (any device, `nonneg`, warm starts)."""
        n_latents = atoms.shape[0]
        batch, k = x.shape[0], self.k
        eps = torch.finfo(x.dtype).eps
        norms2 = (atoms * atoms).sum(1)

        chol = x.new_zeros(batch, k, k)  # lower Cholesky factor of the support's Gram
        gram = x.new_zeros(batch, k, k) if self.nonneg else None  # the Gram itself, for NNLS
        support_atoms = x.new_zeros(batch, k, x.shape[1])
        rhs = x.new_zeros(batch, k)  # inner products of x with the support atoms
        indices = torch.zeros(batch, k, dtype=torch.long, device=x.device)
        gamma = x.new_zeros(batch, 0)
        selected = torch.zeros(batch, n_latents, dtype=torch.bool, device=x.device)
        residual = x
        active = (x * x).sum(1) > self.tol
        forced_order, n_forced = self._forced(init, k)
        self._nnls_solves = 0
        change = 0.0
        steps = 0
        corr0 = x.new_zeros(0)
        for t in range(k):
            if not bool(active.any()):
                break
            steps += 1
            corr = residual @ atoms.T
            if t == 0:
                corr0 = corr
            score = corr if self.nonneg else corr.abs()
            score = score.masked_fill(selected, -torch.inf)
            best, pick = score.max(1)
            if forced_order is not None:
                forced = n_forced > t
                pick = torch.where(forced, forced_order[:, t], pick)
                best = torch.where(forced, torch.ones_like(best), best)
            ok = active & (best > 0)
            new_atom = atoms.index_select(0, pick)
            if t > 0:
                cross = torch.bmm(support_atoms[:, :t], new_atom[:, :, None])  # (batch, t, 1)
                row = torch.linalg.solve_triangular(chol[:, :t, :t], cross, upper=False).squeeze(2)
            else:
                cross = x.new_zeros(batch, 0, 1)
                row = x.new_zeros(batch, 0)
            atom_norm2 = norms2.index_select(0, pick)
            diag = atom_norm2 - (row * row).sum(1)
            ok = ok & (diag > 100 * eps * atom_norm2)  # the new atom is (numerically) in the support's span
            active = ok
            keep = ok[:, None]
            chol[:, t, :t] = torch.where(keep, row, 0.0)
            chol[:, t, t] = torch.where(ok, diag.clamp_min(eps).sqrt(), 1.0)
            support_atoms[:, t] = torch.where(keep, new_atom, 0.0)
            rhs[:, t] = torch.where(ok, corr0.gather(1, pick[:, None]).squeeze(1), 0.0)
            indices[:, t] = pick
            selected.scatter_(1, pick[:, None], selected.gather(1, pick[:, None]) | ok[:, None])
            if gram is not None:
                gram[:, t, :t] = torch.where(keep, cross[:, :, 0], 0.0)
                gram[:, :t, t] = gram[:, t, :t]
                gram[:, t, t] = torch.where(ok, atom_norm2, 1.0)
            previous = torch.cat([gamma, gamma.new_zeros(batch, 1)], 1)
            if gram is None:
                gamma = torch.cholesky_solve(rhs[:, : t + 1, None], chol[:, : t + 1, : t + 1]).squeeze(2)
            else:
                gamma = self._nnls(gram[:, : t + 1, : t + 1], rhs[:, : t + 1], previous, eps)
            residual = x - torch.bmm(gamma[:, None, :], support_atoms[:, : t + 1]).squeeze(1)
            delta = (gamma - previous).norm(dim=1) / gamma.norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
            change = float(delta.max())
            active = active & ((residual * residual).sum(1) > self.tol)

        codes = x.new_zeros(batch, n_latents)
        if steps:
            codes.scatter_add_(1, indices[:, :steps], gamma)
        left = int(((residual * residual).sum(1) > self.tol).sum()) if self.tol > 0 else 0
        self.diagnostics = Diagnostics(
            iterations=steps, converged=left == 0, max_change=change, n_unconverged=left, tested=self.tol > 0
        )
        return codes

    def _forced(self, init: Tensor | None, k: int) -> tuple[Tensor | None, Tensor]:
        """Warm start: each sample's init atoms, largest first, and how many of them (at most k) to take."""
        if init is None:
            return None, torch.zeros(0)
        magnitude = init.clamp_min(0) if self.nonneg else init.abs()
        order = magnitude.argsort(dim=1, descending=True)[:, :k]
        return order, (magnitude > 0).sum(1).clamp_max(k)

    def _nnls(self, gram: Tensor, rhs: Tensor, start: Tensor, eps: float) -> Tensor:
        """Batched Lawson-Hanson: min 1/2 s'Gs - b's subject to s >= 0, warm-started from a feasible `start`."""
        size = gram.shape[1]
        s = start.clone()
        passive = s > 0
        grad_tol = 10 * eps * size * rhs.abs().amax(1, keepdim=True).clamp_min(1.0)
        for _ in range(3 * size + 3):
            w = rhs - (gram * s[:, None, :]).sum(2)
            candidates = ~passive & (w > grad_tol)
            todo = candidates.any(1)
            if not bool(todo.any()):
                break
            enter = w.masked_fill(~candidates, -torch.inf).argmax(1)
            passive[todo, enter[todo]] = True
            working = todo
            for _ in range(size + 1):
                z = self._masked_solve(gram, rhs, passive)
                bad = passive & (z <= 0) & working[:, None]
                infeasible = bad.any(1)
                s = torch.where((working & ~infeasible)[:, None], z, s)
                working = infeasible
                if not bool(working.any()):
                    break
                ratio = torch.where(bad, s / (s - z), torch.inf).amin(1, keepdim=True)
                s = torch.where(working[:, None], s + ratio * (z - s), s)
                passive = passive & ~(working[:, None] & (s <= eps * s.abs().amax(1, keepdim=True)))
                s = torch.where(passive, s, 0.0)
        return s.clamp_min(0.0)

    def _masked_solve(self, gram: Tensor, rhs: Tensor, passive: Tensor) -> Tensor:
        """Unconstrained least squares on each sample's passive set; zero outside it."""
        self._nnls_solves += 1
        both = passive[:, :, None] & passive[:, None, :]
        eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device).expand_as(gram)
        system = torch.where(both, gram, eye * (~passive)[:, :, None])
        return torch.linalg.solve(system, torch.where(passive, rhs, 0.0))

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        steps = self.iterations_run()
        steps = self.k if steps is None else steps
        if self._compiled_work is not None:
            return pursuit.batch_omp(batch, dim, n_latents, steps, self._compiled_work).total
        return pursuit.omp(batch, dim, n_latents, steps, self.nonneg, self._nnls_solves).total
