"""Pieces every benchmark shares: device sync, the matmul peak measured in the same run, and the record (machine,
versions) written as one JSON line to results.jsonl."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).with_name("results.jsonl")


def environment(device: str = "cpu") -> dict[str, Any]:
    """Date, machine (platform, cores, threads, load average, GPU name) and versions, for one result record."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def emit(record: dict[str, Any], save: bool = True) -> None:
    """Print `record` as one JSON line and (with `save`) append it to benchmarks/results.jsonl."""
    line = json.dumps(record)
    print(line)
    if save:
        with open(RESULTS, "a") as handle:
            handle.write(line + "\n")


def sync(device: str) -> None:
    """Wait for queued device work, so that wall-clock times cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(size: int, device: str, dtype: torch.dtype = torch.float32, repeats: int = 3) -> float:
    """FLOP/s of a dense size^3 matmul in `dtype` on `device`, best of `repeats` (after one warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
