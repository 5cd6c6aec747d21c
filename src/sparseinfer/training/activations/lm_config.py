"""`LMTrainConfig`: the settings of one training run on language-model activations, and their schedule.

With a `preset` (see `presets`), the preset's settings fill every field not given explicitly (`resolve`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sparseinfer.encoders.base import Encoder
from sparseinfer.training.activations.presets import preset_settings


class LMTrainConfig(BaseModel):
    """Settings of one training run on activations (validated; unknown keys are errors).

    With `preset`, the preset's settings fill every field not given explicitly (`resolve`)."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = None
    encoder: str = "relu"
    hparams: dict[str, Any] = Field(default_factory=dict)
    expansion: int = Field(8, ge=1, description="n_latents = expansion x dim (the study uses 22)")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1024, ge=1, description="tokens per step")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    decay_fraction: float = Field(0.2, ge=0, le=1, description="linear LR decay to 0 over this last fraction")
    loss: Literal["sae", "study"] = "sae"
    l1: float | None = Field(
        None,
        ge=0,
        description="sparsity weight: 'sae' loss, lambda on sum |s| against the summed squared error per token; "
        "'study' loss, lambda on mean |s|. None: 0 for TopK-style encoders (a `k`), else 5 ('sae') or 1e-4 ('study')",
    )
    l1_warmup_steps: int = Field(100, ge=0)
    target_l0: float | None = Field(
        None,
        gt=0,
        description="adapt the sparsity weight (the L1 weight, and an iterative encoder's `penalty`) so that the "
        "training batches' mean L0 lands on this target; for encoders whose sparsity comes from a penalty, not a k",
    )
    target_l0_rate: float = Field(
        0.05, gt=0, le=1, description="controller gain: log-weight step per unit of log(L0 / target), capped at 1"
    )
    normalise: bool = True
    bias_init: Literal["mean", "median", "geometric_median", "zero"] = "mean"
    dead_latents: Literal["resample", "auxk", "none"] = "resample"
    resample_every: int = Field(250, ge=1, description="steps between dead-latent resampling")
    dead_tokens: int = Field(100_000, ge=1, description="a latent is dead after this many tokens without firing")
    auxk_k: int | None = Field(None, ge=1, description="dead latents per token in AuxK; None: dim // 2")
    auxk_coef: float = Field(1 / 32, gt=0)
    checkpoint_every: int = Field(200, ge=1)
    eval_every: int = Field(50, ge=1)
    seed: int = 0
    autocast: bool = True


def resolve(config: LMTrainConfig, dim: int) -> LMTrainConfig:
    """The config with its preset's settings for width `dim` under the explicitly given fields (idempotent)."""
    if config.preset is None:
        return config
    explicit = {k: getattr(config, k) for k in config.model_fields_set}
    return LMTrainConfig(**{**preset_settings(config.preset, dim), **explicit})


def schedule(config: LMTrainConfig, step: int) -> tuple[float, float]:
    """(LR multiplier, L1 multiplier) at `step` (1-based): linear warm-ups, linear LR decay over the last part."""
    warm = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
    decay_start = config.steps * (1 - config.decay_fraction)
    decay = 1.0 if step <= decay_start else max(0.0, (config.steps - step) / max(1.0, config.steps - decay_start))
    l1 = min(1.0, step / config.l1_warmup_steps) if config.l1_warmup_steps else 1.0
    return warm * decay, l1


def l0_controller_step(log_scale: float, l0: float, target: float, rate: float) -> float:
    """One step of the target-L0 controller: log(weight multiplier) += rate * log(L0 / target), the log ratio capped
    at +-1 (a multiplicative, integral controller: too dense raises the weight, too sparse lowers it)."""
    error = max(-1.0, min(1.0, math.log(max(l0, 1e-3) / target)))
    return log_scale + rate * error


def controller_active(config: LMTrainConfig, step: int) -> bool:
    """Whether the target-L0 controller adapts at `step`: after the L1 warm-up, frozen for the final decay."""
    return (
        config.target_l0 is not None
        and step > config.l1_warmup_steps
        and step <= config.steps * (1 - config.decay_fraction)
    )


def default_l1(encoder: Encoder, loss: str = "sae") -> float:
    """0 for encoders that fix their sparsity by a `k` (TopK, BatchTopK, MLP with k), else 5 ('sae') / 1e-4."""
    if getattr(encoder, "k", None):
        return 0.0
    return 5.0 if loss == "sae" else 1e-4
