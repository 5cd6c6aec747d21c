"""Exclusive locks on output folders: a second `sweep`, `train` or `harvest` on the same folder is refused.

The lock is `fcntl.flock` on a small file in the folder (`.sparseinfer.lock`, holding the owner's pid and command),
so the operating system releases it when the owner exits, however it ends (SIGKILL included); a stale lock file
never blocks anyone. Locks are re-entrant within one process (a study that trains inside its own locked folder).
Where `fcntl` does not exist (Windows) folders are not locked.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sparseinfer.errors import SparseInferError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".sparseinfer.lock"
_held: dict[Path, int] = {}  # folder -> depth, for this process
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of `folder` (created if missing) for `command`, or raise `SparseInferError` at once when
    another process holds it. Yields the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SparseInferError(f"output folder {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SparseInferError(f"cannot create output folder {folder}: {err.strerror or err}") from None
    key = folder.resolve()
    if key in _held or fcntl is None:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield folder
        finally:
            _release(key)
        return
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise SparseInferError(f"cannot lock output folder {folder}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise SparseInferError(
                f"{folder} is in use by {owner}; wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"sparseinfer {command} (pid {os.getpid()})\n".encode(), 0)
        _held[key] = 1
        try:
            yield folder
        finally:
            _release(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _release(key: Path) -> None:
    _held[key] -= 1
    if not _held[key]:
        del _held[key]


def locks_folder(argument: str, command: str) -> Callable[[F], F]:
    """Decorator: hold `folder_lock` on the function's `argument` (a path) while it runs. In a `torchrun` rank other
    than 0 (env RANK) nothing is locked: rank 0 holds the folder for the whole job."""

    def wrap(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            if os.environ.get("RANK", "0") != "0":
                return func(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = bound.arguments[argument]
            with folder_lock(folder, command):
                return func(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
