"""FLOPs of one training step, summed from the pure formulas in `sparseinfer.flops` (no torch state read)."""

from __future__ import annotations

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.flops import training as step
from sparseinfer.flops.primitives import Flops
from sparseinfer.training.regimes import Regime


def training_step_flops(
    encoder: Encoder,
    dictionary: Dictionary,
    batch: int,
    regime: Regime,
    n_params: int,
    learn_encoder: bool,
    sparse_k: int | None = None,
) -> int:
    """Encoder forward (+ backward when it learns), decode and its backward, loss, Adam update, renormalisation.

    `sparse_k`: the codes came as `SparseCodes` with that many entries per row (decoded by gathering atoms).
    """
    dim, n_latents = dictionary.dim, dictionary.n_latents
    bias = dictionary.bias is not None
    learned_bias = bias and regime.learn_dictionary and getattr(encoder, "subtract_bias", False)
    if learn_encoder:
        total = encoder.training_flops(batch, dim, n_latents, input_grad=learned_bias)
    else:
        total = encoder.inference_flops(batch, dim, n_latents)
    rest = Flops()
    if regime.supervised:
        rest = rest + step.cosine_loss(batch, n_latents)
    else:
        learn_dict = regime.learn_dictionary
        rest = rest + step.decoder_step(batch, n_latents, dim, learn_dict, learn_encoder, k=sparse_k, bias=bias)
        rest = rest + step.reconstruction_loss(batch, dim)
        if not encoder.has_own_penalty():  # e.g. JumpReLU counts its L0 term in its own training_flops
            rest = rest + step.l1_penalty(batch, n_latents)
    rest = rest + step.adam_update(n_params)
    if regime.learn_dictionary:
        rest = rest + step.renormalise(n_latents, dim)
    return total + rest.total
