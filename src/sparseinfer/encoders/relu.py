"""`relu`: the classic SAE encoder, codes = ReLU(x W^T + b), trained with an L1 penalty."""

from __future__ import annotations

import torch
from pydantic import Field, StrictBool
from torch import Tensor, nn

from sparseinfer.codes import Codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._activations import check_dictionary, to_sparse
from sparseinfer.encoders.base import Encoder, EncoderConfig, configure, register
from sparseinfer.flops import amortised


class LinearConfig(EncoderConfig):
    """The linear map's hyperparameters, shared by the SAE encoders built on it."""

    bias: StrictBool = Field(True, description="the linear map has a bias (b_enc)")
    subtract_bias: StrictBool = Field(True, description="centre x by the dictionary bias (b_dec) first")


@register
class ReLUEncoder(Encoder):
    """Linear map then ReLU; `subtract_bias` centres x by the dictionary bias first (SAELens' b_dec).

    `sparse_output` returns `SparseCodes` holding, per row, as many entries as the densest row has non-zeros.
    """

    name = "relu"
    summary = "SAE encoder: linear map + ReLU (L1-trained)"

    class Config(LinearConfig):
        sparse_output: StrictBool = Field(False, description="return SparseCodes (as many entries as the densest row)")

    def __init__(
        self, dim: int, n_latents: int, bias: bool = True, subtract_bias: bool = True, sparse_output: bool = False
    ) -> None:
        config = configure(ReLUEncoder, locals())
        super().__init__()
        self.linear = nn.Linear(dim, n_latents, bias=config.bias)
        self.subtract_bias = config.subtract_bias
        self.sparse_output = config.sparse_output
        self.config = config

    @property
    def has_bias(self) -> bool:
        """Whether the linear map has a bias."""
        return self.linear.bias is not None

    def linear_input(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        """The checked input of the linear map: x, minus the dictionary bias when asked."""
        self._check(x, dictionary)
        check_dictionary(self.name, self.linear.in_features, self.linear.out_features, dictionary)
        return dictionary.centre(x) if self.subtract_bias else x

    def pre_activation(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        """x W^T + b, after removing the dictionary bias when asked."""
        return self.linear(self.linear_input(x, dictionary))

    def forward(self, x: Tensor, dictionary: Dictionary) -> Codes:
        codes = torch.relu(self.pre_activation(x, dictionary))
        return to_sparse(codes) if self.sparse_output else codes

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return amortised.relu(batch, dim, n_latents, self.has_bias, self.sparse_output).total

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        """Forward + backward; `input_grad` when the subtracted dictionary bias is learned (adds x's gradient)."""
        return amortised.relu_training(batch, dim, n_latents, self.has_bias, input_grad, self.sparse_output).total
