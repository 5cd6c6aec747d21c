"""FLOPs of the rest of one training step (decode, losses, optimiser, renormalisation), so a training loop can add
them to an encoder's `training_flops` exactly: step = encoder + decoder_step + losses + adam_update (+ renormalise).

`matmul` parts equal `FlopCounterMode` (only the decoder has matrix products); `elementwise` parts are our tally
of the arithmetic per element (forward and backward), which the counter ignores.
"""

from __future__ import annotations

from sparseinfer.flops.primitives import Flops, elementwise, matmul


def decoder_step(
    batch: int,
    n_latents: int,
    dim: int,
    learn_dictionary: bool,
    codes_grad: bool,
    k: int | None = None,
    bias: bool = False,
) -> Flops:
    """Decode x_hat = codes @ atoms (+ bias) and its backward.

    Backward: the atoms' gradient when the dictionary learns (and its bias's); the codes' gradient when something
    upstream needs it (a learned encoder, or free codes). `k` = stored codes per row for sparse (values, indices)
    codes, which decode as an embedding bag (k gathered atoms scaled and summed per row, no matrix product for the
    counter): 2 FLOPs per (row, code, dim) forward, as many for the atoms' gradient (scatter-added outer products) and
    for the codes' gradient (dot products with the gathered atoms).
    """
    bias_flops = elementwise(batch * dim) if bias else Flops()
    if k is not None:
        per_entry = 2 * (1 + learn_dictionary + codes_grad)
        return elementwise(per_entry * batch * k * dim) + bias_flops * (1 + learn_dictionary)
    flops = matmul(batch, n_latents, dim) + bias_flops
    if learn_dictionary:
        flops += matmul(n_latents, batch, dim) + bias_flops  # codes^T @ grad, and the bias's gradient
    if codes_grad:
        flops += matmul(batch, dim, n_latents)  # grad @ atoms^T
    return flops


def reconstruction_loss(batch: int, dim: int) -> Flops:
    """Mean squared error over all elements: subtract, square, sum, divide (3 per element + 1); backward: scale,
    2 * residual, sign flip to x_hat (4 per element)."""
    return elementwise(7 * batch * dim + 1)


def l1_penalty(batch: int, n_latents: int) -> Flops:
    """lambda * mean |codes|: abs, sum (2 per element), divide and scale (2); backward: sign times the scale (2)."""
    return elementwise(4 * batch * n_latents + 2)


def cosine_loss(batch: int, n_latents: int) -> Flops:
    """Minus the mean over latents of the cosine between true and predicted code columns across the batch.

    Forward: products and their sums, squares and sums for both norms (6 per element); per latent: two square
    roots, product, clamp, divide, mean (6). Backward to the predicted codes: two scaled terms and their
    difference, plus the norm's chain rule (4 per element), and per-latent scalars (4).
    """
    return elementwise(10 * batch * n_latents + 10 * n_latents)


def adam_update(n_params: int) -> Flops:
    """torch.optim.Adam per parameter: first moment lerp (3), second moment scale + addcmul (4),
    denominator sqrt / correction + eps (3), addcdiv update (3)."""
    return elementwise(13 * n_params)


def renormalise(n_latents: int, dim: int) -> Flops:
    """Rescale atoms to unit norm: square and sum (2 per element), sqrt and clamp per atom, divide (1 per element)."""
    return elementwise(3 * n_latents * dim + 2 * n_latents)
