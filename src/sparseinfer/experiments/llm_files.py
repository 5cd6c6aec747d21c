"""The study folder's bookkeeping for `sparseinfer reproduce llm`: the stage order, atomic writes, each stage's
completion marker (`stages/<stage>.json`, with its wall time and peak resident memory) and the versions recorded in
`config.yaml`."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparseinfer import atomic

STAGES = ("data", "train", "evaluate", "probe", "interp", "report")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` (parents made) through the core atomic writer, so a kill never leaves half a file."""
    atomic.write_text(path, text, parents=True)


def marker(out: Path, stage: str) -> Path:
    """The completion marker of `stage` in the study folder `out`."""
    return out / "stages" / f"{stage}.json"


def finished(out: Path) -> list[str]:
    """The stages of `out` that completed."""
    return [s for s in STAGES if marker(out, s).exists()]


def _rss_bytes() -> int:
    """Resident memory now of this process and its descendants (worker processes, explainer servers), from Linux
    /proc; elsewhere this process's peak so far."""
    try:
        return sum(_rss_of(pid) for pid in _family(os.getpid()))
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_of(pid: int) -> int:
    """One process's resident bytes (0 when it has just ended)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except FileNotFoundError:
        return 0


def _family(pid: int) -> list[int]:
    """`pid` and its descendants (/proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError):
                todo += [int(child) for child in task.read_text().split()]
    return out


@contextlib.contextmanager
def measured(record: dict[str, Any], every: float = 0.25) -> Iterator[None]:
    """Measure the block's wall time and peak resident memory (sampled, with child processes) into `record`."""
    peak, stop = [_rss_bytes()], threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            peak[0] = max(peak[0], _rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        record["seconds"] = time.perf_counter() - start
        record["peak_rss_gb"] = max(peak[0], _rss_bytes()) / 2**30


def versions() -> dict[str, str]:
    """Versions of the package, Python and the main libraries (for config.yaml)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("sparseinfer", "torch", "transformers", "numpy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
