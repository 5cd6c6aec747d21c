"""Where the runs of a sweep execute: one interface, three backends.

A backend is `backend(execute, pending, runs_dir, record, workers=..., address=...)`: it runs every pending spec into
`runs_dir/<run_id>/` through `run_folder.execute_run` and calls `record(outcome)` as each finishes. `serial` runs them
in this process, `process_pool` in "spawn" worker processes, `ray` as Ray tasks on a local or an existing cluster
(`pip install 'sparseinfer[distributed]'`). Resume and kill-safety are the run folder's: `result.json` last.
Every run computes on `RUN_THREADS` torch threads whatever the backend, so `workers` never changes a result (the
thread count changes the order of floating-point reductions). Pool workers die with the process that started them
(SIGKILL included), so a killed sweep never leaves workers running its queued runs.
The Ray run folders must lie on a filesystem every node sees. Ray does the scheduling and retries runs whose worker
died; a retried task first checks the completion marker, so a run that completed is never redone.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Protocol

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.files import is_complete
from sparseinfer.experiments.run_folder import Execute, Outcome, RunSpec, execute_run, record_failure

Record = Callable[[Outcome], None]
RUN_THREADS = 1  # torch threads of every run: the backends provide the parallelism
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Backend(Protocol):
    """Runs pending specs into their folders and reports each outcome."""

    def __call__(
        self, execute: Execute, pending: Sequence[RunSpec], runs_dir: Path, record: Record, workers: int = 1,
        address: str | None = None,
    ) -> None: ...  # fmt: skip


def serial(
    execute: Execute, pending: Sequence[RunSpec], runs_dir: Path, record: Record, workers: int = 1,
    address: str | None = None,
) -> None:  # fmt: skip
    """Each run in this process, one after the other."""
    for spec in pending:
        record(run_with_fixed_threads(execute, spec, runs_dir / spec.run_id))


@contextmanager
def fixed_threads(threads: int = RUN_THREADS) -> Iterator[None]:
    """Run the body on `threads` torch threads (numba's kernels follow torch's count), restoring the count after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_with_fixed_threads(execute: Execute, spec: RunSpec, run_dir: Path) -> Outcome:
    """`execute_run` on `RUN_THREADS` torch threads: what every backend runs, so results do not depend on it."""
    with fixed_threads():
        return execute_run(execute, spec, run_dir)


def die_with_parent(parent: int) -> None:
    """Make this process get SIGKILL when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), and exit now if the
    parent `parent` is already gone (it died before the request was made). Elsewhere only the check is made."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def _init_worker(parent: int) -> None:
    """Pool worker set-up: die with the sweep's process `parent`, and leave Ctrl-C to the parent, which stops the
    workers itself, so a Ctrl-C does not print one traceback per worker."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(executor: ProcessPoolExecutor) -> None:
    """Cancel queued runs and stop the workers now, without waiting for runs in progress (their folders have no
    result.json, so a resume redoes them). ProcessPoolExecutor has no public way to stop running tasks, hence the
    read of its `_processes`."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


def process_pool(
    execute: Execute, pending: Sequence[RunSpec], runs_dir: Path, record: Record, workers: int = 1,
    address: str | None = None,
) -> None:  # fmt: skip
    """Each run in a "spawn" worker process (`workers` of them, `RUN_THREADS` torch threads each)."""
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(pending)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    try:
        futures: dict[Future, RunSpec] = {
            executor.submit(run_with_fixed_threads, execute, spec, runs_dir / spec.run_id): spec for spec in pending
        }
        for future in as_completed(futures):
            spec = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # the worker died (e.g. out of memory): the run failed, retried on resume
                outcome = record_failure(runs_dir / spec.run_id, spec.run_id, exc)
            record(outcome)
    except BaseException:
        _stop_pool(executor)
        raise
    executor.shutdown(wait=True)


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise SparseInferError("the Ray backend needs Ray: pip install 'sparseinfer[distributed]'") from exc
    return ray


def _ray_run(execute: Execute, spec: RunSpec, run_dir: str) -> Outcome:
    """The body of one Ray task: idempotent, so Ray may retry it after its worker died."""
    folder = Path(run_dir)
    if is_complete(folder):  # an earlier attempt finished before its worker died: keep it
        return Outcome(spec.run_id, None)
    if folder.exists():  # a killed attempt left a partial folder: start afresh
        shutil.rmtree(folder)
    return run_with_fixed_threads(execute, spec, folder)


def ray(
    execute: Execute,
    pending: Sequence[RunSpec],
    runs_dir: Path,
    record: Record,
    workers: int = 1,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    max_retries: int = 3,
) -> None:
    """Run `pending` as Ray tasks into `runs_dir/<run_id>/`, calling `record(outcome)` as each finishes.

    Connects to `address` ("auto", "ray://host:port", "host:port"), or when None to the Ray session already
    initialised in this process, or else starts a local cluster with `workers` CPUs (stopped again at the end).
    A run whose worker dies is retried up to `max_retries` times, then recorded as failed (retried on resume).
    On Ctrl-C the queued and running tasks are cancelled and the interrupt propagates.
    """
    ray = _import_ray()
    if cpus_per_run <= 0 or gpus_per_run < 0:
        raise SparseInferError(f"cpus_per_run must be > 0 and gpus_per_run >= 0, got {cpus_per_run}, {gpus_per_run}")
    started = False
    if not ray.is_initialized():
        if address is None:
            # "local": a fresh cluster for this sweep, never one that happens to run on this machine already
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries)(_ray_run)
    runs_dir = Path(runs_dir).resolve()
    refs = {task.remote(execute, spec, str(runs_dir / spec.run_id)): spec for spec in pending}
    try:
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            spec = refs[done[0]]
            try:
                outcome = ray.get(done[0])
            except Exception as exc:  # the worker died more often than retried, or the task could not run
                outcome = record_failure(runs_dir / spec.run_id, spec.run_id, exc)
            record(outcome)
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


BACKENDS: dict[str, Backend] = {"serial": serial, "process": process_pool, "ray": ray}
