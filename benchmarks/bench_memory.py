"""Peak memory of the activation store's streaming loader, and of one training run on its stream, as the store grows.

    python benchmarks/bench_memory.py --shards 4,16,64

For each store size a synthetic store (float32 activations, `--contexts` contexts of `--context-length` tokens of
dimension `--dim` per shard) is written with `ActivationStore.append`, then a fresh child process measures
(1) one epoch of `iter_batches` (batch 4096, 4 shards in memory) and (2) `sparseinfer.training.fit` of a ReLU SAE
(learn_both, `--steps` minibatch steps) on the store's stream. Peaks: tracemalloc (Python allocations: shard
bytes, manifest) and the resident set's high-water mark (VmHWM, reset through /proc/self/clear_refs before each
phase; torch's tensors live there), given as growth over the RSS before the phase. Flat means: the peak does not
grow with the number of shards. Appends one JSON line to benchmarks/results.jsonl.

    python benchmarks/bench_memory.py --train-store STORE --steps 50

instead runs short `sparseinfer train` runs on a real store (TopK k=32 at 8x, and every study preset at 22x), each
in a fresh process, and records each one's peak resident set (`wait4`'s ru_maxrss) and wall time: the numbers that
say whether a preset fits a 24 GB machine (issue 20: before the gradient-graph leak was fixed, they grew every step).
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


def run_peak(cmd: list[str]) -> dict[str, float]:
    """Run `cmd` as a child process; its peak resident set (from `wait4`'s rusage, MiB) and wall time (s)."""
    import os
    import time

    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    err = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-500:]}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - start}


def train_peaks(store: str, runs: dict[str, list[str]], steps: int) -> list[dict[str, object]]:
    """Peak RSS of `sparseinfer train` (a fresh process each) on `store` for each named set of training options."""
    rows = []
    for name, options in runs.items():
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "sparseinfer", "train", str(Path(out) / "run"), "--store", store]
            cmd += ["--steps", str(steps), "--no-resume", *options]
            rows.append({"run": name, "options": options, **run_peak(cmd)})
    return rows


TRAIN_RUNS = {
    "topk k=32 x8": ["--encoder", "topk", "--param", "k=32", "--expansion", "8"],
    "study-sae": ["--preset", "study-sae"],
    "study-mlp": ["--preset", "study-mlp"],
    "study-sparse-coding": ["--preset", "study-sparse-coding"],
    "study-lca": ["--preset", "study-lca"],
}


def main_train(store: str, steps: int, only: str | None) -> None:
    """`--train-store`: peak RSS of short `sparseinfer train` runs (every preset) on a real store; one JSON line."""
    runs = {k: v for k, v in TRAIN_RUNS.items() if only is None or k in only.split(",")}
    rows = train_peaks(store, runs, steps)
    print("| run | steps | peak RSS (MiB) | wall (s) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {steps} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |")
    record = {
        "benchmark": "memory_lm_train",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os_cpus()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "settings": {"store": store, "steps": steps},
        "results": rows,
    }
    print(json.dumps(record))
    with open(Path(__file__).with_name("results.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")


def os_cpus() -> int | None:
    """CPUs available to this process."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="4,16,64")
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--train-store", help="instead: peak RSS of short `sparseinfer train` runs on this store")
    parser.add_argument("--train-runs", help=f"comma-separated subset of {', '.join(TRAIN_RUNS)}")
    args = parser.parse_args()
    if args.train_store:
        main_train(args.train_store, args.steps, args.train_runs)
        return
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
