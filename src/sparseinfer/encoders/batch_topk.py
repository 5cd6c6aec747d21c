"""`batch_topk`: BatchTopK SAE encoder. Training keeps the k * batch largest activations over the whole batch,
so samples share a budget of k on average; it tracks a threshold (running average of the smallest kept
activation) that eval mode applies per sample, so inference does not depend on the batch."""

from __future__ import annotations

import torch
from pydantic import Field, StrictInt
from torch import Tensor

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._activations import batch_topk
from sparseinfer.encoders.base import configure, register
from sparseinfer.encoders.relu import LinearConfig, ReLUEncoder
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import amortised
from sparseinfer.validation import check_k


@register
class BatchTopKEncoder(ReLUEncoder):
    """Linear map, then BatchTopK (training mode) or JumpReLU at the tracked threshold (eval mode).

    Before any training-mode call the threshold is unknown (NaN) and eval mode falls back to BatchTopK.
    `momentum` is the weight of the newest batch in the threshold's running average.
    """

    name = "batch_topk"
    summary = "BatchTopK SAE encoder: top k*batch activations over the batch; learned threshold at eval"

    threshold: Tensor

    class Config(LinearConfig):
        k: StrictInt = Field(3, description="average latents kept per sample (k * batch over the batch)")
        momentum: float = Field(0.01, description="weight of the newest batch in the threshold's running average")

    def __init__(
        self,
        dim: int,
        n_latents: int,
        k: int = 3,
        bias: bool = True,
        subtract_bias: bool = True,
        momentum: float = 0.01,
    ) -> None:
        config = configure(BatchTopKEncoder, locals())
        check_k(config.k, n_latents)
        if not 0 < config.momentum <= 1:
            raise SparseInferError(f"batch_topk momentum must be in (0, 1], got {config.momentum}")
        super().__init__(dim, n_latents, bias=config.bias, subtract_bias=config.subtract_bias)
        self.k = config.k
        self.momentum = config.momentum
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.config = config

    @property
    def has_threshold(self) -> bool:
        """Whether a threshold has been estimated (by at least one training-mode call)."""
        return bool(torch.isfinite(self.threshold))

    def forward(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        pre = self.pre_activation(x, dictionary)
        if self.training or not self.has_threshold:
            codes = batch_topk(pre, self.k * x.shape[0])
            if self.training:
                self._update_threshold(codes)
            return codes
        return pre * (pre > self.threshold).to(pre.dtype)

    @torch.no_grad()
    def _update_threshold(self, codes: Tensor) -> None:
        kept = codes[codes > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min().to(self.threshold.dtype)
        if self.has_threshold:
            self.threshold.lerp_(smallest, self.momentum)
        else:
            self.threshold.copy_(smallest)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        batch_mode = self.training or not self.has_threshold
        return amortised.batch_topk(batch, dim, n_latents, self.k, self.has_bias, batch_mode).total

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        return amortised.batch_topk_training(batch, dim, n_latents, self.k, self.has_bias, input_grad).total

    def extra_repr(self) -> str:
        return f"k={self.k}, momentum={self.momentum}, threshold={float(self.threshold):.4g}"
