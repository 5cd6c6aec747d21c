"""Training regimes of the study: which parameters learn, which loss applies, what happens after each step.

- `known_codes`: supervised; only the encoder learns, to predict the true codes (per-latent cosine loss).
- `known_dictionary`: the dictionary is frozen (at the truth); the encoder learns by reconstruction + sparsity.
- `learn_both`: encoder and dictionary learn jointly; atoms are renormalised to unit norm after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseinfer.codes import Codes, SparseCodes, as_dense
from sparseinfer.errors import SparseInferError


def cosine_loss(true_codes: Tensor, codes: Tensor, eps: float = 1e-8) -> Tensor:
    """Minus the mean over latents of the cosine similarity between true and predicted code columns (over the batch)."""
    dot = (true_codes * codes).sum(0)
    norms = true_codes.norm(dim=0) * codes.norm(dim=0)
    return -(dot / norms.clamp_min(eps)).mean()


def reconstruction_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared error over all elements (the study's reconstruction term)."""
    return (x - x_hat).pow(2).mean()


def l1_penalty(codes: Codes) -> Tensor:
    """Mean absolute code value over all elements (the study's sparsity term, times lambda); sparse codes too."""
    if isinstance(codes, SparseCodes):
        return codes.values.abs().sum() / (codes.values.shape[0] * codes.n_latents)
    return codes.abs().mean()


@dataclass(frozen=True)
class Regime:
    """What learns and how it is scored in one training setting."""

    name: str
    learn_encoder: bool
    learn_dictionary: bool
    supervised: bool
    description: str

    def loss(
        self,
        x: Tensor,
        codes: Codes,
        x_hat: Tensor | None,
        l1: float,
        true_codes: Tensor | None = None,
        penalty: Tensor | None = None,
    ) -> Tensor:
        """The regime's training loss; `penalty` (an encoder's own sparsity loss) replaces the L1 term if given."""
        if self.supervised:
            if true_codes is None:
                raise SparseInferError(f"regime {self.name!r} needs the true codes of the training data")
            return cosine_loss(true_codes, as_dense(codes))
        assert x_hat is not None
        sparsity = penalty if penalty is not None else l1 * l1_penalty(codes)
        return reconstruction_loss(x, x_hat) + sparsity

    @torch.no_grad()
    def after_step(self, dictionary: torch.nn.Module) -> None:
        """Keep atoms on the unit sphere when the dictionary learns."""
        if self.learn_dictionary:
            dictionary.renormalise_()


REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        Regime("known_codes", True, False, True, "supervised: the encoder learns to predict the true codes"),
        Regime("known_dictionary", True, False, False, "dictionary frozen at the truth; encoder learns"),
        Regime("learn_both", True, True, False, "encoder and dictionary learned jointly"),
    )
}


def get_regime(name: str) -> Regime:
    """The regime called `name` (hyphens or underscores); a clear error listing the known ones otherwise."""
    key = name.replace("-", "_")
    if key not in REGIMES:
        raise SparseInferError(f"unknown setting {name!r}; known settings: {', '.join(REGIMES)}")
    return REGIMES[key]
