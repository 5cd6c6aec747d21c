"""The study's "sparse coding": persistent per-sample codes s = exp(u) of the training set, learned jointly with the
dictionary by the same `fit` loop (they are just an encoder whose parameters are a table of codes).

Test codes cannot come from the table; they are inferred afterwards by inference-time optimisation against the
learned dictionary (see `sparseinfer.encoders.gradient` / `ito`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.flops.primitives import elementwise
from sparseinfer.memory import check_coding_memory


class CodeTable(Encoder):
    """One free code vector per training sample, exp-parameterised so codes stay positive (u starts at `init_log`)."""

    name: ClassVar[str] = "code_table"
    summary: ClassVar[str] = "persistent exp-parameterised training codes (sparse coding; training only)"

    def __init__(self, n_samples: int, n_latents: int, init_log: float = -10.0) -> None:
        super().__init__()
        self.log_codes = nn.Parameter(torch.full((n_samples, n_latents), float(init_log)))

    def forward(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        if x.shape[0] != self.log_codes.shape[0]:
            raise SparseInferError(
                f"a code table holds the codes of its {self.log_codes.shape[0]} training samples only (got a batch of "
                f"{x.shape[0]}); infer codes of new signals with inference-time optimisation (encoder 'ito')"
            )
        return self.log_codes.exp()

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return elementwise(batch * n_latents).total  # exp

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        return elementwise(batch * n_latents, 2).total  # exp forward, multiply by exp(u) backward


def code_table_for(train_x: Tensor, dictionary: Dictionary, init_log: float = -10.0) -> CodeTable:
    """A code table matching the training set and dictionary, on their device and dtype."""
    # the table, its gradient and Adam's two moments, plus the codes exp(u)
    check_coding_memory(train_x.shape[0], dictionary.n_latents, dictionary.dim, train_x.dtype, copies=5, gram=False,
                        device=train_x.device)  # fmt: skip
    table = CodeTable(train_x.shape[0], dictionary.n_latents, init_log)
    return table.to(device=train_x.device, dtype=train_x.dtype)
