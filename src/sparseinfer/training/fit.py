"""`fit`: the ONE training loop, over (encoder, dictionary, data, regime). Every method of the study goes through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sparseinfer.codes import SparseCodes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.training.accounting import training_step_flops
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.regimes import Regime
from sparseinfer.validation import check_signals

Evaluate = Callable[[], dict[str, float]]


def _batches(n: int, batch_size: int | None, seed: int) -> Iterator[Tensor | None]:
    """Index batches forever: None (full batch) or shuffled minibatches, reshuffled every epoch."""
    if batch_size is None or batch_size >= n:
        while True:
            yield None
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def _learnable(encoder: Encoder, dictionary: Dictionary, regime: Regime) -> tuple[list[torch.nn.Parameter], bool]:
    """Parameters the regime trains; freezes the rest so autograd (and FLOP counts) skip them."""
    learn_encoder = regime.learn_encoder and encoder.trainable
    params = list(encoder.parameters()) if learn_encoder else []
    for p in dictionary.parameters():
        p.requires_grad_(regime.learn_dictionary)
        if regime.learn_dictionary:
            params.append(p)
    return params, learn_encoder


def fit(
    encoder: Encoder,
    dictionary: Dictionary,
    train_x: Tensor,
    regime: Regime,
    config: TrainConfig,
    *,
    train_codes: Tensor | None = None,
    evaluate: Evaluate | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train what `regime` says on `train_x` and return the history: one row per evaluation.

    Each row holds `step`, cumulative `train_flops` (exactly the FLOP accounting's count of the steps run),
    `loss` and whatever `evaluate()` returns. Iterative encoders in `learn_both` give dictionary learning: codes are
    inferred by the solver, the dictionary takes the gradient step.
    """
    check_signals(train_x, dictionary.dim, dictionary.atoms.dtype)
    if regime.supervised and (train_codes is None or train_codes.shape != (train_x.shape[0], dictionary.n_latents)):
        raise SparseInferError(f"setting {regime.name!r} needs true codes of shape ({train_x.shape[0]}, N)")
    torch.manual_seed(seed)
    params, learn_encoder = _learnable(encoder, dictionary, regime)
    history: list[dict[str, float]] = []

    def record(step: int, flops: int, loss: float) -> None:
        history.append({"step": step, "train_flops": flops, "loss": loss, **(evaluate() if evaluate else {})})

    if not params or config.steps == 0:
        record(0, 0, float("nan"))
        return history
    opt_cls = torch.optim.Adam if config.optimiser == "adam" else torch.optim.SGD
    optimiser = opt_cls(params, lr=config.lr)
    n_params = sum(p.numel() for p in params)
    batches = _batches(train_x.shape[0], config.batch_size, seed)
    record(0, 0, float("nan"))
    flops = 0
    encoder.train()
    for step in tqdm(range(1, config.steps + 1), disable=not progress, desc=f"train {encoder.name}", leave=False):
        index = next(batches)
        xb = train_x if index is None else train_x[index]
        codes = encoder(xb, dictionary)
        if regime.supervised:
            cb = train_codes if index is None else train_codes[index]
            loss = regime.loss(xb, codes, None, config.l1, true_codes=cb)
        else:
            penalty = encoder.sparsity_penalty(codes) if encoder.has_own_penalty() else None
            loss = regime.loss(xb, codes, dictionary.decode(codes), config.l1, penalty=penalty)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        regime.after_step(dictionary)
        sparse_k = codes.values.shape[1] if isinstance(codes, SparseCodes) else None
        flops += training_step_flops(encoder, dictionary, xb.shape[0], regime, n_params, learn_encoder, sparse_k)
        if step % config.eval_every == 0 or step == config.steps:
            value = float(loss.detach())
            if not torch.isfinite(loss):
                raise SparseInferError(f"training diverged at step {step} (loss {value}); lower the learning rate")
            record(step, flops, value)
    encoder.eval()
    return history
