"""`mlp`: a multi-layer encoder, linear and ReLU layers of any hidden widths, then a ReLU or TopK output.

The study's MLP is linear, ReLU, linear, ReLU with hidden width 32, 256 or 1024 (`hidden=[32]` etc.).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor, nn

from sparseinfer.codes import Codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._activations import check_dictionary, topk_relu
from sparseinfer.encoders.base import Encoder, configure, register
from sparseinfer.encoders.relu import LinearConfig
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import amortised
from sparseinfer.validation import check_k

ACTIVATIONS = ("relu", "topk")


@register
class MLPEncoder(Encoder):
    """Linear layers dim -> hidden[0] -> ... -> n_latents with ReLU between, then `activation` ("relu" | "topk")."""

    name = "mlp"
    summary = "MLP encoder: linear/ReLU layers of any widths, ReLU or TopK output"

    class Config(LinearConfig):
        hidden: list[StrictInt] = Field([256], description="hidden layer widths, input to output")
        activation: Literal["relu", "topk"] = Field("relu", description="output activation")
        k: StrictInt | None = Field(None, description="latents kept per sample (activation 'topk' only)")
        sparse_output: StrictBool = Field(False, description="return SparseCodes (activation 'topk' only)")

    def __init__(
        self,
        dim: int,
        n_latents: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        k: int | None = None,
        bias: bool = True,
        subtract_bias: bool = True,
        sparse_output: bool = False,
    ) -> None:
        config = configure(MLPEncoder, locals())
        super().__init__()
        hidden, activation, k = list(config.hidden), config.activation, config.k
        bias, subtract_bias, sparse_output = config.bias, config.subtract_bias, config.sparse_output
        if not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise SparseInferError(f"mlp hidden widths must be positive integers, got {hidden}")
        if activation not in ACTIVATIONS:
            raise SparseInferError(f"mlp activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "topk":
            check_k(k if k is not None else 0, n_latents)
        elif k is not None or sparse_output:
            raise SparseInferError("mlp k and sparse_output apply only with activation='topk'")
        self.dim, self.n_latents, self.hidden = dim, n_latents, hidden
        self.activation, self.k = activation, k
        self.subtract_bias, self.sparse_output = subtract_bias, sparse_output
        widths = [dim, *hidden, n_latents]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.has_bias = bias
        self.config = config

    def forward(self, x: Tensor, dictionary: Dictionary) -> Codes:
        self._check(x, dictionary)
        check_dictionary(self.name, self.dim, self.n_latents, dictionary)
        pre = self.net(dictionary.centre(x) if self.subtract_bias else x)
        if self.activation == "topk":
            assert self.k is not None
            return topk_relu(pre, self.k, self.sparse_output)
        return torch.relu(pre)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return amortised.mlp(batch, dim, n_latents, self.hidden, self.has_bias, self.activation, self.k).total

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        flops = amortised.mlp_training(
            batch, dim, n_latents, self.hidden, self.has_bias, self.activation, self.k, input_grad
        )
        return flops.total

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, activation={self.activation!r}, k={self.k}"
