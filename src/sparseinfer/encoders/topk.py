"""`topk`: the TopK SAE encoder, linear map then keep the k largest activations of each sample (after ReLU)."""

from __future__ import annotations

from torch import Tensor

from sparseinfer.codes import Codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._activations import topk_relu
from sparseinfer.encoders.base import register
from sparseinfer.encoders.relu import ReLUEncoder
from sparseinfer.flops import amortised
from sparseinfer.validation import check_k


@register
class TopKEncoder(ReLUEncoder):
    """The SAE encoder with a TopK activation: exactly k stored codes per sample, no sparsity penalty needed."""

    name = "topk"
    summary = "TopK SAE encoder: linear map, keep the k largest (ReLU'd) activations per sample"

    def __init__(
        self,
        dim: int,
        n_latents: int,
        k: int = 3,
        bias: bool = True,
        subtract_bias: bool = True,
        sparse_output: bool = False,
    ) -> None:
        check_k(k, n_latents)
        super().__init__(dim, n_latents, bias=bias, subtract_bias=subtract_bias, sparse_output=sparse_output)
        self.k = k

    def forward(self, x: Tensor, dictionary: Dictionary) -> Codes:
        return topk_relu(self.pre_activation(x, dictionary), self.k, self.sparse_output)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return amortised.topk(batch, dim, n_latents, self.k, self.has_bias).total

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        return amortised.topk_training(batch, dim, n_latents, self.k, self.has_bias, input_grad).total

    def extra_repr(self) -> str:
        return f"k={self.k}, sparse_output={self.sparse_output}"
