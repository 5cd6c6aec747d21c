"""`jumprelu`: JumpReLU SAE encoder (Rajamanoharan et al., 2024): codes = pre * H(pre - threshold), with a learned
per-latent threshold, trained with an L0 penalty through straight-through pseudo-derivatives of width `bandwidth`."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._activations import JumpReLUFunction, StepFunction
from sparseinfer.encoders.base import configure, register
from sparseinfer.encoders.relu import LinearConfig, ReLUEncoder
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import amortised
from sparseinfer.validation import check_positive


@register
class JumpReLUEncoder(ReLUEncoder):
    """Linear map then JumpReLU. The threshold is stored as its log, so it stays positive while it learns.

    `sparsity_penalty(codes)` = `l0_coefficient` * (fraction of active codes), averaged over all elements like the
    study's L1 term; it replaces the regime's L1 and trains the thresholds.
    """

    name = "jumprelu"
    summary = "JumpReLU SAE encoder: linear map, learned per-latent threshold, L0-trained"

    class Config(LinearConfig):
        threshold_init: float = Field(1e-3, description="initial per-latent threshold (> 0; then learned)")
        bandwidth: float = Field(1e-3, description="width of the straight-through pseudo-derivatives (> 0)")
        l0_coefficient: float = Field(0.01, description="weight of the L0 penalty (>= 0)")

    def __init__(
        self,
        dim: int,
        n_latents: int,
        threshold_init: float = 1e-3,
        bandwidth: float = 1e-3,
        l0_coefficient: float = 0.01,
        bias: bool = True,
        subtract_bias: bool = True,
    ) -> None:
        config = configure(JumpReLUEncoder, locals())
        check_positive(config.threshold_init, "jumprelu threshold_init")
        check_positive(config.bandwidth, "jumprelu bandwidth")
        check_positive(config.l0_coefficient, "jumprelu l0_coefficient", allow_zero=True)
        super().__init__(dim, n_latents, bias=config.bias, subtract_bias=config.subtract_bias)
        self.log_threshold = nn.Parameter(torch.full((n_latents,), math.log(config.threshold_init)))
        self.bandwidth = config.bandwidth
        self.l0_coefficient = config.l0_coefficient
        self._last: tuple[Tensor, Tensor, Tensor] | None = None
        self.config = config

    def __getstate__(self) -> dict[str, Any]:
        """Drop the last call's tensors (part of an autograd graph), so the encoder can be deep-copied or pickled."""
        state = super().__getstate__()
        return {**state, "_last": None}

    @property
    def threshold(self) -> Tensor:
        """The per-latent thresholds, exp(log_threshold)."""
        return self.log_threshold.exp()

    def forward(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        pre = self.pre_activation(x, dictionary)
        threshold = self.threshold.to(pre.dtype)
        codes = JumpReLUFunction.apply(pre, threshold, self.bandwidth)
        self._last = (codes, pre, threshold)
        return codes

    def sparsity_penalty(self, codes: Tensor) -> Tensor:
        """L0 surrogate of the codes returned by the last `forward`; its gradient reaches the thresholds."""
        if self._last is None or self._last[0] is not codes:
            raise SparseInferError("jumprelu.sparsity_penalty needs the codes returned by the encoder's last call")
        _, pre, threshold = self._last
        return self.l0_coefficient * StepFunction.apply(pre, threshold, self.bandwidth).mean()

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return amortised.jumprelu(batch, dim, n_latents, self.has_bias).total

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        """Forward + backward, including the L0 penalty (a loop using it must not also count the L1 term)."""
        return amortised.jumprelu_training(batch, dim, n_latents, self.has_bias, input_grad).total

    def extra_repr(self) -> str:
        return f"bandwidth={self.bandwidth}, l0_coefficient={self.l0_coefficient}"
