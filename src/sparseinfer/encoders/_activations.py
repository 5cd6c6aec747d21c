"""Pieces shared by the amortised encoders: the shape check and the TopK, BatchTopK and JumpReLU activations.

`topk_linear` fuses the TopK encoder's linear map with its selection so that the backward pass touches only the k
kept entries per row (O(B k D) instead of two dense O(B N D) products); the plain path is `topk_codes(linear(x))`.

JumpReLU follows Rajamanoharan et al. (2024): the threshold gets a straight-through "pseudo-derivative" through a
rectangle kernel of width `bandwidth` around it, because the true derivative of a step is zero almost everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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


GRAD_CHUNK_ELEMENTS = 1 << 23  # bound on the (rows, k, dim) outer-product block built per chunk in the backward


class TopKLinearFunction(torch.autograd.Function):
    """(values, indices) = topk(x W^T + b, k) per row, with a sparse backward.

    Only the k selected pre-activations of a row receive gradient, so dL/dx = sum_j g_j W[i_j] (an embedding bag),
    dL/dW[i] = sum over (row, j) with i_j = i of g_j x_row (index_add over row chunks), dL/db[i] = sum of those g_j.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
        values, indices = torch.topk(F.linear(x, weight, bias), k, dim=1)
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(x, weight, indices)
        ctx.has_bias = bias is not None
        return values, indices

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad: Tensor, _: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight, indices = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = F.embedding_bag(indices, weight, per_sample_weights=grad.to(weight.dtype), mode="sum").to(x.dtype)
        if need_w:
            grad_w = torch.zeros_like(weight)
            rows = max(1, GRAD_CHUNK_ELEMENTS // (indices.shape[1] * x.shape[1]))
            for start in range(0, x.shape[0], rows):
                g, xs = grad[start : start + rows], x[start : start + rows]
                outer = (g.to(weight.dtype)[:, :, None] * xs.to(weight.dtype)[:, None, :]).flatten(0, 1)
                grad_w.index_add_(0, indices[start : start + rows].flatten(), outer)
        if need_b and ctx.has_bias:
            grad_b = weight.new_zeros(weight.shape[0]).index_add_(0, indices.flatten(), grad.flatten().to(weight.dtype))
        return grad_x, grad_w, grad_b, None


def topk_linear(x: Tensor, weight: Tensor, bias: Tensor | None, k: int, sparse: bool) -> Codes:
    """`topk_relu(F.linear(x, weight, bias), k, sparse)` with the sparse backward of `TopKLinearFunction`."""
    values, indices = TopKLinearFunction.apply(x, weight, bias, k)
    codes = SparseCodes(torch.relu(values), indices, weight.shape[0])
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
