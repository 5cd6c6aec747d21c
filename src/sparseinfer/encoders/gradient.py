"""`gradient`: codes as free parameters, optimised per sample by Adam or SGD against a frozen dictionary.

This is the study's inference-time optimisation (and its sparse-coding inference). The objective is the study's loss
on the batch,

    F(s) = mean over (batch, dim) of (x - s D)^2  +  penalty * mean over (batch, n_latents) of |s|,

which separates over samples: sample b contributes (1 / B) [ ||x_b - s_b D||^2 / M + penalty ||s_b||_1 / N ].
Multiplying a sample's term by B M / 2 gives scikit-learn's per-sample convention 1/2 ||x - s D||^2 + lambda ||s||_1
(`sparse_encode`, and the `penalty` of ista/fista/lca) with lambda = penalty * M / (2 N): see `lasso_lambda`.
Because the loss is a batch mean (as in the study), gradients scale with 1 / B; Adam is invariant to that scale
except through its epsilon (1e-8), so codes depend very slightly on the batch size.

Parameterisations: "exp" writes s = exp(u) (codes stay positive, the study's choice), "relu" s = max(u, 0),
"none" s = u. Cold start: every code equals exp(`init_log`) (u = init_log for "exp"; the study used -10). Warm start
from codes s0: u = log(max(s0, eps)) for "exp", u = max(s0, eps) for "relu" (so that zero codes are not stuck at the
kink), u = s0 for "none"; `eps` (default 1e-6) is the value given to codes that are zero (or negative).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor, nn

from sparseinfer.encoders._proximal import relative_change
from sparseinfer.encoders._support import refit_with_sizes
from sparseinfer.encoders.base import Diagnostics, EncoderConfig, IterativeEncoder, configure, register
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import optimisation, proximal
from sparseinfer.flops.primitives import Flops
from sparseinfer.validation import check_count, check_finite, check_positive

StepCallback = Callable[[int, Tensor], None]


def study_objective(x: Tensor, codes: Tensor, atoms: Tensor, penalty: float) -> Tensor:
    """The study's loss: mean squared reconstruction error over all elements + penalty * mean |code|."""
    return (x - codes @ atoms).pow(2).mean() + penalty * codes.abs().mean()


def lasso_lambda(penalty: float, dim: int, n_latents: int) -> float:
    """The lambda of 1/2 ||x - s D||^2 + lambda ||s||_1 with the same minimisers as the study's loss: penalty M / 2N."""
    return penalty * dim / (2 * n_latents)


def study_penalty(lam: float, dim: int, n_latents: int) -> float:
    """Inverse of `lasso_lambda`: the study's penalty for a per-sample Lasso lambda."""
    return lam * 2 * n_latents / dim


