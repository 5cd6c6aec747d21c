"""The sweep runner: many runs, each into its own folder `out_dir/runs/<run_id>/`, on one of `backends`.

Resumable by construction: a run is complete iff its `result.json` exists, and that file is written last and
atomically, so after Ctrl-C or `kill -9` every folder is either complete (skipped on resume, never
redone) or not (wiped and redone). `out_dir/sweep.yaml` records the run ids and configs so that a resume can check
it continues the same sweep; `out_dir/results.parquet` gathers the complete runs at the end.
"""

from __future__ import annotations

import pickle
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.backends import BACKENDS
from sparseinfer.experiments.files import RUNS_DIR, gather_results, is_complete, read_yaml, to_plain, write_yaml
from sparseinfer.experiments.run_folder import ERROR_FILE, Execute, Outcome, RunSpec, one_line
from sparseinfer.locks import locks_folder
from sparseinfer.progress import progress_bar

SWEEP_FILE = "sweep.yaml"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}")
__all__ = ["RunFailureWarning", "RunSpec", "SweepInterrupted", "failure_summary", "run_sweep"]


class SweepInterrupted(KeyboardInterrupt):
    """Raised by `run_sweep` on Ctrl-C, after pending runs were cancelled and workers stopped. It is a
    KeyboardInterrupt (so it stops callers like Ctrl-C does); its message says how many runs completed and how to
    resume. Runs that were in progress have no result.json, so a resume redoes them."""


class RunFailureWarning(UserWarning):
    """Issued by `run_sweep` when some runs raised: how many, and the first message. Their tracebacks are in
    `runs/<run_id>/error.txt`; a resumed sweep retries them."""


def failure_summary(failures: Mapping[str, str], total: int, out_dir: Path, names: int = 5) -> str:
    """One line on the failed runs of a sweep: how many, which (the first `names` ids), where the tracebacks are,
    and the first failure's message."""
    ids = list(failures)
    shown = ", ".join(ids[:names]) + (f" and {len(ids) - names} more" if len(ids) > names else "")
    return (
        f"{len(ids)} of {total} run(s) failed: {shown} (tracebacks in {Path(out_dir) / RUNS_DIR}/<run_id>/"
        f"{ERROR_FILE}; --resume retries them); first: {ids[0]}: {failures[ids[0]]}"
    )


