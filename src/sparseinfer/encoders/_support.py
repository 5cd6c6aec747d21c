"""Least-squares refit of codes on their support (debiasing): removes the L1 shrinkage from the non-zero entries.

Batched: each sample's support is padded to the batch's largest support size k, the (dim, k) systems are solved
together by SVD (minimum-norm solution when the support has more atoms than dimensions, as numpy's `lstsq`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_matrix

_CHUNK_ELEMENTS = 1 << 25  # bound on batch * k * dim held at once


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
    while True:
        k = int(support.sum(1).max()) if support.numel() else 0
        if k == 0:
            return torch.zeros_like(codes), sizes
        sizes.append(k)
        refitted = _solve_padded(x, atoms, support, k)
        negative = refitted < 0
        if not nonneg or not bool((negative & support).any()):
            return refitted, sizes
        support &= ~negative


def _solve_padded(x: Tensor, atoms: Tensor, support: Tensor, k: int) -> Tensor:
    """Least squares on every row's support (at most k atoms), scattered back into (batch, n_latents)."""
    batch, dim = x.shape
    out = torch.zeros(batch, atoms.shape[0], dtype=x.dtype, device=x.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, k * dim))
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        index = torch.topk(support[rows].to(torch.int8), k, dim=1).indices  # support entries first
        valid = support[rows].gather(1, index)
        system = (atoms[index] * valid[..., None]).mT  # (chunk, dim, k); padded columns are zero
        u, s, vh = torch.linalg.svd(system, full_matrices=False)
        cutoff = s[:, :1] * (max(dim, k) * torch.finfo(x.dtype).eps)
        inv = torch.where(s > cutoff, 1.0 / s.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        proj = torch.bmm(u.mT, x[rows, :, None]).squeeze(2) * inv
        values = torch.bmm(vh.mT, proj[..., None]).squeeze(2) * valid
        out[rows].scatter_(1, index, values)
    return out
