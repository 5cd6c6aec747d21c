"""One run into its own folder: the spec, the outcome, and the body every backend executes (`execute_run`).

A run is complete iff its `result.json` exists; that file is written last and atomically, so after Ctrl-C or
`kill -9` a folder is either complete or not (wiped and redone by a resume).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.files import RESULT_FILE, write_json, write_text

ERROR_FILE = "error.txt"

Execute = Callable[[dict, Path], dict]


@dataclass
class RunSpec:
    """One run of a sweep: a unique, filesystem-safe id (its folder name) and the config handed to `execute`."""

    run_id: str
    config: dict


@dataclass
class Outcome:
    """What became of one run: completed (error None) or failed, with a one-line reason."""

    run_id: str
    error: str | None  # one line naming the failure; None when the run completed


def one_line(exc: BaseException) -> str:
    """The exception's type and first message line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def record_failure(run_dir: Path, run_id: str, exc: BaseException) -> Outcome:
    """Write the traceback to `run_dir/error.txt` and return the failed outcome."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / ERROR_FILE, "".join(traceback.format_exception(exc)))
    return Outcome(run_id, one_line(exc))


def execute_run(execute: Execute, spec: RunSpec, run_dir: Path) -> Outcome:
    """Run one spec into `run_dir` (in this process or a worker); write result.json last, or error.txt on failure."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = execute(spec.config, run_dir)
        if not isinstance(result, Mapping):
            raise SparseInferError(f"execute must return a dict of results, got {type(result).__name__}")
        result = {**result, "wall_time_s": time.perf_counter() - start, "run_id": spec.run_id}
        write_json(run_dir / RESULT_FILE, result)  # the completion marker: atomic, and always written last
    except Exception as exc:
        return record_failure(run_dir, spec.run_id, exc)
    return Outcome(spec.run_id, None)
