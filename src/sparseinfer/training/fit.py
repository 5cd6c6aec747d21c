"""`fit`: the ONE training loop, over (encoder, dictionary, data, regime). Every method of the study goes through it,
and so does training on language-model activations (`sparseinfer.training.activations`).

Data: an in-memory tensor (indexed into full or shuffled minibatches) or any iterable of batches (a stream from an
activation store). Options that the synthetic study leaves off: a `schedule(step) -> (lr multiplier, l1 multiplier)`,
bf16 autocast on CUDA, a `FitState` to resume from, and `FitHooks` (a replacement loss with its FLOPs, a gradient
hook between backward and the optimiser step, and an after-step hook for dead-latent tracking, resampling and
checkpoints).

The loop does not wait for the device between logging steps: inputs are checked once where they enter (a tensor up
front; each streamed batch's finiteness is accumulated on the device and read back with the loss at logging steps),
so the encoders' per-call finiteness check is skipped inside the loop (`validation.inputs_validated`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparseinfer.codes import Codes, SparseCodes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.progress import progress_bar
from sparseinfer.training.accounting import training_step_flops
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.regimes import Regime
from sparseinfer.validation import check_signals, inputs_validated

Evaluate = Callable[[], dict[str, float]]
Schedule = Callable[[int], tuple[float, float]]
LossFn = Callable[[Tensor, Codes, Tensor, float, Tensor | None], Tensor]


@dataclass
class FitState:
    """Where a run stands: steps done, cumulative training FLOPs and the history rows (a checkpoint saves these)."""

    step: int = 0
    flops: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class FitHooks:
    """Optional callbacks of `fit` (all None: the plain loop of the study).

    - `loss(x, codes, x_hat, l1, penalty)` replaces the regime's unsupervised loss; `extra_flops()` returns the FLOPs
      it (or anything else) spent on the last step beyond the regime's loss, added to the count.
    - `after_backward(dictionary)`: between backward and the optimiser step (e.g. project out radial gradients).
    - `after_step(state, x, codes, x_hat)`: after the step is counted and recorded (dead latents, checkpoints).
    - `reduce(tensor)`: the sum of a tensor over data-parallel workers (`training.distributed`); `fit` counts every
      worker's step FLOPs and records the workers' mean loss, so a history reads the same at any world size.
    """

    loss: LossFn | None = None
    extra_flops: Callable[[], int] | None = None
    after_backward: Callable[[Dictionary], None] | None = None
    after_step: Callable[[FitState, Tensor, Codes, Tensor | None], None] | None = None
    reduce: Callable[[Tensor], Tensor] | None = None


def _batches(n: int, batch_size: int | None, seed: int, device: torch.device | None = None) -> Iterator[Tensor | None]:
    """Index batches forever: None (full batch) or shuffled minibatches, reshuffled every epoch. The order is drawn
    on the host (the same at any device) and copied to `device` once an epoch without waiting for it."""
    if batch_size is None or batch_size >= n:
        while True:
            yield None
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen)
        if device is not None and device.type != "cpu":
            order = order.to(device, non_blocking=True)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def learnable_parameters(
    encoder: Encoder, dictionary: Dictionary, regime: Regime
) -> tuple[list[torch.nn.Parameter], bool]:
    """Parameters the regime trains; freezes the rest so autograd (and FLOP counts) skip them."""
    learn_encoder = regime.learn_encoder and encoder.trainable
    params = list(encoder.parameters()) if learn_encoder else []
    for p in dictionary.parameters():
        p.requires_grad_(regime.learn_dictionary)
        if regime.learn_dictionary:
            params.append(p)
    return params, learn_encoder


def _data(
    train_x: Tensor | Iterable[Tensor], train_codes: Tensor | None, batch_size: int | None, seed: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(signals, true codes or None) batches: indexed from a tensor, or taken from an iterable as they come."""
    if isinstance(train_x, Tensor):
        for index in _batches(train_x.shape[0], batch_size, seed, train_x.device):
            if index is None:
                yield train_x, train_codes
            else:
                yield train_x[index], None if train_codes is None else train_codes[index]
    else:
        for xb in train_x:
            yield xb, None


