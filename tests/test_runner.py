"""Sweep runner and result store: every run exactly once, resumable after failures, Ctrl-C and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.files import (
    flatten,
    gather_results,
    is_complete,
    read_json,
    read_parquet,
    read_yaml,
    write_json,
    write_parquet,
    write_yaml,
)
from sparseinfer.experiments.runner import RunFailureWarning, RunSpec, run_sweep

TESTS_DIR = Path(__file__).resolve().parent


def toy_execute(config: dict, run_dir: Path) -> dict:
    """A run: leaves a start marker per execution (to count them), optionally sleeps or fails, writes a file."""
    markers = Path(config["markers"])
    (markers / f"{run_dir.name}.{os.getpid()}.{time.time_ns()}").touch()
    (run_dir / "started.txt").write_text("in progress")
    time.sleep(config.get("sleep", 0.0))
    if config.get("fail_if_exists") and Path(config["fail_if_exists"]).exists():
        raise RuntimeError(f"boom in {run_dir.name}\nsecond line")
    (run_dir / "output.txt").write_text(str(config["x"]))
    result = {"value": config["x"] * 2, "stats": {"square": config["x"] ** 2, "half": {"x": config["x"] / 2}}}
    if config.get("report_threads"):
        import torch

        result["threads"] = torch.get_num_threads()
    return result


def not_a_dict(config: dict, run_dir: Path) -> list:
    return [1, 2]


def make_specs(markers: Path, n: int, **extra) -> list[RunSpec]:
    markers.mkdir(parents=True, exist_ok=True)
    return [RunSpec(f"run{i:02d}", {"x": i, "markers": str(markers), **extra}) for i in range(n)]


def executions(markers: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for marker in markers.iterdir():
        run_id = marker.name.split(".")[0]
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def check_table(df: pd.DataFrame, out: Path, xs: list[int]) -> None:
    assert list(df["run_id"]) == [f"run{i:02d}" for i in xs]
    assert list(df["value"]) == [2 * i for i in xs]
    assert list(df["stats.square"]) == [i * i for i in xs]
    assert list(df["stats.half.x"]) == [i / 2 for i in xs]
    assert (df["wall_time_s"] >= 0).all()
    pd.testing.assert_frame_equal(read_parquet(out / "results.parquet"), df)


def test_runs_all_and_writes_files(tmp_path: Path) -> None:
    specs = make_specs(tmp_path / "markers", 5)
    df = run_sweep(specs, tmp_path / "out", toy_execute, progress=False)
    check_table(df, tmp_path / "out", list(range(5)))
    assert df.columns[0] == "run_id"
    assert executions(tmp_path / "markers") == {s.run_id: 1 for s in specs}
    for spec in specs:
        run_dir = tmp_path / "out" / "runs" / spec.run_id
        assert (run_dir / "output.txt").read_text() == str(spec.config["x"])
        result = read_json(run_dir / "result.json")
        assert result["run_id"] == spec.run_id and result["value"] == 2 * spec.config["x"]
    sweep = read_yaml(tmp_path / "out" / "sweep.yaml")
    assert sweep == {"runs": [{"run_id": s.run_id, "config": s.config} for s in specs]}


def test_resume_skips_complete_and_adds_new(tmp_path: Path) -> None:
    markers, out = tmp_path / "markers", tmp_path / "out"
    run_sweep(make_specs(markers, 3), out, toy_execute, progress=False)
    df = run_sweep(make_specs(markers, 5), out, toy_execute, resume=True, progress=False)
    check_table(df, out, list(range(5)))
    assert executions(markers) == {f"run{i:02d}": 1 for i in range(5)}
    df = run_sweep(make_specs(markers, 5), out, toy_execute, resume=True, progress=False)  # nothing left to do
    check_table(df, out, list(range(5)))
    assert executions(markers) == {f"run{i:02d}": 1 for i in range(5)}
    # sweep.yaml keeps runs of earlier invocations even when a resume names only some of them
    run_sweep(make_specs(markers, 2), out, toy_execute, resume=True, progress=False)
    assert [r["run_id"] for r in read_yaml(out / "sweep.yaml")["runs"]] == [f"run{i:02d}" for i in range(5)]


def test_incomplete_folder_is_wiped_and_redone(tmp_path: Path) -> None:
    markers, out = tmp_path / "markers", tmp_path / "out"
    specs = make_specs(markers, 3)
    run_sweep(specs, out, toy_execute, progress=False)
    run_dir = out / "runs" / "run01"
    (run_dir / "result.json").unlink()
    (run_dir / "stale.bin").write_bytes(b"half written")
    assert not is_complete(run_dir)
    df = run_sweep(specs, out, toy_execute, resume=True, progress=False)
    check_table(df, out, [0, 1, 2])
    assert executions(markers) == {"run00": 1, "run01": 2, "run02": 1}
    assert not (run_dir / "stale.bin").exists()


def test_failing_run_is_recorded_and_retried_on_resume(tmp_path: Path) -> None:
    markers, out, flag = tmp_path / "markers", tmp_path / "out", tmp_path / "fail-flag"
    flag.touch()
    specs = make_specs(markers, 3)
    specs[1].config["fail_if_exists"] = str(flag)
    with pytest.warns(RunFailureWarning, match=r"1 of 3 run\(s\) failed.*run01: RuntimeError: boom in run01$"):
        df = run_sweep(specs, out, toy_execute, progress=False)
    check_table(df, out, [0, 2])
    assert df.attrs["failed_runs"] == {"run01": "RuntimeError: boom in run01"}
    error = (out / "runs" / "run01" / "error.txt").read_text()
    assert "Traceback" in error and "RuntimeError: boom in run01" in error
    assert not is_complete(out / "runs" / "run01")
    flag.unlink()
    df = run_sweep(specs, out, toy_execute, resume=True, progress=False)
    check_table(df, out, [0, 1, 2])
    assert executions(markers) == {"run00": 1, "run01": 2, "run02": 1}
    assert not (out / "runs" / "run01" / "error.txt").exists()


def test_execute_returning_non_dict_is_a_failure(tmp_path: Path) -> None:
    with pytest.warns(RunFailureWarning, match="must return a dict"):
        df = run_sweep([RunSpec("a", {})], tmp_path, not_a_dict, progress=False)
    assert len(df) == 0 and list(df.columns) == ["run_id"]


@pytest.mark.parametrize("run_id", ["a/b", "..", ".hidden", "", "x y", "-x", "a" * 201, "é"])
def test_unsafe_run_id(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(SparseInferError, match="not filesystem-safe"):
        run_sweep([RunSpec(run_id, {})], tmp_path, toy_execute, progress=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("ids", [["a", "b", "a"], ["Run", "run"]])
def test_duplicated_run_id(tmp_path: Path, ids: list[str]) -> None:
    with pytest.raises(SparseInferError, match="duplicated run_id"):
        run_sweep([RunSpec(i, {"x": 1}) for i in ids], tmp_path, toy_execute, progress=False)


def test_bad_workers_and_unpicklable_execute(tmp_path: Path) -> None:
    specs = make_specs(tmp_path / "markers", 2)
    with pytest.raises(SparseInferError, match="workers must be a positive integer"):
        run_sweep(specs, tmp_path / "out", toy_execute, workers=0, progress=False)
    with pytest.raises(SparseInferError, match="top-level"):
        run_sweep(specs, tmp_path / "out", lambda c, d: {}, workers=2, progress=False)
    with pytest.raises(SparseInferError, match="config of run 'a'"):
        run_sweep([RunSpec("a", {"f": object()})], tmp_path / "out", toy_execute, progress=False)


def test_non_resume_on_existing_runs_refused(tmp_path: Path) -> None:
    markers, out = tmp_path / "markers", tmp_path / "out"
    run_sweep(make_specs(markers, 2), out, toy_execute, progress=False)
    with pytest.raises(SparseInferError, match=r"already holds 2 run folder\(s\); pass --resume"):
        run_sweep(make_specs(markers, 2), out, toy_execute, progress=False)
    assert executions(markers) == {"run00": 1, "run01": 1}


def test_mismatched_config_on_resume_refused(tmp_path: Path) -> None:
    markers, out = tmp_path / "markers", tmp_path / "out"
    run_sweep(make_specs(markers, 2), out, toy_execute, progress=False)
    specs = make_specs(markers, 3)
    specs[1].config["x"] = 7
    with pytest.raises(SparseInferError, match=r"run 'run01' .* different config \(x: 1 -> 7\)"):
        run_sweep(specs, out, toy_execute, resume=True, progress=False)
    specs = make_specs(markers, 2, lr=0.1)
    with pytest.raises(SparseInferError, match=r"run 'run00' .* \(lr: \(absent\) -> 0.1\)"):
        run_sweep(specs, out, toy_execute, resume=True, progress=False)
    assert executions(markers) == {"run00": 1, "run01": 1}
    (out / "sweep.yaml").unlink()
    with pytest.raises(SparseInferError, match=r"sweep\.yaml is missing"):
        run_sweep(make_specs(markers, 2), out, toy_execute, resume=True, progress=False)


def test_two_workers_match_one(tmp_path: Path) -> None:
    import torch

    specs = make_specs(tmp_path / "m1", 6, report_threads=True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's count does not reach the runs
    try:
        serial = run_sweep(specs, tmp_path / "one", toy_execute, workers=1, progress=False)
        assert torch.get_num_threads() == 2  # and is restored after them
    finally:
        torch.set_num_threads(before)
    specs = make_specs(tmp_path / "m2", 6, report_threads=True)
    pooled = run_sweep(specs, tmp_path / "two", toy_execute, workers=2, progress=False)
    assert (serial["threads"] == 1).all() and (pooled["threads"] == 1).all()  # every run on one torch thread
    drop = ["wall_time_s", "threads"]
    pd.testing.assert_frame_equal(serial.drop(columns=drop), pooled.drop(columns=drop))
    assert executions(tmp_path / "m2") == {s.run_id: 1 for s in specs}


SCRIPT = """
import signal
import sys
from pathlib import Path
# Ctrl-C reaches a terminal's foreground job even when the test suite itself runs in the background (where
# SIGINT starts out ignored and Python would not turn it into KeyboardInterrupt).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
from test_runner import make_specs, toy_execute
from sparseinfer.experiments.runner import run_sweep
run_sweep(make_specs(Path({markers!r}), {n}, sleep=0.3), Path({out!r}), toy_execute, workers={workers}, progress=False)
"""


def start_and_signal(tmp_path: Path, n: int, workers: int, sig: int) -> tuple[subprocess.CompletedProcess, set]:
    """Run a slow sweep in a subprocess, send `sig` to its process group once 2 runs completed; return what
    the process printed and the runs complete at that moment."""
    script = SCRIPT.format(tests=str(TESTS_DIR), markers=str(tmp_path / "m"), out=str(tmp_path / "out"), n=n,
                           workers=workers)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )
    runs = tmp_path / "out" / "runs"
    deadline = time.monotonic() + 60
    try:
        while len(list(runs.glob("*/result.json"))) < 2:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "sweep did not start"
            time.sleep(0.02)
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    complete = {p.name for p in runs.iterdir() if is_complete(p)}
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), complete


def resume_and_check(tmp_path: Path, n: int, complete_before: set) -> None:
    markers, out = tmp_path / "m", tmp_path / "out"
    assert 2 <= len(complete_before) < n
    df = run_sweep(make_specs(markers, n, sleep=0.3), out, toy_execute, resume=True, progress=False)
    check_table(df, out, list(range(n)))
    counts = executions(markers)
    assert set(counts) == {f"run{i:02d}" for i in range(n)}
    assert all(counts[r] == 1 for r in complete_before)  # completed runs are never redone
    for i in range(n):  # every run folder holds exactly one, finished, execution
        assert (out / "runs" / f"run{i:02d}" / "output.txt").read_text() == str(i)


def test_kill_minus_9_then_resume(tmp_path: Path) -> None:
    n = 12
    done, complete = start_and_signal(tmp_path, n, workers=2, sig=signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    resume_and_check(tmp_path, n, complete)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_then_resume(tmp_path: Path, workers: int) -> None:
    n = 10
    done, complete = start_and_signal(tmp_path, n, workers=workers, sig=signal.SIGINT)
    assert done.returncode != 0
    assert "SweepInterrupted" in done.stderr and "--resume" in done.stderr
    # nothing half-done looks complete: every folder with result.json finished its execute
    for run_id in complete:
        assert (tmp_path / "out" / "runs" / run_id / "output.txt").exists()
    resume_and_check(tmp_path, n, complete)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in "ZX":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pool_workers_die_with_their_parent(tmp_path: Path) -> None:
    """SIGKILL of the sweep's process (only it, not its group) ends its workers at once: no queued run starts."""
    markers = tmp_path / "m"
    script = SCRIPT.format(tests=str(TESTS_DIR), markers=str(markers), out=str(tmp_path / "out"), n=8, workers=2)
    script = script.replace("sleep=0.3", "sleep=2.0")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (markers.is_dir() and len(list(markers.iterdir())) >= 2):  # both workers are in a run
            assert proc.poll() is None and time.monotonic() < deadline, "sweep did not start"
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert len(workers) >= 2
        started = len(list(markers.iterdir()))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "pool workers outlived the sweep"
        assert len(list(markers.iterdir())) == started  # no queued run started after the kill
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---- store ----


