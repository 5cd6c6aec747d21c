"""FLOPs of one training step, summed from the pure formulas in `sparseinfer.flops` (no torch state read)."""

from __future__ import annotations

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.flops import training as step
from sparseinfer.flops.primitives import Flops
from sparseinfer.training.regimes import Regime


def training_step_flops(
    encoder: Encoder, dictionary: Dictionary, batch: int, regime: Regime, n_params: int, learn_encoder: bool
) -> int:
    """Encoder forward (+ backward when it learns), decode and its backward, loss, Adam update, renormalisation."""
    dim, n_latents = dictionary.dim, dictionary.n_latents
    if learn_encoder:
        total = encoder.training_flops(batch, dim, n_latents)
    else:
        total = encoder.inference_flops(batch, dim, n_latents)
    rest = Flops()
    if regime.supervised:
        rest = rest + step.cosine_loss(batch, n_latents)
    else:
        rest = rest + step.decoder_step(batch, n_latents, dim, regime.learn_dictionary, learn_encoder)
        rest = rest + step.reconstruction_loss(batch, dim) + step.l1_penalty(batch, n_latents)
    rest = rest + step.adam_update(n_params)
    if regime.learn_dictionary:
        rest = rest + step.renormalise(n_latents, dim)
    return total + rest.total
