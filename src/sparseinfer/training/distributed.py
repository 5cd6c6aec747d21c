"""Data-parallel training with `torch.distributed`: the one loop (`training.fit`) on every rank, gradients averaged.

Launch one process per device with `torchrun --nproc-per-node N your_script.py` (or `--nnodes` for several
machines); each process calls `fit_data_parallel` (synthetic data, any regime) or `train_from_store(...,
distributed=True)` (language-model activations, `sparseinfer train --distributed`). Every rank starts from rank 0's
parameters, reads its own data (its shard of the batches, or its own shards of an activation store), and after each
backward pass the gradients of the encoder and the dictionary are all-reduced and averaged, so every rank takes the
same optimiser step: with mean losses, N ranks with batches of B match one process with the N batches concatenated.
Step FLOPs are summed over ranks and recorded losses averaged, inside the loop (`FitHooks.reduce`), so a history or a
checkpoint means the same whatever the world size. Backend: gloo on CPU, nccl on CUDA; only rank 0 writes files.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class DataParallel:
    """The collectives a data-parallel run needs; `DataParallel()` (one process, no group) makes them identities,
    so callers write one code path for both."""

    rank: int = 0
    world: int = 1
    owner: bool = False  # this object created the process group, so `finish` destroys it

    @classmethod
    def join(cls, device: str | torch.device = "cpu") -> DataParallel:
        """Join torchrun's process group (see `init_process_group`), or use the one already initialised."""
        owner = not dist.is_initialized()
        rank, world = init_process_group(device)
        return cls(rank, world, owner)

    def finish(self) -> None:
        """Wait for every rank (so none exits while another still talks to it), then destroy the group if ours."""
        if self.world > 1:
            dist.barrier()
        if self.owner:
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: Tensor) -> Tensor:
        """Element-wise sum over ranks (a new tensor)."""
        out = tensor.clone()
        if self.world > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def max(self, tensor: Tensor) -> Tensor:
        """Element-wise maximum over ranks (a new tensor)."""
        out = tensor.clone()
        if self.world > 1:
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def gather(self, tensor: Tensor) -> Tensor:
        """Every rank's `tensor` concatenated along dim 0 in rank order (row counts may differ between ranks)."""
        if self.world == 1:
            return tensor
        rows = torch.tensor([tensor.shape[0]], device=tensor.device)
        counts = [torch.zeros_like(rows) for _ in range(self.world)]
        dist.all_gather(counts, rows)
        sizes = [int(c.item()) for c in counts]
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @torch.no_grad()
    def broadcast(self, modules: Iterable[torch.nn.Module]) -> None:
        """Copy rank 0's parameters and buffers to every rank, so all ranks start identical."""
        if self.world > 1:
            for module in modules:
                for tensor in itertools.chain(module.parameters(), module.buffers()):
                    dist.broadcast(tensor.data, src=0)

    @torch.no_grad()
    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce the gradients of `params` (one flat buffer, one collective) and divide by the world size.

        A parameter without a gradient on this rank counts as zero, so every rank joins the same collective."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        for p, g in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)

    def hooks(self, params: list[torch.nn.Parameter], hooks: FitHooks | None = None) -> FitHooks:
        """`hooks` with gradient averaging before their own `after_backward`, and FLOPs/loss reduced over ranks."""
        hooks = hooks or FitHooks()
        if self.world == 1:
            return hooks
        user_after_backward: Callable[[Dictionary], None] | None = hooks.after_backward

        def after_backward(d: Dictionary) -> None:
            self.average_gradients(params)
            if user_after_backward is not None:
                user_after_backward(d)

        return replace(hooks, after_backward=after_backward, reduce=self.sum)


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
    group = DataParallel(dist.get_rank(), dist.get_world_size())
    params, _ = learnable_parameters(encoder, dictionary, regime)
    group.broadcast([encoder, dictionary])
    state = FitState()
    mine = batches if sharded else shard(batches, group.rank, group.world)
    fit(
        encoder, dictionary, mine, regime, config, seed=seed, progress=progress and group.is_main,
        schedule=schedule, hooks=group.hooks(params, hooks), state=state,
    )  # fmt: skip
    return state.history, state
