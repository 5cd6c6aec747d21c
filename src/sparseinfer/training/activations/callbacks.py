"""The LM-specific parts of a training run, as `training.fit` hooks: loss (SAE or study, + AuxK), unit-sphere
gradient projection, dead-latent tracking and resampling, per-row training metrics, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseinfer.codes import Codes, as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, IterativeEncoder
from sparseinfer.errors import SparseInferError
from sparseinfer.training import checkpoint as ckpt
from sparseinfer.training.activations.lm_config import LMTrainConfig, controller_active, schedule
from sparseinfer.training.activations.losses import AuxK, auxk_flops, batch_variance, normaliser_flops, study_loss
from sparseinfer.training.activations.resample import resample
from sparseinfer.training.distributed import DataParallel
from sparseinfer.training.fit import FitState
from sparseinfer.training.regimes import get_regime

TREND_HORIZON = 50  # steps ahead the target-L0 controller extrapolates the L0 trend (its derivative term)


@torch.no_grad()
def project_radial(dictionary: Dictionary) -> None:
    """Remove each atom's gradient component along the atom, so steps move along the unit sphere.

    Under `no_grad`: the atoms require grad, so with autograd on, the in-place update would give `atoms.grad` a
    graph of its own (holding the step's saved tensors); chained from step to step, that leaked about one
    batch x latents array per step (issue 20)."""
    g, a = dictionary.atoms.grad, dictionary.atoms
    if g is not None:
        g.sub_((g * a).sum(1, keepdim=True) * a)


class Callbacks:
    """The LM-specific parts of a run, as `fit` hooks: loss (SAE or study, + AuxK), dead-latent tracking and
    resampling, per-row training metrics, checkpoints. Under data parallelism the dead-latent counts, resampling
    and metrics use every rank's batch (so all ranks stay identical), and only rank 0 writes checkpoints."""

    def __init__(
        self, config: LMTrainConfig, encoder: Encoder, dictionary: Dictionary, optimiser: torch.optim.Optimizer,
        checkpoint: Path, scale: float, group: DataParallel,
    ) -> None:  # fmt: skip
        self.config, self.encoder, self.dictionary, self.optimiser = config, encoder, dictionary, optimiser
        self.checkpoint, self.scale, self.group = checkpoint, scale, group
        self.since_fired = torch.zeros(dictionary.n_latents, dtype=torch.long)
        self.auxk = None
        if config.dead_latents == "auxk":
            self.auxk = AuxK(encoder, config.auxk_k or max(1, dictionary.dim // 2), config.auxk_coef)
        self._batch = 0
        # the target-L0 controller's log multiplier of the sparsity weight: 0.0 until it first adapts, then a float64
        # tensor on the training device with its L0 state, so that steering never waits for the device
        self.log_l1_scale: float | Tensor = 0.0
        self._log_l0: Tensor | None = None
        self._trend: float | Tensor = 0.0
        self._penalty = getattr(encoder, "penalty", None) if isinstance(encoder, IterativeEncoder) else None
        if config.target_l0 is not None and getattr(encoder, "k", None):
            raise SparseInferError(
                f"target_l0 adapts a sparsity penalty; encoder {encoder.name!r} fixes its L0 by k: set k instead"
            )

    @property
    def l1_scale(self) -> float:
        """The multiplier of the sparsity weight that the target-L0 controller has reached (1 without a target);
        a Python number, read back from the device (for logs and results, not the step)."""
        return math.exp(float(self.log_l1_scale))

    def schedule(self, step: int) -> tuple[float, float | Tensor]:
        """`fit`'s schedule: the config's warm-ups and decay, the L1 multiplier times the controller's (a device
        scalar once the controller has adapted)."""
        lr, l1 = schedule(self.config, step)
        if isinstance(self.log_l1_scale, Tensor):
            return lr, l1 * torch.exp(self.log_l1_scale)
        return lr, l1 * self.l1_scale

    def _control(self, step: int, l0: Tensor) -> None:
        """Adapt the sparsity weight towards `target_l0` from this step's mean L0 (a float64 device scalar): the step
        of `l0_controller_step` on the L0 predicted from its smoothed trend, computed on the device."""
        cfg = self.config
        if not controller_active(cfg, step):
            return
        log_l0 = torch.log(l0.clamp_min(1e-3))
        if self._log_l0 is not None:  # the L0 trend (log L0 per step), smoothed
            self._trend = 0.9 * self._trend + 0.1 * (log_l0 - self._log_l0)
        self._log_l0 = log_l0
        predicted = torch.exp(log_l0 + TREND_HORIZON * self._trend)  # L0 lags the weight: steer by where it heads
        error = torch.log(predicted.clamp_min(1e-3) / cfg.target_l0).clamp(-1.0, 1.0)
        self.log_l1_scale = self.log_l1_scale + cfg.target_l0_rate * error
        self._apply_penalty()

    def _apply_penalty(self) -> None:
        if self._penalty is not None:  # iterative encoders: the penalty of their inference problem
            self.encoder.penalty = self._penalty * self.l1_scale

    def dead(self) -> Tensor:
        """Latents that have not fired for `dead_tokens` tokens."""
        return self.since_fired >= self.config.dead_tokens

    def loss(self, x: Tensor, codes: Codes, x_hat: Tensor, l1: float, penalty: Tensor | None) -> Tensor:
        self._batch = x.shape[0]
        x_hat = x_hat.float()
        if self.config.loss == "study":
            total = study_loss(x, codes, x_hat, l1, penalty)
        else:
            total = get_regime("learn_both").loss(x, codes, x_hat, l1, penalty=penalty)
        if self.auxk is not None:
            aux = self.auxk.loss(x, x_hat, self.dictionary, self.dead())
            if aux is not None:
                norm = batch_variance(x.detach()) if self.config.loss == "study" else 1.0
                total = total + aux / norm
        return total

    def extra_flops(self) -> int:
        dim, n = self.dictionary.dim, self.dictionary.n_latents
        extra = normaliser_flops(self._batch, dim).total if self.config.loss == "study" else 0
        if self.auxk is not None and self.auxk.last_k:
            extra += auxk_flops(self._batch, dim, n, self.auxk.last_k).total + (1 if self.config.loss == "study" else 0)
        return extra

    def after_step(self, state: FitState, x: Tensor, codes: Codes, x_hat: Tensor | None) -> None:
        """Dead-latent counts and the target-L0 controller stay on the device (no read-back per step); the row's
        metrics are read at logging steps, resampling and checkpoints at their own intervals."""
        cfg, group = self.config, self.group
        dense = as_dense(codes).detach()
        active = dense != 0
        fired = group.max(active.any(0).to(torch.int32)) > 0
        if cfg.target_l0 is not None:  # the mean L0 over every rank's batch
            rows = torch.full((), float(x.shape[0]), dtype=torch.float64, device=dense.device)
            count, total = group.sum(torch.stack([active.sum(dtype=torch.float64), rows])).unbind()
            self._control(state.step, count / total)
        since = self.since_fired.to(fired.device)  # a resumed checkpoint's counts arrive on the host
        self.since_fired = torch.where(fired, 0, since + x.shape[0] * group.world)
        resampled = 0
        if cfg.dead_latents == "resample" and state.step % cfg.resample_every == 0:
            if state.step < cfg.steps * (1 - cfg.decay_fraction):
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
                everyone = group.gather(x)  # the same inputs and generator on every rank: the same new atoms
                resampled = resample(self.encoder, self.dictionary, self.optimiser, everyone, self.dead(), gen)
                self.since_fired[self.dead()] = 0
        row = state.history[-1] if state.history else None
        if row is not None and row["step"] == state.step and x_hat is not None:
            xs, xh = group.gather(x), group.gather(x_hat.detach().float())
            l0 = group.gather((dense != 0).float().sum(1))
            mse = (xs - xh).pow(2).sum(1).mean()
            row.update(
                tokens=state.step * xs.shape[0],
                fvu=float(mse / (xs - xs.mean(0)).pow(2).sum(1).mean()),
                l0=float(l0.mean()),
                dead_fraction=float(self.dead().float().mean()),
                resampled=resampled,
                lr=cfg.lr * schedule(cfg, state.step)[0],
                l1_scale=self.l1_scale,
            )
        if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps and group.is_main:
            self.save(state)

    def save(self, state: FitState) -> None:
        """Write the checkpoint (`training.checkpoint`: checksummed, atomic, finite values only): weights, optimiser,
        step, FLOPs, history (all totals over ranks), dead-latent counts, the controller's state, RNG states."""
        opt_tensors, opt_json = ckpt.optimiser_tensors(self.optimiser)
        tensors = {
            **ckpt.module_tensors("encoder", self.encoder),
            **ckpt.module_tensors("dictionary", self.dictionary),
            **opt_tensors,
            **ckpt.rng_tensors(),
            "since_fired": self.since_fired,
        }
        scalars = {
            "scale": float(self.scale),
            "log_l1_scale": float(self.log_l1_scale),
            "log_l0": None if self._log_l0 is None else float(self._log_l0),
            "trend": float(self._trend),
        }
        checkpoint = ckpt.Checkpoint(
            state.step, state.flops, state.history, tensors, opt_json, scalars, self.run_config
        )
        ckpt.save_checkpoint(self.checkpoint, checkpoint)

    @property
    def run_config(self) -> dict[str, Any]:
        """The config a checkpoint records and a resume must match: the settings and the pair's sizes."""
        sizes = {"dim": self.dictionary.dim, "n_latents": self.dictionary.n_latents}
        return {**self.config.model_dump(), **sizes}

    def load(self) -> tuple[FitState, ckpt.Checkpoint]:
        """Restore the run from its checkpoint (checked: checksum, schema, config, step, shapes); returns the fit
        state and the checkpoint (its RNG states are for `ckpt.restore_rng` once `fit` has seeded)."""
        path = self.checkpoint
        checkpoint = ckpt.read_checkpoint(path, self.run_config, self.config.steps)
        ckpt.restore_module(path, checkpoint, "encoder", self.encoder)
        ckpt.restore_module(path, checkpoint, "dictionary", self.dictionary)
        ckpt.restore_optimiser(path, checkpoint, self.optimiser)
        since = checkpoint.tensors.get("since_fired")
        if since is None or tuple(since.shape) != (self.dictionary.n_latents,):
            raise SparseInferError(f"cannot resume from {path}: since_fired is missing or of the wrong shape")
        scalars = checkpoint.scalars
        try:
            self.scale = float(scalars["scale"])
            self.log_l1_scale = float(scalars.get("log_l1_scale", 0.0))
            self._log_l0 = None if scalars.get("log_l0") is None else float(scalars["log_l0"])
            self._trend = float(scalars.get("trend", 0.0))
        except (KeyError, TypeError, ValueError):
            raise SparseInferError(f"cannot resume from {path}: its scalars are missing or not numbers") from None
        self.since_fired = since.to(torch.long)
        self._apply_penalty()
        return FitState(checkpoint.step, checkpoint.flops, checkpoint.history), checkpoint

    def close(self) -> None:
        if self.auxk is not None:
            self.auxk.close()
