"""Data-parallel training with `torch.distributed`: the one loop (`training.fit`) on every rank, gradients averaged.

Launch one process per device with `torchrun --nproc-per-node N your_script.py` (or `--nnodes` for several
machines); each process calls `fit_data_parallel`. Every rank starts from rank 0's parameters, streams its own
shard of the batches (batch i goes to rank i mod world size), and after each backward pass the gradients of the
encoder and the dictionary are all-reduced and averaged (`FitHooks.after_backward`), so every rank takes the same
optimiser step: with mean losses, N ranks with batches of B match one process with the N batches concatenated.
Backend: gloo on CPU, nccl on CUDA. The returned history sums `train_flops` over ranks and averages `loss`; only
rank 0 writes files (`is_main`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.fit import FitHooks, FitState, fit, learnable_parameters
from sparseinfer.training.regimes import Regime


def init_process_group(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join the process group that `torchrun` describes (env:// rendezvous) and return (rank, world size)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise SparseInferError("no torch.distributed environment: launch with torchrun --nproc-per-node N ...")
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on rank 0 (or when not distributed): the process that writes checkpoints and results."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shard(batches: Iterable[Tensor], rank: int, world_size: int) -> Iterator[Tensor]:
    """This rank's share of a stream of batches: batches rank, rank + world_size, rank + 2 world_size, ..."""
    if not 0 <= rank < world_size:
        raise SparseInferError(f"rank must lie in [0, {world_size}), got {rank}")
    return itertools.islice(iter(batches), rank, None, world_size)


@torch.no_grad()
def broadcast_from_main(modules: Iterable[torch.nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank, so all ranks start identical."""
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce the gradients of `params` (one flat buffer, one collective) and divide by the world size.

    A parameter without a gradient on this rank counts as zero, so every rank joins the same collective."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def _reduce_history(history: list[dict[str, float]], device: torch.device) -> None:
    """Sum `train_flops` over ranks and average `loss` (NaN at step 0 stays NaN), row by row, in place."""
    if not history:
        return
    flops = torch.tensor([int(row["train_flops"]) for row in history], dtype=torch.int64, device=device)
    loss = torch.tensor([float(row["loss"]) for row in history], dtype=torch.float64, device=device)
    dist.all_reduce(flops, op=dist.ReduceOp.SUM)
    dist.all_reduce(loss, op=dist.ReduceOp.SUM)
    loss /= dist.get_world_size()
    for row, f, value in zip(history, flops.tolist(), loss.tolist(), strict=True):
        row["train_flops"], row["loss"] = int(f), float(value)


def fit_data_parallel(
    encoder: Encoder,
    dictionary: Dictionary,
    batches: Iterable[Tensor],
    regime: Regime,
    config: TrainConfig,
    *,
    seed: int = 0,
    hooks: FitHooks | None = None,
    schedule: Callable[[int], tuple[float, float]] | None = None,
    progress: bool = False,
    sharded: bool = False,
) -> tuple[list[dict[str, float]], FitState]:
    """`fit` on every rank of the initialised process group, gradients averaged across ranks after each backward.

    `batches` is the global stream (this rank takes its shard) or, with `sharded=True`, already this rank's own
    batches. The user's `hooks.after_backward` runs on the averaged gradients. Returns the history (FLOPs summed
    over ranks, loss averaged) and the final state, whose `flops` is the total over ranks.
    """
    if not dist.is_initialized():
        raise SparseInferError("fit_data_parallel needs an initialised process group (see init_process_group)")
    if isinstance(batches, Tensor):
        raise SparseInferError("fit_data_parallel takes an iterable of batches, not one tensor")
    rank, world = dist.get_rank(), dist.get_world_size()
    hooks = hooks or FitHooks()
    params, _ = learnable_parameters(encoder, dictionary, regime)
    broadcast_from_main([encoder, dictionary])
    user_after_backward = hooks.after_backward

    def after_backward(d: Dictionary) -> None:
        average_gradients(params)
        if user_after_backward is not None:
            user_after_backward(d)

    state = FitState()
    mine = batches if sharded else shard(batches, rank, world)
    fit(
        encoder, dictionary, mine, regime, config, seed=seed, progress=progress and rank == 0, schedule=schedule,
        hooks=replace(hooks, after_backward=after_backward), state=state,
    )  # fmt: skip
    device = dictionary.atoms.device
    _reduce_history(state.history, device)
    total = torch.tensor([state.flops], dtype=torch.int64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    state.flops = int(total.item())
    return state.history, state
