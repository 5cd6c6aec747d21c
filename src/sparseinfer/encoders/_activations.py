"""Pieces shared by the amortised encoders: the shape check and the TopK, BatchTopK and JumpReLU activations.

JumpReLU follows Rajamanoharan et al. (2024): the threshold gets a straight-through "pseudo-derivative" through a
rectangle kernel of width `bandwidth` around it, because the true derivative of a step is zero almost everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sparseinfer.codes import Codes, SparseCodes, topk_codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.errors import SparseInferError


def check_dictionary(name: str, dim: int, n_latents: int, dictionary: Dictionary) -> None:
    """Require the encoder's (dim, n_latents) to match the dictionary's."""
    if (dictionary.dim, dictionary.n_latents) != (dim, n_latents):
        raise SparseInferError(
            f"encoder {name!r} was built for dim={dim}, n_latents={n_latents} but the dictionary has "
            f"dim={dictionary.dim}, n_latents={dictionary.n_latents}"
        )


def topk_relu(pre: Tensor, k: int, sparse: bool) -> Codes:
    """Keep the k largest pre-activations of each row, then ReLU them (SAELens / sparsify TopK)."""
    top = topk_codes(pre, k)
    codes = SparseCodes(torch.relu(top.values), top.indices, top.n_latents)
    return codes if sparse else codes.to_dense()


def to_sparse(codes: Tensor) -> SparseCodes:
    """Dense non-negative codes as (values, indices) with k = the most non-zeros in any row (zero-padded)."""
    k = max(int((codes != 0).sum(1).max()), 1) if codes.shape[0] else 1
    return topk_codes(codes, k)


def batch_topk(pre: Tensor, k_total: int) -> Tensor:
    """Keep the `k_total` largest ReLU'd activations over the whole batch (BatchTopK), dense (batch, n_latents)."""
    act = torch.relu(pre).flatten()
    values, indices = torch.topk(act, k_total, sorted=False)
    return torch.zeros_like(act).scatter(0, indices, values).view_as(pre)


def _rectangle(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """K((pre - threshold) / bandwidth) / bandwidth with K the unit rectangle on (-1/2, 1/2)."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class JumpReLUFunction(torch.autograd.Function):
    """pre * H(pre - threshold); d/dpre = H(pre - threshold), d/dthreshold = -threshold * K(.)/bandwidth."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold).to(pre.dtype)
        grad_threshold = (-threshold * _rectangle(pre, threshold, ctx.bandwidth) * grad).sum(0)
        return grad_pre, grad_threshold, None


class StepFunction(torch.autograd.Function):
    """H(pre - threshold) (the L0 count); d/dthreshold = -K(.)/bandwidth, no gradient to the pre-activations."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        return None, (-_rectangle(pre, threshold, ctx.bandwidth) * grad).sum(0), None
