"""A sweep checks its whole grid before any run starts (the error names the entry), and `sparseinfer sweep` exits 1
with one line naming the runs that failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sparseinfer.cli.app import app
from sparseinfer.errors import SparseInferError
from sparseinfer.experiments import execute as execute_module
from sparseinfer.experiments.sweep_config import load_runs, parse_sweep

BASE = {
    "setting": "known_dictionary",
    "data": {"n_latents": 8, "dim": 4, "k": 2, "n_train": 128, "n_test": 64},
    "train": {"steps": 20, "lr": 0.01, "eval_every": 10},
    "save_weights": False,
}
SAE = {"method": "sae", "encoder": {"name": "relu", "params": {"bias": False}}}


def sweep(**fields: Any) -> dict[str, Any]:
    return {"base": BASE, "methods": [SAE], **fields}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"methods": [SAE, {"method": "big", "encoder": {"name": "topk", "params": {"k": 20}}}]},
            r"invalid sweep entry methods\[1\] \(method 'big', seed 0\): encoder: k=20 exceeds the number of latents",
        ),
        (
            {"methods": [SAE, {"method": "x", "encoder": {"name": "potato"}}], "seeds": [3]},
            r"methods\[1\] \(method 'x', seed 3\): encoder: unknown encoder 'potato'",
        ),
        ({"grid": {"data.k": [2, 50]}}, r"methods\[0\] \(method 'sae', data\.k=50, seed 0\): data: k=50 exceeds"),
        (
            {"grid": {"train.lrr": [0.1]}},
            r"methods\[0\] \(method 'sae', train\.lrr=0\.1, seed 0\): train\.lrr: unknown",
        ),
        (
            {"methods": [{**SAE, "encoder": {"name": "relu", "params": {"bais": False}}}]},
            r"methods\[0\] .*encoder 'relu' has no hyperparameter\(s\) \['bais'\]",
        ),
    ],
)
def test_the_whole_grid_is_checked_and_the_bad_entry_named(fields: dict, message: str) -> None:
    with pytest.raises(SparseInferError, match=message):
        parse_sweep(sweep(**fields)).expand()


def test_a_single_run_is_checked_too(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**BASE, "method": "big", "encoder": {"name": "topk", "params": {"k": 20}}}))
    with pytest.raises(SparseInferError, match=r"invalid run config: encoder: k=20 exceeds"):
        load_runs(config)


def test_a_bad_entry_starts_no_run(tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep(grid={"data.k": [2, 50]})))
    result = CliRunner().invoke(app, ["sweep", str(config), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, SparseInferError) and "data.k=50" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_failed_runs_exit_1_with_one_line_naming_them(tmp_path: Path, monkeypatch) -> None:
    real = execute_module.execute

    def failing(raw: dict, run_dir: Path) -> dict:
        if raw["method"] == "bad":
            raise RuntimeError("the solver diverged\nsecond line")
        return real(raw, run_dir)

    monkeypatch.setattr(execute_module, "execute", failing)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep(methods=[SAE, {**SAE, "method": "bad"}])))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(config), "--out", str(out)])
    assert result.exit_code == 1, result.output
    # stderr also carries the sweep's progress lines (a batch log is not a terminal); the error is one line, last
    lines = result.stderr.splitlines()
    [line] = [text for text in lines if text.startswith("error:")]
    assert lines[-1] == line and all(text.startswith("runs") for text in lines[:-1]), lines
    [bad] = [p.name for p in (out / "runs").iterdir() if "-bad-" in p.name]
    assert line.startswith(f"error: 1 of 2 run(s) failed: {bad} (tracebacks in {out / 'runs'}/<run_id>/error.txt")
    assert line.endswith(f"first: {bad}: RuntimeError: the solver diverged")
    assert (out / "report.md").is_file()  # the run that succeeded is reported
