"""`topk`: the TopK SAE encoder, linear map then keep the k largest activations of each sample (after ReLU).

`fused_backward=True` computes the same codes through `topk_linear`, whose backward touches only the k kept entries
per row (an embedding bag and an index_add, O(B k D)) instead of the two dense (B, N) x (N, D) products of autograd's
linear backward; it is the lever that makes big dictionaries (N >> k) train fast. On by default;
`fused_backward=False` is the plain autograd path (the reference the tests check it against).
"""

from __future__ import annotations

from pydantic import Field, StrictBool, StrictInt
from torch import Tensor

from sparseinfer.codes import Codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._activations import topk_linear, topk_relu
from sparseinfer.encoders.base import configure, register
from sparseinfer.encoders.relu import ReLUEncoder
from sparseinfer.flops import amortised
from sparseinfer.validation import check_k


@register
class TopKEncoder(ReLUEncoder):
    """The SAE encoder with a TopK activation: exactly k stored codes per sample, no sparsity penalty needed."""

    name = "topk"
    summary = "TopK SAE encoder: linear map, keep the k largest (ReLU'd) activations per sample"

    class Config(ReLUEncoder.Config):
        k: StrictInt = Field(3, description="latents kept per sample (1 <= k <= n_latents)")
        fused_backward: StrictBool = Field(True, description="sparse backward through the k kept entries only")

    def __init__(
        self,
        dim: int,
        n_latents: int,
        k: int = 3,
        bias: bool = True,
        subtract_bias: bool = True,
        sparse_output: bool = False,
        fused_backward: bool = True,
    ) -> None:
        config = configure(TopKEncoder, locals())
        check_k(config.k, n_latents)
        super().__init__(
            dim, n_latents, bias=config.bias, subtract_bias=config.subtract_bias, sparse_output=config.sparse_output
        )
        self.k = config.k
        self.fused_backward = config.fused_backward
        self.config = config

    def forward(self, x: Tensor, dictionary: Dictionary) -> Codes:
        if not self.fused_backward:
            return topk_relu(self.pre_activation(x, dictionary), self.k, self.sparse_output)
        inputs = self.linear_input(x, dictionary)
        return topk_linear(inputs, self.linear.weight, self.linear.bias, self.k, self.sparse_output)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return amortised.topk(batch, dim, n_latents, self.k, self.has_bias).total

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        formula = amortised.topk_training_fused if self.fused_backward else amortised.topk_training
        return formula(batch, dim, n_latents, self.k, self.has_bias, input_grad).total

    def extra_repr(self) -> str:
        return f"k={self.k}, sparse_output={self.sparse_output}, fused_backward={self.fused_backward}"
