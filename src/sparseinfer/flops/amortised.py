"""FLOPs of amortised encoders: a stack of linear layers (ReLU between them) and an output activation.

Inference counts one forward. Training counts forward + backward through the encoder's parameters for one step:
the codes' gradient arrives from the loss; the signals need no gradient, unless `input_grad` (the encoder's input
depends on a learned dictionary bias it subtracts), which adds the first layer's input gradient.
The `matmul` parts equal `FlopCounterMode`; `elementwise` is our tally of the arithmetic it ignores
(one op per element for bias adds, ReLUs, masks, comparisons; a selection costs one comparison per candidate).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from sparseinfer.flops.primitives import Flops, elementwise, linear_backward, linear_forward

# An output activation's cost as (forward, backward) for one batch.
Activation = tuple[Flops, Flops]


def _layers(dim: int, hidden: Sequence[int], n_latents: int) -> list[tuple[int, int]]:
    widths = [dim, *hidden, n_latents]
    return list(pairwise(widths))


def _forward(batch: int, layers: list[tuple[int, int]], bias: bool) -> Flops:
    """Linear layers with a ReLU after every hidden layer (not after the last)."""
    flops = Flops()
    for i, (d_in, d_out) in enumerate(layers):
        flops += linear_forward(batch, d_in, d_out, bias)
        if i < len(layers) - 1:
            flops += elementwise(batch * d_out)
    return flops


def _backward(batch: int, layers: list[tuple[int, int]], bias: bool, input_grad: bool) -> Flops:
    """Weight (and bias) gradients of every layer, input gradients of all but the first; hidden ReLU masks."""
    flops = Flops()
    for i, (d_in, d_out) in enumerate(layers):
        flops += linear_backward(batch, d_in, d_out, bias, input_grad=input_grad or i > 0)
        if i < len(layers) - 1:
            flops += elementwise(batch * d_out)
    return flops


def relu_activation(batch: int, n_latents: int) -> Activation:
    """ReLU forward, and its mask on the gradient."""
    return elementwise(batch * n_latents), elementwise(batch * n_latents)


def topk_activation(batch: int, n_latents: int, k: int) -> Activation:
    """Select k of n_latents per row, ReLU the kept values; backward masks the k kept gradients."""
    return elementwise(batch * n_latents + batch * k), elementwise(batch * k)


def batch_topk_activation(batch: int, n_latents: int, k: int, batch_mode: bool) -> Activation:
    """Training mode: ReLU, select k*batch of batch*n_latents, track the threshold (min of the kept + average).

    Eval mode: compare with the threshold and mask (2 per element). Backward: ReLU mask on the kept gradients.
    """
    if batch_mode:
        forward = elementwise(2 * batch * n_latents + batch * k + 3)
    else:
        forward = elementwise(2 * batch * n_latents)
    return forward, elementwise(batch * n_latents)


def jumprelu_activation(batch: int, n_latents: int) -> Activation:
    """Forward: exp of the log-threshold, compare, mask. Backward: mask the gradient (1); threshold's
    pseudo-derivative: subtract, abs, compare, scale, multiply, sum over the batch (6); exp's chain rule."""
    return (
        elementwise(2 * batch * n_latents + n_latents),
        elementwise(7 * batch * n_latents + 2 * n_latents),
    )


def l0_penalty(batch: int, n_latents: int) -> Flops:
    """JumpReLU's L0 surrogate, forward (compare, mean, scale) and backward (kernel window and sum, as above)."""
    return elementwise(7 * batch * n_latents + n_latents + 1)


def inference(batch: int, dim: int, hidden: Sequence[int], n_latents: int, bias: bool, act: Activation) -> Flops:
    """One forward of a linear stack with output activation `act`."""
    return _forward(batch, _layers(dim, hidden, n_latents), bias) + act[0]


def training(
    batch: int,
    dim: int,
    hidden: Sequence[int],
    n_latents: int,
    bias: bool,
    act: Activation,
    input_grad: bool = False,
) -> Flops:
    """Forward + backward of a linear stack with output activation `act` (one training step of the encoder)."""
    layers = _layers(dim, hidden, n_latents)
    return _forward(batch, layers, bias) + act[0] + act[1] + _backward(batch, layers, bias, input_grad)


