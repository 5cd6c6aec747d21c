"""Data-parallel SAE training on an activation store with a real `torchrun` (2 CPU processes, gloo on 127.0.0.1).

Each rank reads its own shards; the run must match one process trained on the two ranks' batches concatenated
(gradients, dead-latent counts, resampling, metrics), and a checkpoint written by 2 ranks must resume in 1 process.
Run as a script (`torchrun ... tests/test_distributed_lm.py STORE OUT`), this file is the worker of each rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _stores import clustered_store

from sparseinfer.data.store import ActivationStore
from sparseinfer.errors import SparseInferError
from sparseinfer.training.accounting import training_step_flops
from sparseinfer.training.activations import LMTrainConfig, load_run, train_on_activations
from sparseinfer.training.activations.train import store_stream
from sparseinfer.training.fit import learnable_parameters
from sparseinfer.training.regimes import get_regime

DIM, STEPS, BATCH, STOP = 16, 20, 64, 10
CONFIG = LMTrainConfig(
    encoder="topk", hparams={"k": 4}, expansion=4, steps=STEPS, batch_size=BATCH, lr=1e-2, warmup_steps=2,
    l1_warmup_steps=2, dead_latents="resample", resample_every=5, dead_tokens=128, checkpoint_every=STOP,
    eval_every=5, seed=4,
)  # fmt: skip


class Interrupted(Exception):
    pass


def interrupted_after(batches, n):
    for i, xb in enumerate(batches):
        if i == n:
            raise Interrupted
        yield xb


def worker(store: Path, out: Path) -> None:
    """Rank r: one full run through the public entry point, then one run interrupted after STOP steps."""
    from sparseinfer.training.activations import train_from_store
    from sparseinfer.training.distributed import DataParallel

    torch.set_num_threads(1)
    group = DataParallel.join("cpu")  # owns the group: train_from_store below joins it and leaves it open
    train_from_store(CONFIG, store, out / "full", progress=False, distributed=True)
    sample, batches = store_stream(ActivationStore.open(store), CONFIG, group.rank, group.world)
    try:
        train_on_activations(
            CONFIG, interrupted_after(batches, STOP), out / "interrupted", DIM, sample, progress=False, group=group
        )
    except Interrupted:
        pass
    group.finish()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written. torch 2.13's gloo teardown at interpreter exit aborts now and then (about 1 launch in
    # 12 here, "terminate called without an active exception", no Python frame) once an exception has unwound a
    # training loop; skipping the teardown keeps the exit code about this test, not about that.
    os._exit(0)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Four shards of clustered random 'activations' (no model needed)."""
    return clustered_store(tmp_path_factory.mktemp("store"), DIM, clusters=24, scale=2.0, noise=0.2, offset=1.0)


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp_lm")
    proc = torchrun(__file__, str(store), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def reference_stream(store: Path) -> tuple[torch.Tensor, object]:
    """What one process sees: both ranks' samples, and each step the two ranks' batches concatenated."""
    st = ActivationStore.open(store)
    (s0, b0), (s1, b1) = (store_stream(st, CONFIG, r, 2) for r in range(2))
    return torch.cat([s0, s1]), (torch.cat(pair) for pair in zip(b0, b1, strict=False))


def assert_same_model(a: Path, b: Path, tol: float) -> None:
    enc_a, dict_a, _ = load_run(a)
    enc_b, dict_b, _ = load_run(b)
    gap = (dict_a.atoms - dict_b.atoms).abs().max().item()
    print(f"max |atoms gap| {a.name} vs {b.name}: {gap:.2e}")
    assert gap < tol, gap
    assert (dict_a.bias - dict_b.bias).abs().max().item() < tol
    for name, value in enc_a.state_dict().items():
        assert (value - enc_b.state_dict()[name]).abs().max().item() < tol, name


def test_two_ranks_match_one_process_on_the_concatenated_batches(runs, store, tmp_path):
    sample, batches = reference_stream(store)
    single = train_on_activations(CONFIG, batches, tmp_path / "single", DIM, sample, progress=False)
    assert_same_model(runs / "full", tmp_path / "single", 1e-4)
    info = json.loads((runs / "full" / "run.json").read_text())
    assert info["world_size"] == 2 and single["world_size"] == 1
    assert sum(r["resampled"] for r in info["history"]) > 0  # resampling happened, identically on both ranks
    for row, ref in zip(info["history"], single["history"], strict=True):
        assert row["step"] == ref["step"] and row["tokens"] == ref["tokens"]
        for key in ("loss", "fvu", "l0", "dead_fraction"):
            assert abs(row[key] - ref[key]) < 1e-4 * max(1.0, abs(ref[key])), (key, row, ref)
        assert row["resampled"] == ref["resampled"]
    # FLOPs: every rank's work is counted (the replicated optimiser update twice), the same at every world size
    enc, dictionary, _ = load_run(runs / "full")
    regime = get_regime("learn_both")
    params, learn_encoder = learnable_parameters(enc, dictionary, regime)
    n_params = sum(p.numel() for p in params)

    def step(batch: int) -> int:
        return training_step_flops(enc, dictionary, batch, regime, n_params, learn_encoder, CONFIG.hparams["k"])

    assert info["train_flops"] == STEPS * 2 * step(BATCH // 2)
    assert single["train_flops"] == STEPS * step(BATCH)


def test_checkpoint_of_two_ranks_resumes_in_one_process(runs, store):
    folder = runs / "interrupted"
    assert (folder / "checkpoint.safetensors").exists() and not (folder / "run.json").exists()
    sample, batches = reference_stream(store)
    info = train_on_activations(CONFIG, batches, folder, DIM, sample, progress=False)
    assert [r["step"] for r in info["history"]] == [5, 10, 15, 20]
    assert_same_model(folder, runs / "full", 1e-4)


def test_cli_train_distributed_under_torchrun(store, tmp_path):
    cli = str(Path(sys.executable).with_name("sparseinfer"))
    ranks = torchrun("--no-python", cli, "train", str(tmp_path / "cli"), "--store", str(store), "--distributed",
                     "--steps", "4", "--batch-size", "32", "--expansion", "2")  # fmt: skip
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert ranks.stdout.count("tokens/s") == 1  # one summary, from rank 0
    info = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert info["world_size"] == 2 and info["history"][-1]["step"] == 4


def test_bad_splits_and_missing_store_are_clear_errors(store, tmp_path):
    st = ActivationStore.open(store)
    with pytest.raises(SparseInferError, match="4 shards for 8 ranks"):
        store_stream(st, CONFIG, 0, 8)
    with pytest.raises(SparseInferError, match="does not split evenly"):
        store_stream(st, CONFIG.model_copy(update={"batch_size": 63}), 0, 2)
    proc = subprocess.run([sys.executable, "-m", "sparseinfer", "train", str(tmp_path / "x"), "--distributed"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "--store" in proc.stderr + proc.stdout


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