def _check_specs(specs: Sequence[RunSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        if not isinstance(spec, RunSpec):
            raise SparseInferError(f"sweep entries must be RunSpec, got {type(spec).__name__}")
        if not isinstance(spec.run_id, str) or not _RUN_ID.fullmatch(spec.run_id):
            raise SparseInferError(
                f"run_id {spec.run_id!r} is not filesystem-safe: use letters, digits and . _ - = + "
                "(at most 200 characters, starting with a letter or digit)"
            )
        key = spec.run_id.casefold()  # case-insensitive file systems would merge 'A' and 'a'
        if key in seen:
            raise SparseInferError(
                f"duplicated run_id {spec.run_id!r} (clashes with {seen[key]!r}); ids must be unique"
            )
        seen[key] = spec.run_id
        if not isinstance(spec.config, Mapping):
            raise SparseInferError(f"config of run {spec.run_id!r} must be a dict, got {type(spec.config).__name__}")


def _check_picklable(execute: Execute, specs: Sequence[RunSpec]) -> None:
    """Worker processes receive `execute` and each config by pickling: fail early with a clear message."""
    try:
        pickle.dumps(execute)
    except Exception as exc:
        raise SparseInferError(
            f"execute must be a top-level (picklable) function when workers > 1: {one_line(exc)}"
        ) from exc
    for spec in specs:
        try:
            pickle.dumps(spec.config)
        except Exception as exc:
            raise SparseInferError(f"config of run {spec.run_id!r} cannot be pickled: {one_line(exc)}") from exc


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True)


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    """A short description of where two plain configs first differ, e.g. "lr: 0.001 -> 0.01"."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if key not in old or key not in new or _dump(old[key]) != _dump(new[key]):
                where = f"{path}.{key}" if path else str(key)
                if key not in old:
                    return f"{where}: (absent) -> {new[key]!r}"
                if key not in new:
                    return f"{where}: {old[key]!r} -> (absent)"
                return _first_difference(old[key], new[key], where)
    return f"{path or 'config'}: {old!r} -> {new!r}"


def _stored_runs(sweep_file: Path) -> list[dict]:
    stored = read_yaml(sweep_file)
    runs = stored.get("runs") if isinstance(stored, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "run_id" in r for r in runs):
        raise SparseInferError(f"corrupt sweep file {sweep_file}: expected a 'runs' list of run_id/config entries")
    return runs


def _prepare(out_dir: Path, specs: Sequence[RunSpec], resume: bool) -> None:
    """Refuse to mix sweeps, check a resume continues the same sweep, and write `sweep.yaml`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SparseInferError(f"output folder {out_dir} exists and is not a folder")
    runs_dir = out_dir / RUNS_DIR
    existing = [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.is_dir() else []
    if existing and not resume:
        raise SparseInferError(
            f"{runs_dir} already holds {len(existing)} run folder(s); pass --resume to continue that sweep "
            "or choose a new output folder"
        )
    entries = []
    for spec in specs:
        try:
            entries.append({"run_id": spec.run_id, "config": to_plain(dict(spec.config))})
        except SparseInferError as exc:
            raise SparseInferError(f"config of run {spec.run_id!r}: {exc}") from exc
    sweep_file = out_dir / SWEEP_FILE
    if existing and not sweep_file.is_file():
        raise SparseInferError(f"cannot resume: {runs_dir} holds run folders but {sweep_file} is missing")
    if resume and sweep_file.is_file():
        stored = _stored_runs(sweep_file)
        by_id = {r["run_id"]: r.get("config") for r in stored}
        for entry in entries:
            old = by_id.get(entry["run_id"], entry["config"])
            if _dump(old) != _dump(entry["config"]):
                raise SparseInferError(
                    f"run {entry['run_id']!r} in {out_dir} was started with a different config "
                    f"({_first_difference(old, entry['config'])}); choose a new output folder for a new sweep"
                )
        new_ids = {e["run_id"] for e in entries}
        entries += [r for r in stored if r["run_id"] not in new_ids]  # keep the record of earlier runs
    write_yaml(sweep_file, {"runs": entries})


@locks_folder("out_dir", "sweep")
def run_sweep(
    specs: Sequence[RunSpec],
    out_dir: Path,
    execute: Execute,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
    backend: str = "process",
    ray_address: str | None = None,
) -> pd.DataFrame:
    """Run every spec into `out_dir/runs/<run_id>/` and return (and write) `out_dir/results.parquet`.

    `execute(config, run_dir)` does one run: it writes its own files into `run_dir` and returns a dict of results;
    the runner adds `wall_time_s` and `run_id` and writes `result.json`, the completion marker. A run that raises
    gets `error.txt` (its traceback), the others go on, and a `RunFailureWarning` reports the failures at the end
    (also in `df.attrs["failed_runs"]`: run id -> one-line reason); the table holds the successful runs. With
    `resume=True`, complete runs are skipped and incomplete or failed ones are wiped and redone; without it, an
    `out_dir` that already holds runs is refused. `workers > 1` runs in a "spawn" process pool (`execute` must then
    be a top-level function) whose workers die with this process. Every run, in a worker or here, computes on
    `backends.RUN_THREADS` torch threads, so `workers` does not change results. Ctrl-C cancels pending runs, stops
    the workers and raises `SweepInterrupted`.
    `backend="ray"` runs each spec as a Ray task instead (`experiments.backends`): on the cluster at
    `ray_address`, or on a local one with `workers` CPUs; same folders, same resume and kill-safety.
    """
    specs = list(specs)
    out_dir = Path(out_dir)
    _check_specs(specs)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise SparseInferError(f"workers must be a positive integer, got {workers!r}")
    if backend not in BACKENDS:
        raise SparseInferError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if workers > 1 or backend == "ray":
        _check_picklable(execute, specs)
    _prepare(out_dir, specs, resume)

    runs_dir = out_dir / RUNS_DIR
    pending = []
    for spec in specs:
        run_dir = runs_dir / spec.run_id
        if is_complete(run_dir):
            continue
        if run_dir.exists():  # interrupted or failed earlier: start it afresh
            shutil.rmtree(run_dir)
        pending.append(spec)

    failures: dict[str, str] = {}
    # a bar on a terminal, plain lines in a batch job's log (`progress.progress_bar`)
    bar = progress_bar(total=len(specs), initial=len(specs) - len(pending), desc="runs", enabled=progress)

    def record(outcome: Outcome) -> None:
        if outcome.error is not None:
            failures[outcome.run_id] = outcome.error
            bar.set_postfix_str(f"failed={len(failures)}")
        bar.update(1)

    try:
        if pending:
            run = BACKENDS[backend] if backend != "process" or workers > 1 else BACKENDS["serial"]
            run(execute, pending, runs_dir, record, workers=workers, address=ray_address)
    except KeyboardInterrupt:
        done = sum(is_complete(runs_dir / spec.run_id) for spec in specs)
        raise SweepInterrupted(
            f"sweep interrupted: {done} of {len(specs)} run(s) complete in {out_dir}; "
            "run the same sweep again with --resume (resume=True) to finish the rest"
        ) from None
    finally:
        bar.close()

    table = gather_results(out_dir)
    table.attrs["failed_runs"] = failures
    if failures:
        warnings.warn(failure_summary(failures, len(specs), out_dir), RunFailureWarning, stacklevel=2)
    return table