def fit(
    encoder: Encoder,
    dictionary: Dictionary,
    train_x: Tensor | Iterable[Tensor],
    regime: Regime,
    config: TrainConfig,
    *,
    train_codes: Tensor | None = None,
    evaluate: Evaluate | None = None,
    seed: int = 0,
    progress: bool = False,
    schedule: Schedule | None = None,
    hooks: FitHooks | None = None,
    state: FitState | None = None,
    optimiser: torch.optim.Optimizer | None = None,
    autocast: bool = False,
) -> list[dict[str, float]]:
    """Train what `regime` says on `train_x` (a tensor, or an iterable of batches) and return the history.

    Each history row holds `step`, cumulative `train_flops` (exactly the FLOP accounting's count of the steps run,
    plus the hooks' `extra_flops`), `loss` and whatever `evaluate()` returns. Iterative encoders in `learn_both` give
    dictionary learning: codes are inferred by the solver, the dictionary takes the gradient step.

    Resuming: pass the `state` (and the `optimiser`, with its state) of an interrupted run; the data batches it
    already consumed are skipped, so the run continues as if uninterrupted. `schedule(step)` (1-based) multiplies
    the learning rate and the L1 weight. `autocast` runs encoder, decoder and loss in bfloat16 on CUDA tensors.
    """
    if isinstance(train_x, Tensor):
        check_signals(train_x, dictionary.dim, dictionary.atoms.dtype)
        if regime.supervised and (train_codes is None or train_codes.shape != (train_x.shape[0], dictionary.n_latents)):
            raise SparseInferError(f"setting {regime.name!r} needs true codes of shape ({train_x.shape[0]}, N)")
    elif regime.supervised:
        raise SparseInferError(f"setting {regime.name!r} needs true codes, so its data must be one tensor")
    hooks = hooks or FitHooks()
    state = state if state is not None else FitState()
    torch.manual_seed(seed)
    params, learn_encoder = learnable_parameters(encoder, dictionary, regime)
    history = state.history

    def record(step: int, loss: float) -> None:
        history.append({"step": step, "train_flops": state.flops, "loss": loss, **(evaluate() if evaluate else {})})

    if not params or config.steps == 0:
        if state.step == 0:
            record(0, float("nan"))
        return history
    if optimiser is None:
        opt_cls = torch.optim.Adam if config.optimiser == "adam" else torch.optim.SGD
        optimiser = opt_cls(params, lr=config.lr)
    n_params = sum(p.numel() for p in params)
    batches = _data(train_x, train_codes, config.batch_size, seed)
    for _ in range(state.step):  # the batches an interrupted run already used
        next(batches, None)
    if state.step == 0:
        record(0, float("nan"))
    encoder.train()
    bar = progress_bar(total=config.steps, initial=state.step, enabled=progress, desc=f"train {encoder.name}")
    finite: Tensor | None = None  # streamed batches: all finite so far (on the device, read at logging steps)
    first_unchecked = state.step + 1
    while state.step < config.steps:
        step = state.step + 1
        batch = next(batches, None)
        if batch is None:
            raise SparseInferError(f"the training data ran out at step {step}; give more data (or epochs)")
        xb, cb = batch
        if not isinstance(train_x, Tensor):
            check_signals(xb, dictionary.dim, dictionary.atoms.dtype, finite=False)
            ok = torch.isfinite(xb).all()
            finite = ok if finite is None else finite & ok
        l1 = config.l1
        if schedule is not None:
            lr_mult, l1_mult = schedule(step)
            l1 = config.l1 * l1_mult
            for group in optimiser.param_groups:
                group["lr"] = config.lr * lr_mult
        use_autocast = autocast and xb.device.type == "cuda"
        context = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
        x_hat = None
        with context, inputs_validated():
            codes = encoder(xb, dictionary)
            if regime.supervised:
                loss = regime.loss(xb, codes, None, l1, true_codes=cb)
            else:
                penalty = encoder.sparsity_penalty(codes) if encoder.has_own_penalty() else None
                x_hat = dictionary.decode(codes)
                loss_fn = hooks.loss or (lambda x, c, xh, lam, pen: regime.loss(x, c, xh, lam, penalty=pen))
                loss = loss_fn(xb, codes, x_hat, l1, penalty)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if hooks.after_backward is not None:
            hooks.after_backward(dictionary)
        optimiser.step()
        regime.after_step(dictionary)
        sparse_k = codes.values.shape[1] if isinstance(codes, SparseCodes) else None
        step_flops = training_step_flops(encoder, dictionary, xb.shape[0], regime, n_params, learn_encoder, sparse_k)
        if hooks.extra_flops is not None:
            step_flops += hooks.extra_flops()
        if hooks.reduce is not None:
            step_flops = int(hooks.reduce(torch.tensor([step_flops], device=xb.device)).item())
        state.flops += step_flops
        state.step = step
        if step % config.eval_every == 0 or step == config.steps:
            if finite is not None and not bool(finite):
                raise SparseInferError(f"a training batch of steps {first_unchecked}-{step} contains NaN/Inf values")
            finite, first_unchecked = None, step + 1
            value = float(loss.detach())
            if hooks.reduce is not None:  # the workers' mean (all workers record at the same steps)
                total, count = hooks.reduce(torch.tensor([value, 1.0], dtype=torch.float64, device=xb.device)).tolist()
                value = total / count
            if not math.isfinite(value):
                raise SparseInferError(f"training diverged at step {step} (loss {value}); lower the learning rate")
            record(step, value)
        if hooks.after_step is not None:
            hooks.after_step(state, xb, codes, x_hat)
        bar.update(1)
    bar.close()
    encoder.eval()
    return history
