"""Ray backend of the sweep runner: each run is one Ray task, on a local cluster or on an existing one (`address`).

Ray does the scheduling (CPUs/GPUs per run, retries of runs whose worker died); this module only submits the runs
and reports their outcomes to the runner. The run folders must lie on a filesystem every node sees (the path is
handed to the tasks as is). The resume and kill-safety guarantees are those of the process pool: a run writes its
`result.json` last and atomically, and a task that Ray retries after a worker died first checks that marker, so a
run that completed is never redone and one that did not is wiped and started afresh: nothing is duplicated.
Install with `pip install 'sparseinfer[distributed]'`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.runner import Execute, RunSpec, _execute_run, _Outcome, _record_failure
from sparseinfer.experiments.store import is_complete


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise SparseInferError("the Ray backend needs Ray: pip install 'sparseinfer[distributed]'") from exc
    return ray


def _ray_run(execute: Execute, spec: RunSpec, run_dir: str) -> _Outcome:
    """The body of one Ray task: idempotent, so Ray may retry it after its worker died."""
    import torch

    torch.set_num_threads(1)  # like a pool worker: the cluster provides the parallelism
    folder = Path(run_dir)
    if is_complete(folder):  # an earlier attempt finished before its worker died: keep it
        return _Outcome(spec.run_id, None)
    if folder.exists():  # a killed attempt left a partial folder: start afresh
        shutil.rmtree(folder)
    return _execute_run(execute, spec, folder)


def run_ray(
    execute: Execute,
    pending: Sequence[RunSpec],
    runs_dir: Path,
    record: Callable[[_Outcome], None],
    address: str | None = None,
    workers: int = 1,
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
                outcome = _record_failure(runs_dir / spec.run_id, spec.run_id, exc)
            record(outcome)
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
