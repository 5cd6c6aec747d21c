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
    codes, which decode by gathering k atoms per sample (a batched product) instead of a dense matrix product;
    with k = 1 torch does that by elementwise scaling, which the counter does not count as a matrix product.
    """
    if k == 1:
        return _decode_one(batch, dim, learn_dictionary, codes_grad, bias)
    stored = n_latents if k is None else k
    flops = matmul(batch, stored, dim) + (elementwise(batch * dim) if bias else Flops())
    if learn_dictionary:
        flops += matmul(stored, batch, dim)  # codes^T @ grad; sparse: outer products, then scatter-added
        if k is not None:
            flops += elementwise(batch * k * dim)
        if bias:
            flops += elementwise(batch * dim)
    if codes_grad:
        flops += matmul(batch, dim, stored)  # grad @ atoms^T (sparse: against the gathered atoms)
    return flops


def _decode_one(batch: int, dim: int, learn_dictionary: bool, codes_grad: bool, bias: bool) -> Flops:
    """Sparse codes with one entry per row: torch's einsum scales the gathered atom (no matrix product).

    Forward: one multiply per output (+ bias). Backward: atoms' gradient value * grad, scatter-added (2 per output,
    + bias gradient); codes' gradient a dot product of grad with the atom (2 per output).
    """
    per_output = 1 + bias + (2 + bias if learn_dictionary else 0) + (2 if codes_grad else 0)
    return elementwise(per_output * batch * dim)


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
