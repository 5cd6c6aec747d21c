"""Atomic file writes: the one writer of every file the package puts on disk by name.

A write fills a hidden temporary file beside the target, flushes it to disk and moves it onto the target with
`os.replace`, so a reader (or a resume after `kill -9`) sees the old file or the complete new one, never half.
A target that exists and is not a regular file (a device such as `/dev/null`, a FIFO, a socket, a folder) is
refused: a rename would silently replace it with a regular file. A missing parent folder is created only when
asked (`parents=True`, for the package's own folders); for a user's `--out` it is an error, like a folder that
cannot be written. Errors are one-line `SparseInferError`s naming the path.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sparseinfer.errors import SparseInferError

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def check_target(path: str | Path, parents: bool = False) -> Path:
    """`path` as a writable target: a regular file or nothing yet, in an existing folder (made with `parents`)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise SparseInferError(f"cannot write {path}: {err.strerror or err}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise SparseInferError(f"refusing to write {path}: it is {kind}, not a regular file; choose a file path")
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise SparseInferError(f"cannot write {path}: {parent} is not a folder")
        if not parents:
            raise SparseInferError(f"cannot write {path}: folder {parent} does not exist (create it first)")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SparseInferError(f"cannot create folder {parent}: {err.strerror or err}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` to be filled by the caller (any library that writes to a file name);
    on success it is flushed and moved onto `path`, on any error removed and `path` left as it was."""
    path = check_target(path, parents)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise SparseInferError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SparseInferError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | Path, write: Callable[[Path], object], parents: bool = False) -> Path:
    """Let `write(tmp)` fill a temporary file, then move it onto `path` atomically (see `atomic_path`)."""
    with atomic_path(path, parents) as tmp:
        write(tmp)
    return Path(path)


def write_bytes(path: str | Path, data: bytes, parents: bool = False) -> Path:
    """Write `data` to `path` atomically."""
    return write_with(path, lambda tmp: tmp.write_bytes(data), parents)


def write_text(path: str | Path, text: str, parents: bool = False) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), parents)


def write_parquet(path: str | Path, table: Any, parents: bool = False) -> Path:
    """Write a pandas DataFrame as Parquet (pyarrow, no index) atomically; columns pyarrow cannot store (mixed
    types) are a one-line SparseInferError."""
    import pyarrow as pa

    try:
        return write_with(path, lambda tmp: table.to_parquet(tmp, engine="pyarrow", index=False), parents)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise SparseInferError(f"cannot write {path} as Parquet: {exc}") from exc
