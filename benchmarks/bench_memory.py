"""Peak memory of the activation store's streaming loader, and of one training run on its stream, as the store grows.

    python benchmarks/bench_memory.py --shards 4,16,64

For each store size a synthetic store (float32 activations, `--contexts` contexts of `--context-length` tokens of
dimension `--dim` per shard) is written with `ActivationStore.append`, then a fresh child process measures
(1) one epoch of `iter_batches` (batch 4096, 4 shards in memory) and (2) `sparseinfer.training.fit` of a ReLU SAE
(learn_both, `--steps` minibatch steps) on the store's stream. Peaks: tracemalloc (Python allocations: shard
bytes, manifest) and the resident set's high-water mark (VmHWM, reset through /proc/self/clear_refs before each
phase; torch's tensors live there), given as growth over the RSS before the phase. Flat means: the peak does not
grow with the number of shards. Appends one JSON line to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import torch

from sparseinfer.data.store import ActivationStore, Manifest

MIB = 1024 * 1024


def write_store(folder: Path, shards: int, contexts: int, context_length: int, dim: int) -> None:
    """A synthetic store of `shards` shards, written with the store's own writer."""
    store = ActivationStore.create(folder, Manifest("synthetic", "resid", "float32", dim, context_length, bos=True))
    g = torch.Generator().manual_seed(0)
    for _ in range(shards):
        acts = torch.randn(contexts, context_length, dim, generator=g)
        store.append(acts, torch.randint(0, 1000, (contexts, context_length), generator=g))
    store.finish()


def _status(key: str) -> int:
    """A field of /proc/self/status in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak(phase: Callable[[], object]) -> dict[str, float]:
    """Run `phase`; its tracemalloc peak and its RSS high-water mark above the RSS it started from, in MiB."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = _status("VmRSS")
    tracemalloc.start()
    phase()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"tracemalloc_mib": traced / MIB, "rss_growth_mib": (_status("VmHWM") - start) / MIB}


def measure(folder: str, steps: int, batch_size: int) -> dict[str, dict[str, float]]:
    """In this process: the loader's epoch, then a training run on the stream."""
    from sparseinfer import Dictionary, create
    from sparseinfer.training.config import TrainConfig
    from sparseinfer.training.fit import fit
    from sparseinfer.training.regimes import get_regime

    store = ActivationStore.open(folder)
    torch.set_num_threads(2)

    def stream() -> int:
        return sum(b.shape[0] for b in store.iter_batches(batch_size, epochs=1, shards_in_memory=4))

    def train() -> None:
        dim = store.manifest.dim
        dictionary = Dictionary.random(4 * dim, dim, seed=0)
        encoder = create("relu", dim=dim, n_latents=4 * dim)
        config = TrainConfig(steps=steps, batch_size=batch_size, eval_every=steps, lr=1e-3)
        fit(encoder, dictionary, store.iter_batches(batch_size, shards_in_memory=4), get_regime("learn_both"), config)

    return {"loader": peak(stream), "training": peak(train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="4,16,64")
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.batch_size)))
        return
    shard_mib = args.contexts * args.context_length * args.dim * 4 / MIB
    rows = []
    for shards in [int(s) for s in args.shards.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            write_store(Path(tmp), shards, args.contexts, args.context_length, args.dim)
            cmd = [sys.executable, __file__, "--child", tmp, "--steps", str(args.steps)]
            cmd += ["--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append({"shards": shards, "store_mib": shards * shard_mib, **json.loads(out.stdout.splitlines()[-1])})
    print("| shards | store (MiB) | loader RSS growth | loader tracemalloc | training RSS | training tracemalloc |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, tr = r["loader"], r["training"]
        print(
            f"| {r['shards']} | {r['store_mib']:.0f} | {lo['rss_growth_mib']:.1f} | {lo['tracemalloc_mib']:.1f} "
            f"| {tr['rss_growth_mib']:.1f} | {tr['tracemalloc_mib']:.1f} |"
        )
    ratios = {
        phase: rows[-1][phase]["rss_growth_mib"] / max(rows[0][phase]["rss_growth_mib"], 1e-9)
        for phase in ("loader", "training")
    }
    print(f"peak RSS growth, largest store / smallest store: {ratios}")
    record = {
        "benchmark": "memory_store_stream",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "results": rows,
        "ratio_largest_to_smallest": ratios,
    }
    print(json.dumps(record))
    with open(Path(__file__).with_name("results.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
