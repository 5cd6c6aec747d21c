"""Sweeps on a real local Ray cluster (127.0.0.1, 2 CPUs): same results as the process pool, killed workers retried
without duplicates, resume skipping complete runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.files import RESULT_FILE, read_json
from sparseinfer.experiments.runner import RunSpec, run_sweep

ray = pytest.importorskip("ray")


def toy_execute(config: dict, run_dir: Path) -> dict:
    """Leaves one marker per attempt; with `die_once`, the first attempt kills its own worker process."""
    markers = Path(config["markers"])
    (markers / f"{run_dir.name}.{os.getpid()}.{time.time_ns()}").touch()
    (run_dir / "partial.txt").write_text("in progress")
    if config.get("die_once"):
        flag = markers / f"{run_dir.name}.died"
        if not flag.exists():
            flag.touch()
            os._exit(1)  # like kill -9 / out of memory: no exception, no cleanup
    return {"value": config["x"] * 3, "square": float(config["x"]) ** 2}


def attempts(markers: Path, run_id: str) -> int:
    return sum(1 for p in markers.iterdir() if p.name.startswith(f"{run_id}.") and not p.name.endswith(".died"))


def specs(markers: Path, n: int, **extra) -> list[RunSpec]:
    markers.mkdir(parents=True, exist_ok=True)
    return [RunSpec(f"r{i}", {"x": i, "markers": str(markers), **extra}) for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster on 127.0.0.1; the test module travels to the workers by value (it is not importable)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_sweep_equals_process_pool(tmp_path, cluster):
    local = run_sweep(specs(tmp_path / "m1", 4), tmp_path / "local", toy_execute, workers=2, progress=False)
    remote = run_sweep(specs(tmp_path / "m2", 4), tmp_path / "ray", toy_execute, backend="ray", progress=False)
    cols = ["run_id", "value", "square"]
    a = local[cols].sort_values("run_id").reset_index(drop=True)
    b = remote[cols].sort_values("run_id").reset_index(drop=True)
    assert a.equals(b)
    assert b["value"].tolist() == [0, 3, 6, 9]
    assert all(attempts(tmp_path / "m2", f"r{i}") == 1 for i in range(4))
    assert (tmp_path / "ray" / "results.parquet").is_file()


def test_killed_worker_is_retried_once_without_duplicates(tmp_path, cluster):
    table = run_sweep(specs(tmp_path / "m", 2, die_once=True), tmp_path / "out", toy_execute, backend="ray",
                      progress=False)  # fmt: skip
    assert sorted(table["run_id"]) == ["r0", "r1"]
    assert not table.attrs["failed_runs"]
    for i in range(2):
        assert attempts(tmp_path / "m", f"r{i}") == 2  # the killed attempt and its retry, nothing more
        assert read_json(tmp_path / "out" / "runs" / f"r{i}" / RESULT_FILE)["value"] == 3 * i


def test_resume_on_ray_redoes_only_incomplete_runs(tmp_path, cluster):
    markers = tmp_path / "m"
    run_sweep(specs(markers, 3), tmp_path / "out", toy_execute, backend="ray", progress=False)
    (tmp_path / "out" / "runs" / "r1" / RESULT_FILE).unlink()  # as if killed before its completion marker
    table = run_sweep(specs(markers, 3), tmp_path / "out", toy_execute, backend="ray", resume=True, progress=False)
    assert [attempts(markers, f"r{i}") for i in range(3)] == [1, 2, 1]
    assert sorted(table["value"]) == [0, 3, 6]


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(SparseInferError, match="backend"):
        run_sweep(specs(tmp_path / "m", 1), tmp_path / "out", toy_execute, backend="dask", progress=False)


SWEEP = """
base:
  setting: known_dictionary
  data: {n_latents: 12, dim: 6, k: 2, seed: 0, n_train: 64, n_test: 64}
  train: {steps: 20, lr: 0.01, eval_every: 10}
methods:
  - method: sae
    encoder: {name: relu}
  - method: topk
    encoder: {name: topk, params: {k: 2}}
"""


@pytest.fixture()
def head_node():
    """A separately started Ray head (`ray start --head --block`, its own processes, stopped with the fixture)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port", str(port),
           "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--include-dashboard", "false"]  # fmt: skip
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in head.stdout:  # ready once it says it blocks
        log.append(line)
        if "--block" in line or head.poll() is not None:
            break
    assert head.poll() is None, "".join(log)[-3000:]
    yield f"127.0.0.1:{port}", env
    head.terminate()  # SIGTERM: `ray start --block` stops the processes it started
    head.wait(timeout=60)


def test_cli_sweep_on_a_running_cluster_matches_process_backend(tmp_path, head_node):
    """`sparseinfer sweep --backend ray --address ADDR` on a cluster started beforehand writes the same numbers as the
    default process pool."""
    from sparseinfer.experiments.execute import execute
    from sparseinfer.experiments.sweep_config import load_runs

    address, env = head_node
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP)
    cmd = [sys.executable, "-m", "sparseinfer", "sweep", str(config), "--out", str(tmp_path / "ray"),
           "--workers", "2", "--backend", "ray", "--address", address]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = pd.read_parquet(tmp_path / "ray" / "results.parquet").sort_values("run_id").reset_index(drop=True)
    specs = [RunSpec(r.run_id(), r.model_dump(mode="json")) for r in load_runs(config)]
    local = run_sweep(specs, tmp_path / "process", execute, progress=False).sort_values("run_id").reset_index(drop=True)
    numbers = [c for c in local.columns if c.endswith("mcc") or c.endswith("flops")]
    assert numbers and len(remote) == 2
    pd.testing.assert_frame_equal(local[["run_id", *numbers]], remote[["run_id", *numbers]])
