"""Inference FLOPs of amortised encoders (one linear map + nonlinearity, or an MLP)."""

from __future__ import annotations

from sparseinfer.flops.primitives import Flops, elementwise, linear_forward


def relu(batch: int, dim: int, n_latents: int, bias: bool) -> Flops:
    """Linear map (+ bias) then ReLU."""
    return linear_forward(batch, dim, n_latents, bias) + elementwise(batch * n_latents)
