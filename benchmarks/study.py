"""Wall time of `sparseinfer reproduce` for a preset, with machine, date and versions.

    python benchmarks/study.py --preset quick --workers 2 --out results/bench-quick

Prints one JSON line (also appended to benchmarks/results.jsonl); docs/benchmarks.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import sparseinfer
from sparseinfer.experiments.reproduce import run_study


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "sparseinfer": sparseinfer.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--target", default="all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench-study"))
    args = parser.parse_args()
    start = time.perf_counter()
    results = run_study(args.target, args.preset, args.out, workers=args.workers, progress=False)
    record = {
        "benchmark": "reproduce",
        "preset": args.preset,
        "target": args.target,
        "workers": args.workers,
        "runs": len(results),
        "wall_s": round(time.perf_counter() - start, 1),
        "run_time_sum_s": round(float(results["wall_time_s"].sum()), 1),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **machine(),
    }
    print(json.dumps(record))
    with open(Path(__file__).with_name("results.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
