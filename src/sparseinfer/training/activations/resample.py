"""Dead-latent resampling: dead atoms point at the worst-reconstructed inputs, their encoder rows and Adam moments
are reset."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.training.activations.initialise import tied_rows


@torch.no_grad()
def resample(
    encoder: Encoder, dictionary: Dictionary, optimiser: torch.optim.Optimizer | None, x: Tensor, dead: Tensor,
    generator: torch.Generator,
) -> int:  # fmt: skip
    """Point dead atoms at the worst-reconstructed inputs of `x` and reset their encoder rows and Adam moments."""
    idx = torch.nonzero(dead).flatten().to(dictionary.atoms.device)
    if idx.numel() == 0:
        return 0
    residual = x - dictionary.decode(encoder(x, dictionary)).float()
    err = residual.pow(2).sum(1).double().cpu()
    pick = torch.multinomial(err / err.sum(), idx.numel(), replacement=idx.numel() > x.shape[0], generator=generator)
    directions = torch.nn.functional.normalize(residual[pick.to(residual.device)], dim=1)
    dictionary.atoms[idx] = directions.to(dictionary.atoms.dtype)
    rows = tied_rows(encoder, dictionary.n_latents, dictionary.dim)
    alive = ~dead.to(dictionary.atoms.device)
    for _, p in rows:
        if p.ndim == 2:
            norm = p[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
            p[idx] = directions.to(p.dtype) * 0.2 * norm
        else:
            p[idx] = 0.0
    if optimiser is not None:
        for p in [dictionary.atoms, *(p for _, p in rows)]:
            for moment in optimiser.state.get(p, {}).values():
                if isinstance(moment, Tensor) and moment.shape == p.shape:
                    moment[idx] = 0.0
    return int(idx.numel())
