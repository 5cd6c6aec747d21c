"""The jobs of a per-run or per-row study stage (train, evaluate) on single-threaded worker processes, several at once.

Why: at the quick preset's shapes one torch process gains almost nothing from a second thread (an evaluate row,
relu-l0_64 x fista on the 2-core box: calibration 24.5 s on 2 threads, 25.1 s on 1; the whole row 53 s vs 64 s),
so two processes on one thread each take two rows at once (each ~1.5x slower beside the other: the quick preset's
evaluate stage took 651 s on two processes against 793 s on one). Each job is a top-level function that writes its
own result files atomically, so an interrupted stage keeps every finished job whichever process did it; what all
jobs share (a model, a store, reference passes) is built once per process through `shared`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

import torch

Job = TypeVar("Job")
_SHARED: dict[Hashable, Any] = {}  # this process's shared state, per key


def shared(key: Hashable, build: Callable[[], Any]) -> Any:
    """The value `build()` made for `key` in this process (built on first use; cleared when the stage ends)."""
    if key not in _SHARED:
        _SHARED[key] = build()
    return _SHARED[key]


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_rows(
    label: str,
    jobs: list[tuple[int, Job]],
    total: int,
    row: Callable[[Job], tuple[str, Any]],
    workers: int = 1,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[int, Any]:
    """Call `row(job)` for every (number, job) of `jobs`, in the given order (put the longest first), numbered out
    of `total` in the progress lines; in this process when `workers` <= 1, else on `workers` spawned processes that
    split torch's threads between them (at least one each). `row` returns (the line said when it is done, with its
    time; a result), and this returns {number: result}. The first error stops the stage."""
    results: dict[int, Any] = {}
    try:
        if workers <= 1 or len(jobs) <= 1:
            for i, job in jobs:
                progress(f"{label} [{i}/{total}]: {_name(job)}")
                line, results[i] = row(job)
                progress(f"  {line}")
            return results
        threads = max(1, torch.get_num_threads() // workers)
        progress(f"{label}: {len(jobs)} jobs on {workers} worker processes ({threads} torch thread(s) each)")
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads,))
        try:
            numbers = {pool.submit(row, job): (i, job) for i, job in jobs}
            pending = set(numbers)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i, job = numbers[future]
                    line, results[i] = future.result()  # a job's error is raised here
                    progress(f"{label} [{i}/{total}]: {_name(job)}: {line}")
        finally:  # on an error the queued jobs are dropped and the running ones finish (and are saved)
            pool.shutdown(wait=True, cancel_futures=True)
        return results
    finally:
        _SHARED.clear()


def _name(job: Any) -> str:
    """A job's description for progress lines: its `name` when it has one, else its text."""
    return str(getattr(job, "name", job))
