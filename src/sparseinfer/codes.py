"""Sparse codes as a `(values, indices)` pair, so top-k encoders need not densify (batch, n_latents)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SparseCodes(NamedTuple):
    """Codes with `k` stored entries per sample: `values` and `indices` both (batch, k)."""

    values: Tensor
    indices: Tensor
    n_latents: int

    def to_dense(self) -> Tensor:
        """Scatter into a dense (batch, n_latents) tensor."""
        out = self.values.new_zeros(self.values.shape[0], self.n_latents)
        return out.scatter_(1, self.indices, self.values)


Codes = Tensor | SparseCodes


def as_dense(codes: Codes) -> Tensor:
    """Dense view of either kind of codes (for metrics and reports, never on a hot path)."""
    return codes.to_dense() if isinstance(codes, SparseCodes) else codes


def topk_codes(pre: Tensor, k: int) -> SparseCodes:
    """Keep the k largest entries of each row of `pre` as sparse codes."""
    values, indices = torch.topk(pre, k, dim=1)
    return SparseCodes(values, indices, pre.shape[1])
