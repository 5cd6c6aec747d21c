"""Training on activations keeps its memory flat: no step may leave anything behind (issue 20: the radial projection of
the atoms' gradient ran under autograd and leaked each step's gradient and its graph, ~20 MB a step at 4,608 latents).

The run goes in a fresh subprocess (a clean heap; nothing else of the test session in its RSS) on a small store with
a wide dictionary, so that a leak of one latents x dim array per step (1 MiB here) dwarfs the allocator's noise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _stores import clustered_store

import sparseinfer as si
from sparseinfer.training.activations.callbacks import project_radial

DIM, LATENTS, BATCH, STEPS, FIRST = 64, 4096, 64, 100, 20
MIB = 1024 * 1024

CHILD = """
import json, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from sparseinfer.training.activations import LMTrainConfig, train_from_store
from sparseinfer.training.activations import callbacks

rss = {}
after = callbacks.Callbacks.after_step
def record(self, state, x, codes, x_hat):
    after(self, state, x, codes, x_hat)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss[state.step] = int(line.split()[1]) * 1024
callbacks.Callbacks.after_step = record
store, out, encoder, latents, batch, steps = sys.argv[1:7]
hparams = {"k": 8} if encoder == "topk" else {}
config = LMTrainConfig(encoder=encoder, hparams=hparams, expansion=int(latents) // 64, batch_size=int(batch),
                       steps=int(steps), eval_every=10, checkpoint_every=40, warmup_steps=5, l1_warmup_steps=5)
train_from_store(config, store, out, progress=False, resume=False)
print(json.dumps(rss))
"""


def rss_by_step(store: Path, out: Path, encoder: str) -> dict[int, int]:
    """Resident set size (bytes) after each step of a `train_from_store` run in a fresh Python process."""
    args = [str(store), str(out), encoder, str(LATENTS), str(BATCH), str(STEPS)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return {int(k): v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("encoder", ["relu", "topk"])
def test_training_memory_stays_flat_over_steps(tmp_path, encoder):
    store = clustered_store(tmp_path / "store", DIM, clusters=6, scale=3.0, noise=0.3, offset=2.0, shards=8)
    rss = rss_by_step(store, tmp_path / "run", encoder)
    # the old leak: a latents x dim float32 gradient (1 MiB here) and more per step; it grew 150-180 MiB over steps
    # 20..100 (the fixed code: 2-3 MiB); the bound is 16 MiB
    per_step = LATENTS * DIM * 4
    growth = max(rss[s] for s in range(FIRST, STEPS + 1)) - rss[FIRST]
    assert growth < 0.2 * per_step * (STEPS - FIRST), f"RSS grew {growth / MIB:.1f} MiB over steps {FIRST}..{STEPS}"


def test_radial_projection_leaves_no_graph_on_the_gradient():
    dictionary = si.Dictionary.random(12, 5, seed=0)
    (dictionary.atoms.sum(0) ** 2).sum().backward()
    project_radial(dictionary)
    grad = dictionary.atoms.grad
    assert grad.grad_fn is None and not grad.requires_grad
    torch.testing.assert_close((grad * dictionary.atoms).sum(1), torch.zeros(12), atol=1e-6, rtol=0)