def test_store_round_trips_and_atomic_writes(tmp_path: Path) -> None:
    obj = {"a": 1, "b": [1.5, None], "c": {"d": "e"}}
    write_json(tmp_path / "x.json", obj)
    write_yaml(tmp_path / "sub" / "x.yaml", obj)
    assert read_json(tmp_path / "x.json") == obj and read_yaml(tmp_path / "sub" / "x.yaml") == obj
    write_json(tmp_path / "np.json", {"f": np.float32(0.5), "v": np.arange(3), "n": float("nan")})
    loaded = read_json(tmp_path / "np.json")
    assert loaded["f"] == 0.5 and loaded["v"] == [0, 1, 2] and np.isnan(loaded["n"])
    df = pd.DataFrame({"run_id": ["a", "b"], "v": [1.0, 2.0]})
    write_parquet(tmp_path / "t.parquet", df)
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "t.parquet"), df)
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temporary files left behind
    with pytest.raises(SparseInferError, match="cannot write"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob(".bad.json*"))


def test_store_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(SparseInferError, match="not found"):
        read_yaml(tmp_path / "none.yaml")
    with pytest.raises(SparseInferError, match="not found"):
        read_parquet(tmp_path / "none.parquet")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\nb: }")
    with pytest.raises(SparseInferError, match="corrupt YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text('{"value": 1')
    with pytest.raises(SparseInferError, match="corrupt JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SparseInferError, match="corrupt Parquet"):
        read_parquet(tmp_path / "bad.parquet")


def test_is_complete_and_gather(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, text in [("b", '{"m": {"x": 2}, "k": 1}'), ("a", '{"m": {"x": 1}, "e": {}}'), ("c", '{"m": ')]:
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").write_text(text)
    (runs / "d").mkdir()  # no result.json at all
    (runs / "stray.txt").write_text("not a run")
    assert [is_complete(runs / n) for n in "abcd"] == [True, True, False, False]
    df = gather_results(tmp_path)
    assert list(df["run_id"]) == ["a", "b"] and list(df["m.x"]) == [1, 2]
    assert df["k"].isna().tolist() == [True, False] and df["e"].isna().all()
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "results.parquet"), df)
    assert list(gather_results(tmp_path / "empty").columns) == ["run_id"]
    assert flatten({"a": {"b": {"c": 1}, "d": [1]}, "e": 2}) == {"a.b.c": 1, "a.d": [1], "e": 2}
    assert json.loads((runs / "a" / "result.json").read_text())["e"] == {}


def test_progress_reaches_a_log_that_is_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A batch job's log (stderr not a terminal) gets plain `runs` lines, the last one with the final count."""
    markers = tmp_path / "markers"
    run_sweep(make_specs(markers, 3), tmp_path / "out", toy_execute, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("runs")]
    assert lines and "3/3" in lines[-1] and "\r" not in "".join(lines)
