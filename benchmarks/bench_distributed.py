"""Data-parallel training throughput: `sparseinfer train` in 1 process vs 2 `torchrun` ranks on the same store.

    python benchmarks/bench_distributed.py STORE --steps 60 --batch-size 1024 --expansion 8 --k 32

STORE comes from `sparseinfer harvest` (at least 2 shards: each rank reads its own). Three launches of the real CLI
on the same data and config (TopK SAE): one process with 1 thread, one process with all threads (torch's default),
and `torchrun --nproc-per-node 2` with 1 thread per rank (gloo). Tokens/s is the run's own figure (whole run, start-up
excluded: `run.json`'s `tokens_per_second`); wall time includes the launches. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def launch(label: str, prefix: list[str], threads: int, args: argparse.Namespace, out: Path) -> dict:
    """Run one `sparseinfer train` launch and return its throughput, wall time and last metrics."""
    cli = str(Path(sys.executable).with_name("sparseinfer"))
    folder = out / label
    cmd = [*prefix, cli, "train", str(folder), "--store", args.store, "--encoder", "topk", "--param", f"k={args.k}",
           "--expansion", str(args.expansion), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--seed", "0", "--no-resume"]  # fmt: skip
    if prefix:
        cmd.append("--distributed")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
    info = json.loads((folder / "run.json").read_text())
    last = info["history"][-1]
    return {"launch": label, "tokens_per_s": info["tokens_per_second"], "wall_s": wall, "fvu": last["fvu"],
            "dead_fraction": last["dead_fraction"], "world_size": info["world_size"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(port), "--no-python"]  # fmt: skip
    cores = os.cpu_count() or 1
    out = Path(tempfile.mkdtemp())
    try:
        rows = [
            launch("1 process x 1 thread", [], 1, args, out),
            launch(f"1 process x {cores} threads", [], cores, args, out),
            launch("2 ranks x 1 thread (torchrun, gloo)", torchrun, 1, args, out),
        ]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    base = rows[0]["tokens_per_s"]
    print("| launch | tokens/s | vs 1 x 1 | wall (s) | final FVU | dead fraction |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['launch']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | {r['wall_s']:.1f} "
              f"| {r['fvu']:.4f} | {r['dead_fraction']:.3f} |")  # fmt: skip
    record = {"bench": "distributed_train", "date": datetime.date.today().isoformat(), "machine": platform.machine(),
              "cores": cores, "torch": torch.__version__, "load": os.getloadavg(), **vars(args),
              "rows": rows}  # fmt: skip
    print(json.dumps(record))


if __name__ == "__main__":
    main()
