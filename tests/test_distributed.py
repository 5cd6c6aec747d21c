"""Data-parallel training with a real `torchrun` (2 CPU processes, gloo on 127.0.0.1): the dictionary matches one
process trained on the concatenated batches, both ranks end identical, FLOPs are summed over ranks.

Run as a script (`torchrun ... tests/test_distributed.py OUT`), this file is the worker of each rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import create
from sparseinfer.errors import SparseInferError
from sparseinfer.training.accounting import training_step_flops
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.distributed import fit_data_parallel, init_process_group, shard
from sparseinfer.training.fit import fit, learnable_parameters
from sparseinfer.training.regimes import get_regime

DIM, N_LATENTS, HALF, STEPS, SEED = 8, 16, 16, 12, 3
CONFIG = TrainConfig(steps=STEPS, lr=1e-2, l1=0.01, eval_every=4)


def problem():
    """Encoder, dictionary and the stream of half batches (rank r gets half batches r, r + 2, ...)."""
    gen = torch.Generator().manual_seed(SEED)
    atoms = torch.randn(N_LATENTS, DIM, generator=gen)
    n = 2 * STEPS * HALF
    codes = torch.rand(n, N_LATENTS, generator=gen) * (torch.rand(n, N_LATENTS, generator=gen) < 0.2)
    x = codes @ torch.nn.functional.normalize(atoms, dim=1) + 0.01 * torch.randn(n, DIM, generator=gen)
    torch.manual_seed(SEED)
    encoder = create("relu", dim=DIM, n_latents=N_LATENTS)
    dictionary = Dictionary(torch.randn(N_LATENTS, DIM, generator=gen))
    return encoder, dictionary, list(x.split(HALF))


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    rank, world = init_process_group("cpu")
    encoder, dictionary, halves = problem()
    if rank == 1:  # a different start on rank 1: the broadcast from rank 0 must make them equal
        with torch.no_grad():
            dictionary.atoms.add_(1.0)
    history, state = fit_data_parallel(encoder, dictionary, halves, get_regime("learn_both"), CONFIG, seed=SEED)
    torch.save(
        {"atoms": dictionary.atoms.detach(), "encoder": encoder.state_dict(), "history": history, "flops": state.flops,
         "world": world},
        out / f"rank{rank}.pt",
    )  # fmt: skip
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), __file__, str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_ranks_match_one_process_on_concatenated_batches(ranks):
    encoder, dictionary, halves = problem()
    joined = [torch.cat(halves[i : i + 2]) for i in range(0, len(halves), 2)]
    history = fit(encoder, dictionary, iter(joined), get_regime("learn_both"), CONFIG, seed=SEED)
    gap = (ranks[0]["atoms"] - dictionary.atoms.detach()).abs().max().item()
    print(f"max |atoms gap| 2 ranks vs 1 process: {gap:.2e}")
    assert gap < 1e-5, gap
    start = problem()[1].atoms
    assert (dictionary.atoms.detach() - start).abs().max().item() > 1e-2  # it did train
    for name, value in encoder.state_dict().items():
        assert torch.allclose(ranks[0]["encoder"][name], value, atol=1e-5, rtol=0), name
    # FLOPs summed over ranks: each rank ran STEPS steps on half batches, optimiser update included (the one part
    # that data parallelism replicates, so the total exceeds the single process's count)
    regime = get_regime("learn_both")
    n_params = sum(p.numel() for p in learnable_parameters(encoder, dictionary, regime)[0])
    per_rank = STEPS * training_step_flops(encoder, dictionary, HALF, regime, n_params, True, None)
    assert ranks[0]["flops"] == ranks[1]["flops"] == 2 * per_rank
    assert ranks[0]["history"][-1]["train_flops"] == 2 * per_rank
    assert history[-1]["train_flops"] < 2 * per_rank
    assert abs(ranks[0]["history"][-1]["loss"] - history[-1]["loss"]) < 1e-4


def test_ranks_end_identical(ranks):
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert torch.equal(ranks[0]["atoms"], ranks[1]["atoms"])
    for name, value in ranks[0]["encoder"].items():
        assert torch.equal(value, ranks[1]["encoder"][name]), name


def test_shard_and_errors(monkeypatch):
    assert list(shard(range(7), 1, 3)) == [1, 4]
    with pytest.raises(SparseInferError, match="rank"):
        shard(range(3), 2, 2)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SparseInferError, match="torchrun"):
        init_process_group()
    encoder, dictionary, halves = problem()
    with pytest.raises(SparseInferError, match="process group"):
        fit_data_parallel(encoder, dictionary, halves, get_regime("learn_both"), CONFIG)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
