"""SIGKILL at random points of `sparseinfer sweep`, `train` and `harvest`, then `--resume`: the same results as a run
that was never interrupted, and a store that is, after every kill, either complete and valid or refused as
incomplete when opened.

Each command runs as the real CLI (`main()`) in a child forked from one interpreter that imported the package once
(a fresh process spends seconds importing torch before it does anything). A kill lands at a seeded random moment
after the command took its folder lock (so during its work, not its imports), within the work still left.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sparseinfer.data.store import ActivationStore
from sparseinfer.errors import SparseInferError
from sparseinfer.locks import LOCK_FILE

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))
from _stores import clustered_store  # noqa: E402

TIMEOUT = 120  # seconds any one command may take before the test fails (a hang is a failure, never a block)
TIMING = ("wall_time_s", "execute_time_s")  # result columns that measure time, not the run

_ZYGOTE = r"""
import json, os, sys, traceback
for name in sys.argv[1:]:
    __import__(name)
from sparseinfer.cli.app import main
print(json.dumps({"threads": len(os.listdir("/proc/self/task"))}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.argv = ["sparseinfer", *req["args"]]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Commands:
    """The CLI run in children of one pre-imported interpreter, one command at a time."""

    def __init__(self, logs: Path) -> None:
        # One thread only, so that forking it is safe: one torch/BLAS thread (as in this test process, conftest),
        # and no background thread of pyarrow's allocator.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
        preload = [
            "sparseinfer.cli.app",
            "sparseinfer.experiments.execute",
            "sparseinfer.data.harvest",
            "sparseinfer.lm.model",
            "transformers",
            "transformers.models.llama.modeling_llama",
        ]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, *preload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env, start_new_session=True,
        )  # fmt: skip
        self.logs, self.count = logs, 0
        assert self._read(3 * TIMEOUT) == {"threads": 1}, "the command server must be single-threaded to fork safely"

    def _read(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no answer from the command server within {timeout} s"
        line = self.proc.stdout.readline()
        assert line, "the command server died"
        return json.loads(line)

    def start(self, *args: str) -> tuple[int, Path]:
        """Start `sparseinfer ARGS`; returns its pid and its log file (stdout and stderr)."""
        assert self.proc.stdin is not None
        self.count += 1
        log = self.logs / f"{self.count:03d}.log"
        self.proc.stdin.write(json.dumps({"args": list(args), "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return self._read(TIMEOUT)["pid"], log

    def wait(self, pid: int) -> int:
        """The exit code of the started command (negative: killed by that signal); kills it when it hangs."""
        try:
            return self._read(TIMEOUT)["status"]
        except AssertionError:
            os.killpg(pid, signal.SIGKILL)
            raise

    def run(self, *args: str) -> tuple[int, float, str]:
        """Run a command to its end: exit code, seconds from taking its lock to its exit, its output."""
        pid, log = self.start(*args)
        locked = _wait_for_lock(pid, _lock_folder(args))
        code = self.wait(pid)
        return code, time.monotonic() - locked, log.read_text()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Iterator[Commands]:
    server = Commands(tmp_path_factory.mktemp("logs"))
    yield server
    server.close()


def _lock_folder(args: tuple[str, ...]) -> Path:
    """The folder a sweep (`--out`), `train` or `harvest` (first argument) locks."""
    return Path(args[args.index("--out") + 1]) if "--out" in args else Path(args[1])


def _wait_for_lock(pid: int, folder: Path) -> float:
    """When process `pid` took the lock of `folder` (its lock file names it), or when it ended before."""
    deadline = time.monotonic() + TIMEOUT
    mine = f"(pid {pid})"
    while time.monotonic() < deadline:
        try:
            if mine in (folder / LOCK_FILE).read_text():
                return time.monotonic()
        except OSError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # already gone (zombie reaped): nothing left to kill
            return time.monotonic()
        time.sleep(0.005)
    os.killpg(pid, signal.SIGKILL)
    raise AssertionError(f"{folder}: the command never took its lock")


def kill_and_resume(
    commands: Commands,
    args: tuple[str, ...],
    work_s: float,
    left: Callable[[], float],
    check: Callable[[], None],
    kills: int,
    seed: int,
    after_kill: Callable[[], None] = lambda: None,
    finished: Callable[[], bool] = lambda: False,
) -> int:
    """Start `args` (a command that resumes in its folder), SIGKILL it (its process group) at a random moment within
    the work still left (`work_s` x `left()`, a fraction), call `after_kill`, and start it again, until `kills` kills
    landed; a chain that ends (exit 0, or `finished()`: nothing left to resume) is `check`ed against the
    uninterrupted run and started afresh in an empty folder, its pace learnt (the machine may be busier than it was).
    The last chain is run to its end and checked. Returns the number of chains."""
    rng = random.Random(seed)
    folder = _lock_folder(args)
    landed, chains, done = 0, 1, False
    while landed < kills:
        if done or finished():
            check()
            shutil.rmtree(folder)
            chains, done = chains + 1, False
        fraction = max(left(), 0.05)
        delay = rng.uniform(0, work_s * fraction)
        pid, log = commands.start(*args)
        locked = _wait_for_lock(pid, folder)
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # it ended before the kill
            os.killpg(pid, signal.SIGKILL)
        code = commands.wait(pid)
        if code == -signal.SIGKILL:
            landed += 1
            after_kill()
        else:
            assert code == 0, log.read_text()
            work_s = (time.monotonic() - locked) / fraction
            done = True
    if not (done or finished()):
        code, _, output = commands.run(*args)
        assert code == 0, output
    check()
    return chains


# ---- sweep ----

SWEEP = """
base:
  setting: known_dictionary
  data: {n_latents: 8, dim: 4, k: 2, n_train: 256, n_test: 128}
  train: {steps: 150, lr: 0.01, eval_every: 30}
methods:
  - {method: sae, encoder: {name: relu, params: {bias: false}}}
  - {method: topk, encoder: {name: topk, params: {k: 2}}}
  - {method: fista, encoder: {name: fista, params: {penalty: 0.01, nonneg: true}}}
  - method: sae+ito
    encoder: {name: relu, params: {bias: false}}
    ito: {steps: 60, lr: 0.01, log_every: 20}
seeds: [0, 1]
"""


def _sweep_files(out: Path) -> dict[str, object]:
    """Everything a sweep's results are: the table (timings dropped), and every run's history and weights."""
    files: dict[str, object] = {"results": pd.read_parquet(out / "results.parquet").drop(columns=list(TIMING))}
    for run in sorted((out / "runs").iterdir()):
        files[f"{run.name}/history"] = pd.read_parquet(run / "history.parquet")
        for weights in sorted(run.glob("*.safetensors")):
            files[f"{run.name}/{weights.name}"] = load_file(weights)
    return files


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, b[key], check_exact=True, obj=key)
        else:
            assert value.keys() == b[key].keys(), key
            for name, tensor in value.items():
                assert torch.equal(tensor, b[key][name]), f"{key}: {name}"


def test_sweep_killed_ten_times_resumes_to_the_same_results(commands, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP)
    ref, out = tmp_path / "ref", tmp_path / "out"
    code, work_s, output = commands.run("sweep", str(config), "--out", str(ref))
    assert code == 0, output
    total = len(list((ref / "runs").iterdir()))
    runs_end = max(p.stat().st_mtime for p in ref.glob("runs/*/result.json"))
    start, end = (ref / "sweep.yaml").stat().st_mtime, (ref / "report.md").stat().st_mtime
    report_share = (end - runs_end) / (end - start)  # the report and figures come after the last run

    def left() -> float:
        runs = out / "runs"
        done = len(list(runs.glob("*/result.json"))) if runs.is_dir() else 0
        return report_share + (1 - report_share) * (1 - done / total)

    def check() -> None:
        _assert_same(expected, _sweep_files(out))
        assert (out / "report.md").is_file()

    expected = _sweep_files(ref)
    args = ("sweep", str(config), "--out", str(out), "--resume")
    kill_and_resume(commands, args, work_s, left, check, kills=10, seed=19)


# ---- train ----


def _checkpoint_step(run: Path) -> int:
    """The step of the run folder's checkpoint (0 without one)."""
    try:
        with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
            return json.loads(f.metadata()["state"])["step"]
    except Exception:
        return 0


def _train_files(run: Path) -> dict[str, object]:
    info = json.loads((run / "run.json").read_text())
    history = pd.DataFrame(info["history"])  # a resumed run's earlier rows come back with their keys sorted
    files: dict[str, object] = {"history": history[sorted(history.columns)]}
    files["run"] = pd.DataFrame(
        [{k: json.dumps(info[k]) for k in ("config", "scale", "l1", "l1_final", "train_flops")}]
    )
    for weights in ("encoder.safetensors", "dictionary.safetensors"):
        files[weights] = load_file(run / weights)
    return files


def test_train_killed_at_random_points_resumes_to_the_same_run(commands, tmp_path):
    store = clustered_store(tmp_path / "store", dim=8, clusters=6, scale=1.0, noise=0.1, offset=0.5)
    steps = 1000  # a checkpoint every 200 steps
    options = ("--store", str(store), "--encoder", "topk", "--param", "k=2", "--expansion", "2", "--steps",
               str(steps), "--batch-size", "64", "--seed", "3")  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "out"
    code, work_s, output = commands.run("train", str(ref), *options)
    assert code == 0, output
    expected = _train_files(ref)
    kill_and_resume(
        commands, ("train", str(out), *options, "--resume"), work_s, lambda: 1 - _checkpoint_step(out) / steps,
        lambda: _assert_same(expected, _train_files(out)), kills=10, seed=19,
        finished=lambda: (out / "run.json").exists(),  # killed after its last write: nothing left to resume
    )  # fmt: skip


# ---- harvest ----

WORDS = "the quick brown fox jumps over the lazy dog a stitch in time saves nine all that glitters is not gold".split()


def _store_state(folder: Path) -> str:
    """'complete' (and every shard verified), 'incomplete' or 'absent': what opening the store says."""
    try:
        store = ActivationStore.open(folder)
    except SparseInferError as err:
        if "is incomplete" in str(err):
            ActivationStore.open(folder, require_complete=False).verify()  # what it holds is intact
            return "incomplete"
        assert "is not an activation store" in str(err), err  # killed before its manifest was written
        return "absent"
    store.verify()
    return "complete"


def _store_files(folder: Path) -> dict[str, object]:
    store = ActivationStore.open(folder)
    m = store.manifest
    files: dict[str, object] = {"manifest": pd.DataFrame(m.shards).assign(corpus=json.dumps(m.corpus))}
    for i in range(len(m.shards)):
        files[f"shard{i}"] = store.read_shard(i)
    return files


def test_harvest_killed_at_random_points_is_complete_or_refused_and_resumes(commands, tmp_path):
    from sparseinfer.lm.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    docs = tmp_path / "docs"
    docs.mkdir()
    rng = random.Random(0)
    for i in range(40):
        (docs / f"{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(150)))
    planned = 48
    options = ("--model", str(model), "--hook", "resid_pre.2", "--text", str(docs), "--context-length", "16",
               "--contexts", str(planned), "--contexts-per-shard", "8", "--batch-size", "4")  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "out"
    code, work_s, output = commands.run("harvest", str(ref), *options)
    assert code == 0, output
    assert _store_state(ref) == "complete"
    states: list[str] = []

    def left() -> float:
        try:
            return 1 - ActivationStore.open(out, require_complete=False).manifest.n_contexts / planned
        except SparseInferError:
            return 1.0

    def check() -> None:
        assert _store_state(out) == "complete"
        _assert_same(expected, _store_files(out))

    expected = _store_files(ref)
    kill_and_resume(
        commands, ("harvest", str(out), *options), work_s, left, check, kills=5, seed=19,
        after_kill=lambda: states.append(_store_state(out)),
    )  # fmt: skip
    assert len(states) == 5 and set(states) <= {"complete", "incomplete", "absent"}
