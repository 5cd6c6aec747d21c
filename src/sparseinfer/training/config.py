"""`TrainConfig`: the optimisation settings of one training run (validated; unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Optimiser, learning rate, batch, steps, sparsity weight and evaluation interval (the seed belongs to the run).

    `l1` is the study's lambda: loss = mean over elements of (x - x_hat)^2 + l1 * mean over elements of |s|.
    `batch_size=None` means full batch (the protocol).
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20_000, ge=0)
    lr: float = Field(1e-3, gt=0)
    optimiser: Literal["adam", "sgd"] = "adam"
    batch_size: int | None = Field(None, ge=1)
    l1: float = Field(0.01, ge=0)
    eval_every: int = Field(100, ge=1)
