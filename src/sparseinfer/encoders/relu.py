"""`relu`: the classic SAE encoder, codes = ReLU(x W^T + b), trained with an L1 penalty."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, register
from sparseinfer.flops import amortised


@register
class ReLUEncoder(Encoder):
    """Linear map then ReLU; `subtract_bias` centres x by the dictionary bias first (SAELens' b_dec)."""

    name = "relu"
    summary = "SAE encoder: linear map + ReLU (L1-trained)"

    def __init__(self, dim: int, n_latents: int, bias: bool = True, subtract_bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, n_latents, bias=bias)
        self.subtract_bias = subtract_bias

    def pre_activation(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        """x W^T + b, after removing the dictionary bias when asked."""
        self._check(x, dictionary)
        return self.linear(dictionary.centre(x) if self.subtract_bias else x)

    def forward(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        return torch.relu(self.pre_activation(x, dictionary))

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return amortised.relu(batch, dim, n_latents, self.linear.bias is not None).total