def relu(batch: int, dim: int, n_latents: int, bias: bool, sparse: bool = False) -> Flops:
    """Linear map (+ bias) then ReLU; `sparse` output adds a selection pass over the codes."""
    extra = elementwise(batch * n_latents) if sparse else Flops()
    return inference(batch, dim, (), n_latents, bias, relu_activation(batch, n_latents)) + extra


def relu_training(
    batch: int, dim: int, n_latents: int, bias: bool, input_grad: bool = False, sparse: bool = False
) -> Flops:
    """One training step of the ReLU SAE encoder; `sparse` output adds a selection pass over the codes."""
    extra = elementwise(batch * n_latents) if sparse else Flops()
    return training(batch, dim, (), n_latents, bias, relu_activation(batch, n_latents), input_grad) + extra


def topk(batch: int, dim: int, n_latents: int, k: int, bias: bool) -> Flops:
    """Linear map (+ bias) then TopK."""
    return inference(batch, dim, (), n_latents, bias, topk_activation(batch, n_latents, k))


def topk_training(batch: int, dim: int, n_latents: int, k: int, bias: bool, input_grad: bool = False) -> Flops:
    """One training step of the TopK SAE encoder."""
    return training(batch, dim, (), n_latents, bias, topk_activation(batch, n_latents, k), input_grad)


def topk_training_fused(batch: int, dim: int, n_latents: int, k: int, bias: bool, input_grad: bool = False) -> Flops:
    """One training step of the TopK encoder with the sparse backward (`topk_linear`): the dense forward, then per
    kept entry the ReLU mask, its weight-row gradient (multiply-add over dim), the bias gradient and, with
    `input_grad`, x's gradient (an embedding bag): no matrix product in the backward."""
    backward = elementwise(batch * k + 2 * batch * k * dim + (batch * k if bias else 0))
    return topk(batch, dim, n_latents, k, bias) + backward + elementwise(2 * batch * k * dim * input_grad)


def batch_topk(batch: int, dim: int, n_latents: int, k: int, bias: bool, batch_mode: bool) -> Flops:
    """Linear map (+ bias) then BatchTopK (training mode) or the tracked threshold (eval mode)."""
    return inference(batch, dim, (), n_latents, bias, batch_topk_activation(batch, n_latents, k, batch_mode))


def batch_topk_training(batch: int, dim: int, n_latents: int, k: int, bias: bool, input_grad: bool = False) -> Flops:
    """One training step of the BatchTopK SAE encoder (always in batch mode)."""
    act = batch_topk_activation(batch, n_latents, k, batch_mode=True)
    return training(batch, dim, (), n_latents, bias, act, input_grad)


def jumprelu(batch: int, dim: int, n_latents: int, bias: bool) -> Flops:
    """Linear map (+ bias) then JumpReLU."""
    return inference(batch, dim, (), n_latents, bias, jumprelu_activation(batch, n_latents))


def jumprelu_training(batch: int, dim: int, n_latents: int, bias: bool, input_grad: bool = False) -> Flops:
    """One training step of the JumpReLU encoder, including its L0 penalty (which replaces the L1 term)."""
    act = jumprelu_activation(batch, n_latents)
    return training(batch, dim, (), n_latents, bias, act, input_grad) + l0_penalty(batch, n_latents)


def mlp_activation(batch: int, n_latents: int, activation: str, k: int | None) -> Activation:
    """The MLP's output activation: ReLU, or TopK with `k`."""
    return relu_activation(batch, n_latents) if activation == "relu" else topk_activation(batch, n_latents, k or 0)


def mlp(
    batch: int, dim: int, n_latents: int, hidden: Sequence[int], bias: bool, activation: str, k: int | None
) -> Flops:
    """Linear, ReLU, ..., linear, then ReLU or TopK."""
    return inference(batch, dim, hidden, n_latents, bias, mlp_activation(batch, n_latents, activation, k))


def mlp_training(
    batch: int,
    dim: int,
    n_latents: int,
    hidden: Sequence[int],
    bias: bool,
    activation: str,
    k: int | None,
    input_grad: bool = False,
) -> Flops:
    """One training step of the MLP encoder."""
    act = mlp_activation(batch, n_latents, activation, k)
    return training(batch, dim, hidden, n_latents, bias, act, input_grad)
