"""Output-folder locks: a second process on the same folder is refused while the first runs; SIGKILL frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.locks import LOCK_FILE, folder_lock, locks_folder

HOLD = "import sys, time; from sparseinfer.locks import folder_lock\nwith folder_lock(sys.argv[1], 'sweep'):\n" \
       "    print('held', flush=True); time.sleep(60)\n"  # fmt: skip


def hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_until_the_first_is_killed(tmp_path):
    proc = hold(tmp_path / "out")
    try:
        with pytest.raises(SparseInferError, match=rf"in use by sparseinfer sweep \(pid {proc.pid}\)"):
            with folder_lock(tmp_path / "out", "train"):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "out" / LOCK_FILE).exists()  # a stale file, but no lock: the OS released it
    with folder_lock(tmp_path / "out", "train"):
        pass


def test_reentrant_in_one_process_and_released_after(tmp_path):
    @locks_folder("out", "train")
    def inner(out: Path) -> str:
        return "ran"

    with folder_lock(tmp_path, "sweep"):
        assert inner(tmp_path) == "ran"
    proc = hold(tmp_path)  # released: another process can take it
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SparseInferError, match="exists and is not a folder"):
        with folder_lock(tmp_path / "f", "sweep"):
            pass
