"""`lista`: learned ISTA (Gregor & LeCun 2010), an unrolled iterative encoder with learned matrices.

With b = x W^T (W: (n_latents, dim)), layer 1 gives s_1 = T_1(b) and layer t > 1 gives s_t = T_t(b + s_{t-1} S^T)
(S: (n_latents, n_latents)); T_t is the soft threshold at theta_t = softplus(rho_t) > 0 (one-sided when `nonneg`).
`tied` shares W and S across layers (Gregor & LeCun); untied gives every layer its own. Thresholds are per layer.
`init_from_dictionary(D, penalty)` sets W = D / L, S = I - D D^T / L, theta = penalty / L, so that the untrained
network equals `n_layers` ISTA iterations from zero on 1/2 ||x - s D||^2 + penalty ||s||_1 (L = ||D||_2^2).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor, nn

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._proximal import lipschitz_constant
from sparseinfer.encoders.base import Encoder, EncoderConfig, configure, register
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import optimisation
from sparseinfer.validation import check_count, check_positive


def _inverse_softplus(value: float) -> float:
    """rho with softplus(rho) = value (> 0)."""
    return value + math.log(-math.expm1(-value))


@register
class LISTAEncoder(Encoder):
    """`n_layers` unrolled ISTA steps with learned W, S and per-layer thresholds."""

    name = "lista"
    kind: ClassVar[str] = "learned-iterative"
    summary = "LISTA: unrolled ISTA with learned matrices and thresholds (Gregor & LeCun)"

    class Config(EncoderConfig):
        n_layers: StrictInt = Field(3, description="unrolled ISTA steps")
        nonneg: StrictBool = Field(False, description="one-sided thresholds (s >= 0)")
        tied: StrictBool = Field(True, description="share W and S across layers")
        threshold: float = Field(0.01, description="initial per-layer threshold (> 0; then learned)")

    def __init__(
        self,
        dim: int,
        n_latents: int,
        n_layers: int = 3,
        nonneg: bool = False,
        tied: bool = True,
        threshold: float = 0.01,
    ) -> None:
        c = configure(LISTAEncoder, locals())
        super().__init__()
        self.n_layers = check_count(c.n_layers, "n_layers")
        check_count(dim, "dim")
        check_count(n_latents, "n_latents")
        threshold = check_positive(c.threshold, "threshold")
        self.nonneg = c.nonneg
        self.tied = c.tied
        n_w = 1 if self.tied else self.n_layers
        n_s = min(1, self.n_layers - 1) if self.tied else self.n_layers - 1  # layer 1 has no S
        bound = 1.0 / math.sqrt(dim)
        self.W = nn.Parameter(torch.empty(n_w, n_latents, dim).uniform_(-bound, bound))
        self.S = nn.Parameter(torch.zeros(n_s, n_latents, n_latents))
        self.rho = nn.Parameter(torch.full((self.n_layers,), _inverse_softplus(threshold)))
        self.config = c

    @property
    def thresholds(self) -> Tensor:
        """The per-layer thresholds theta_t = softplus(rho_t)."""
        return F.softplus(self.rho)

    @torch.no_grad()
    def init_from_dictionary(self, dictionary: Dictionary, penalty: float) -> LISTAEncoder:
        """Set W = D / L, S = I - D D^T / L, thresholds = penalty / L: untrained LISTA = `n_layers` ISTA steps."""
        check_positive(penalty, "penalty")
        self._check_shape(dictionary)
        atoms = dictionary.atoms.detach().to(self.W.dtype)
        lip = lipschitz_constant(atoms)
        eye = torch.eye(atoms.shape[0], dtype=atoms.dtype, device=atoms.device)
        self.W.copy_((atoms / lip).expand_as(self.W))
        self.S.copy_((eye - atoms @ atoms.T / lip).expand_as(self.S))
        self.rho.fill_(_inverse_softplus(penalty / lip))
        return self

    def _check_shape(self, dictionary: Dictionary) -> None:
        if dictionary.n_latents != self.W.shape[1] or dictionary.dim != self.W.shape[2]:
            raise SparseInferError(
                f"lista was built for (n_latents, dim) = {tuple(self.W.shape[1:])}, "
                f"the dictionary has ({dictionary.n_latents}, {dictionary.dim})"
            )

    def forward(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        self._check(x, dictionary)
        self._check_shape(dictionary)
        x = dictionary.centre(x)
        thresholds = self.thresholds
        b = x @ self.W[0].T
        s = self._shrink(b, thresholds[0])
        for t in range(1, self.n_layers):
            if not self.tied:
                b = x @ self.W[t].T
            s = self._shrink(b + s @ self.S[0 if self.tied else t - 1].T, thresholds[t])
        return s

    def _shrink(self, v: Tensor, threshold: Tensor) -> Tensor:
        if self.nonneg:
            return torch.relu(v - threshold)
        return v - torch.minimum(torch.maximum(v, -threshold), threshold)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return optimisation.lista_inference(batch, dim, n_latents, self.n_layers, self.tied, self.nonneg).total

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        """Forward + backward of the unrolled layers (LISTA reads x directly: `input_grad` adds x's gradient)."""
        extra = 2 * batch * dim * n_latents if input_grad else 0
        return extra + optimisation.lista_training(batch, dim, n_latents, self.n_layers, self.tied, self.nonneg).total
