"""Results do not depend on `workers`: every run computes on the same torch thread count in a pool worker and in
the sweep's own process, so one and two workers give bit-identical metrics and histories."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from sparseinfer.experiments.execute import execute
from sparseinfer.experiments.files import read_yaml
from sparseinfer.experiments.runner import run_sweep
from sparseinfer.experiments.sweep_config import parse_sweep

TIMING = ["wall_time_s", "execute_time_s"]
# big enough for torch to split reductions over threads (two threads changed cells of this sweep)
SWEEP = {
    "base": {
        "setting": "learn_both",
        "data": {"n_latents": 64, "dim": 32, "k": 3, "n_train": 4096, "n_test": 1024},
        "train": {"steps": 30, "lr": 0.01, "eval_every": 10},
        "save_weights": False,
    },
    "methods": [
        {"method": "sae", "encoder": {"name": "relu"}},
        {"method": "topk", "encoder": {"name": "topk", "params": {"k": 3}}},
    ],
}


def test_one_and_two_workers_give_identical_results(tmp_path: Path) -> None:
    specs = [run.spec() for run in parse_sweep(SWEEP).expand()]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a sweep's own process may run more threads than its workers
    try:
        one = run_sweep(specs, tmp_path / "one", execute, workers=1, progress=False)
    finally:
        torch.set_num_threads(before)
    two = run_sweep(specs, tmp_path / "two", execute, workers=2, progress=False)
    assert len(one) == len(specs) and not one.attrs["failed_runs"] and not two.attrs["failed_runs"]
    pd.testing.assert_frame_equal(one.drop(columns=TIMING), two.drop(columns=TIMING), check_exact=True)
    for spec in specs:
        runs = [tmp_path / folder / "runs" / spec.run_id for folder in ("one", "two")]
        histories = [pd.read_parquet(run / "history.parquet") for run in runs]
        pd.testing.assert_frame_equal(*histories, check_exact=True)
        assert [read_yaml(run / "config.yaml")["torch_threads"] for run in runs] == [1, 1]
