"""The starting point of a run on activations: input scale, random unit atoms, the bias at a robust centre of the
data (`centre.centre_of`), and encoder rows tied to the atoms."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create
from sparseinfer.training.activations.centre import centre_of
from sparseinfer.training.activations.lm_config import LMTrainConfig, resolve


def tied_rows(encoder: Encoder, n_latents: int, dim: int) -> list[tuple[str, torch.nn.Parameter]]:
    """Encoder parameters holding one row per latent: (n_latents, dim) matrices and (n_latents,) biases."""
    return [(n, p) for n, p in encoder.named_parameters() if p.shape in ((n_latents, dim), (n_latents,))]


def data_scale(sample: Tensor) -> float:
    """The factor making the mean squared norm of scaled activations equal their dimension (so lr/l1 transfer)."""
    return math.sqrt(sample.shape[1] / sample.float().pow(2).sum(1).mean().item())


def build(config: LMTrainConfig, dim: int, sample: Tensor | None = None) -> tuple[Encoder, Dictionary]:
    """Encoder and dictionary for `dim`: random unit atoms, bias at `bias_init` of the (scaled) `sample`, tied rows."""
    config = resolve(config, dim)
    n_latents = config.expansion * dim
    gen = torch.Generator().manual_seed(config.seed)
    atoms = torch.randn(n_latents, dim, generator=gen)
    bias = centre_of(sample.float(), config.bias_init) if sample is not None else torch.zeros(dim)
    dictionary = Dictionary(atoms, bias=bias)
    torch.manual_seed(config.seed)
    encoder = create(config.encoder, dim=dim, n_latents=n_latents, **config.hparams)
    if getattr(encoder, "k", None) and hasattr(encoder, "sparse_output") and "sparse_output" not in config.hparams:
        encoder.sparse_output = True  # k codes per token: decode them as an embedding bag, not a dense product
    with torch.no_grad():
        for _, p in tied_rows(encoder, n_latents, dim):
            p.copy_(dictionary.atoms if p.ndim == 2 else torch.zeros_like(p))
    return encoder, dictionary