@register
class GradientEncoder(IterativeEncoder):
    """Adam/SGD on the codes of each sample (see the module docstring for the objective and parameterisations).

    Stops after `max_iter` steps, or earlier when max over samples of ||s_t - s_{t-1}|| / ||s_t|| < `tol` (checked
    every step when tol > 0). `debias` then refits least squares on the support {s > `support_threshold`}
    (non-negative unless parameterisation is "none"). `on_step(step, codes)`, an attribute (a live hook, not a
    hyperparameter: set it after construction), is called every `log_every` steps with the current (detached)
    codes, for training curves.
    """

    name = "gradient"
    summary = "inference-time optimisation: Adam/SGD on (exp-parameterised) codes, reconstruction + L1 loss"

    class Config(EncoderConfig):
        optimiser: Literal["adam", "sgd"] = Field("adam", description="optimiser of the codes")
        lr: float = Field(1e-3, description="learning rate (> 0)")
        max_iter: StrictInt = Field(1000, description="optimisation steps (at most)")
        tol: float = Field(0.0, description="stop when the worst relative change is below (0: never)")
        penalty: float = Field(0.01, description="the study's L1 weight (on mean |s|)")
        parameterisation: Literal["exp", "relu", "none"] = Field("exp", description="s = exp(u), max(u, 0) or u")
        init_log: float = Field(-10.0, description="cold start: every code is exp(init_log)")
        eps: float = Field(1e-6, description="warm start: the value given to zero codes")
        debias: StrictBool = Field(False, description="refit least squares on the support found")
        support_threshold: float = Field(1e-3, description="with debias: codes above it form the support")
        log_every: StrictInt = Field(100, description="steps between on_step calls")

    def __init__(
        self,
        optimiser: str = "adam",
        lr: float = 1e-3,
        max_iter: int = 1000,
        tol: float = 0.0,
        penalty: float = 0.01,
        parameterisation: str = "exp",
        init_log: float = -10.0,
        eps: float = 1e-6,
        debias: bool = False,
        support_threshold: float = 1e-3,
        log_every: int = 100,
    ) -> None:
        c = configure(GradientEncoder, locals())
        super().__init__()
        self.optimiser = c.optimiser
        self.parameterisation = c.parameterisation
        self.lr = float(check_positive(c.lr, "lr"))
        self.max_iter = check_count(c.max_iter, "max_iter")
        self.tol = float(check_positive(c.tol, "tol", allow_zero=True))
        self.penalty = float(check_positive(c.penalty, "penalty", allow_zero=True))
        if not math.isfinite(c.init_log):
            raise SparseInferError(f"init_log must be finite, got {c.init_log}")
        self.init_log = c.init_log
        self.eps = float(check_positive(c.eps, "eps"))
        self.debias = c.debias
        self.support_threshold = float(check_positive(c.support_threshold, "support_threshold", allow_zero=True))
        self.log_every = check_count(c.log_every, "log_every")
        self.on_step: StepCallback | None = None
        self._warm = False
        self._support_sizes: list[int] | None = None
        self.config = c

    def codes_of(self, u: Tensor) -> Tensor:
        """Codes from the free parameters."""
        if self.parameterisation == "exp":
            return u.exp()
        if self.parameterisation == "relu":
            return torch.relu(u)
        return u

    def parameters_of(self, codes: Tensor | None, shape: tuple[int, int], like: Tensor) -> Tensor:
        """Free parameters for a warm start from `codes`, or the cold start (every code exp(init_log))."""
        if codes is None:
            if self.parameterisation == "exp":
                return like.new_full(shape, self.init_log)
            return like.new_full(shape, math.exp(self.init_log))
        codes = check_finite(codes, "warm-start codes").to(dtype=like.dtype, device=like.device)
        if self.parameterisation == "exp":
            return codes.clamp_min(self.eps).log()
        if self.parameterisation == "relu":
            return codes.clamp_min(self.eps)
        return codes.clone()

    def _snapshot(self, u: Tensor) -> Tensor:
        """Current codes, detached and not sharing memory with the parameters the optimiser updates in place."""
        return u.detach().clone() if self.parameterisation == "none" else self.codes_of(u.detach())

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:
        self._warm = init is not None
        u = nn.Parameter(self.parameters_of(init, (x.shape[0], atoms.shape[0]), x))
        if self.optimiser == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam([u], lr=self.lr)
        else:
            opt = torch.optim.SGD([u], lr=self.lr)
        codes = self._snapshot(u)
        change = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        steps = 0
        for steps in range(1, self.max_iter + 1):
            with torch.enable_grad():
                opt.zero_grad(set_to_none=True)
                study_objective(x, self.codes_of(u), atoms, self.penalty).backward()
            opt.step()
            previous, codes = codes, self._snapshot(u)
            if self.on_step is not None and steps % self.log_every == 0:
                self.on_step(steps, codes)
            if self.tol > 0:
                change = relative_change(codes, previous)
                if float(change.max()) < self.tol:
                    break
        stuck = int((change >= self.tol).sum()) if self.tol > 0 else 0
        worst = float(change.max()) if change.numel() else 0.0
        self.diagnostics = Diagnostics(
            iterations=steps, converged=stuck == 0, max_change=worst, n_unconverged=stuck, tested=self.tol > 0
        )
        if self.debias:
            kept = torch.where(codes.abs() > self.support_threshold, codes, 0.0)
            codes, self._support_sizes = refit_with_sizes(x, atoms, kept, self.parameterisation != "none")
        return codes

    def flops(self, batch: int, dim: int, n_latents: int) -> Flops:
        """FLOPs split into matmul and elementwise, for the steps (and refit) of the last call (max_iter before one)."""
        steps = self.max_iter if self.diagnostics is None else self.diagnostics.iterations
        total = optimisation.gradient(batch, dim, n_latents, steps, self.optimiser, self.parameterisation, self._warm)
        if self.debias:
            sizes = self._support_sizes if self._support_sizes is not None else [min(dim, n_latents)]
            total = total + proximal.refit(batch, dim, sizes, n_latents)
        return total

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        return self.flops(batch, dim, n_latents).total
