"""Least-squares refit of codes on their support (debiasing): removes the L1 shrinkage from the non-zero entries.

Batched: each sample's support is padded to the batch's largest support size k and the systems are solved together.
With k <= dim (the usual case: sparse codes) by Cholesky on the (k, k) normal equations, whose matrices and right-
hand sides are gathered from the dictionary's Gram matrix D D^T and from x D^T (each computed once per call, when D
D^T has at most `flops.proximal.REFIT_GRAM_LIMIT` entries; else formed per row from the support's atoms), then one
step of iterative refinement with the same factor; a support whose Gram matrix is not numerically positive definite
(dependent atoms) gets a tiny ridge instead. With k > dim by SVD, the minimum-norm solution, as numpy's `lstsq`.
The SVD path was 145 of 176 s of one evaluation row of the language-model study (2,304 atoms of dim 576, supports
of about 64, 2,560 signals).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseinfer.errors import SparseInferError
from sparseinfer.flops.proximal import refit_uses_gram
from sparseinfer.validation import check_matrix

_CHUNK_ELEMENTS = 1 << 25  # bound on batch * k * dim (or batch * k * k) held at once


def refit_on_support(x: Tensor, atoms: Tensor, codes: Tensor, nonneg: bool = False) -> Tensor:
    """Codes minimising ||x - s D||^2 over s with the support of `codes` (`nonneg`: also s >= 0).

    `x` (batch, dim) centred signals, `atoms` (n_latents, dim) rows, `codes` (batch, n_latents) dense.
    The non-negative variant drops the support entries whose least-squares value is negative and refits,
    until none is (an active-set heuristic: exact least squares on the final support, every entry >= 0).
    """
    return refit_with_sizes(x, atoms, codes, nonneg)[0]


def refit_with_sizes(x: Tensor, atoms: Tensor, codes: Tensor, nonneg: bool = False) -> tuple[Tensor, list[int]]:
    """`refit_on_support` that also returns the padded support size of each round (for FLOP accounting)."""
    check_matrix(atoms, "dictionary atoms")
    check_matrix(x, "signals x", cols=atoms.shape[1])
    check_matrix(codes, "codes", cols=atoms.shape[0])
    if codes.shape[0] != x.shape[0]:
        raise SparseInferError(f"codes have {codes.shape[0]} rows but x has {x.shape[0]}")
    support = codes != 0
    sizes: list[int] = []
    gram = _Gram(x, atoms) if refit_uses_gram(atoms.shape[0]) else None
    while True:
        k = int(support.sum(1).max()) if support.numel() else 0
        if k == 0:
            return torch.zeros_like(codes), sizes
        sizes.append(k)
        refitted = _solve_padded(x, atoms, support, k, gram)
        negative = refitted < 0
        if not nonneg or not bool((negative & support).any()):
            return refitted, sizes
        support &= ~negative


class _Gram:
    """D D^T and x D^T, computed on first use (only the Cholesky path needs them)."""

    def __init__(self, x: Tensor, atoms: Tensor) -> None:
        self.x, self.atoms = x, atoms
        self._gram: Tensor | None = None

    def systems(self, rows: slice, index: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """The Gram matrices (chunk, k, k) and right-hand sides (chunk, k) of these rows' padded supports."""
        if self._gram is None:
            self._gram, self._corr = self.atoms @ self.atoms.T, self.x @ self.atoms.T
        mask = valid[:, :, None] & valid[:, None, :]
        gram = self._gram[index[:, :, None], index[:, None, :]] * mask
        return gram, self._corr[rows].gather(1, index) * valid


def _solve_padded(x: Tensor, atoms: Tensor, support: Tensor, k: int, gram: _Gram | None = None) -> Tensor:
    """Least squares on every row's support (at most k atoms), scattered back into (batch, n_latents)."""
    batch, dim = x.shape
    out = torch.zeros(batch, atoms.shape[0], dtype=x.dtype, device=x.device)
    by_gram = gram is not None and k <= dim
    chunk = max(1, _CHUNK_ELEMENTS // max(1, k * (k if by_gram else dim)))
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        index = torch.topk(support[rows].to(torch.int8), k, dim=1).indices  # support entries first
        valid = support[rows].gather(1, index)
        if by_gram:
            assert gram is not None
            out[rows].scatter_(1, index, _normal_equations(*gram.systems(rows, index, valid), valid))
            continue
        system = (atoms[index] * valid[..., None]).mT  # (chunk, dim, k); padded columns are zero
        if k <= dim:
            grams, rhs = torch.bmm(system.mT, system), torch.bmm(system.mT, x[rows, :, None]).squeeze(2)
            out[rows].scatter_(1, index, _normal_equations(grams, rhs, valid))
            continue
        u, s, vh = torch.linalg.svd(system, full_matrices=False)
        cutoff = s[:, :1] * (max(dim, k) * torch.finfo(x.dtype).eps)
        inv = torch.where(s > cutoff, 1.0 / s.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        proj = torch.bmm(u.mT, x[rows, :, None]).squeeze(2) * inv
        values = torch.bmm(vh.mT, proj[..., None]).squeeze(2) * valid
        out[rows].scatter_(1, index, values)
    return out


def _normal_equations(gram: Tensor, rhs: Tensor, valid: Tensor) -> Tensor:
    """Solutions of `gram @ c = rhs` per row (padded entries: 0) by Cholesky, then one refinement step with the same
    factor (removes most of the triangular solves' rounding)."""
    gram = gram.clone()
    gram.diagonal(dim1=1, dim2=2).add_(~valid)  # padded atoms: a 1 on the diagonal, zero right-hand side
    factor, info = torch.linalg.cholesky_ex(gram)
    failed = info != 0
    if bool(failed.any()):  # dependent atoms on the support: a ridge relative to the Gram's scale
        scale = gram[failed].diagonal(dim1=1, dim2=2).mean(1) * (64 * torch.finfo(gram.dtype).eps) ** 0.5
        ridged = gram[failed] + torch.diag_embed(scale[:, None].expand(-1, gram.shape[1]))
        factor[failed] = torch.linalg.cholesky_ex(ridged)[0]
    rhs = rhs[:, :, None]
    values = torch.cholesky_solve(rhs, factor)
    values += torch.cholesky_solve(rhs - torch.bmm(gram, values), factor)
    return values.squeeze(2) * valid
