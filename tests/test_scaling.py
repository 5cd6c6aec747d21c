"""The scaling sweep's plan (sizes, runs) and its gathering/figures/report on a tiny real sweep; the theory study on
a tiny preset end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.files import RUNS_DIR, read_parquet
from sparseinfer.experiments.scaling import ScalingPreset, run_scaling, scaling_runs, scaling_sizes
from sparseinfer.experiments.theory_study import TheoryPreset, run_theory
from sparseinfer.theory import recovery_boundary


def test_sizes_follow_the_protocol() -> None:
    sizes = scaling_sizes()
    assert len(sizes) == 22
    assert {(16, 32, k) for k in (3, 9, 15)} <= set(sizes)  # the M > N control
    for n, m, k in sizes:
        assert k < m and (m < n or (n, m) == (16, 32))
    assert (128, 32, 15) in sizes and (32, 32, 3) not in sizes and (16, 8, 9) not in sizes


def test_runs_cover_every_method_and_size() -> None:
    runs = scaling_runs("quick")
    assert len(runs) == 22 * 5
    assert {r.method for r in runs} == {"sae+ito", "mlp", "sparse_coding", "fista", "omp"}
    assert all(r.setting == "learn_both" for r in runs if r.method == "sparse_coding")
    assert all(r.encoder.params["k"] == r.data.k for r in runs if r.method == "omp")
    assert len(scaling_runs("paper")) == 22 * 5 * 5
    with pytest.raises(SparseInferError, match="unknown preset"):
        scaling_runs("huge")


TINY = ScalingPreset(20, 20, 10, 1e-2, 10, 1e-2, 1e-2, (0,), 8, 10)


def test_tiny_sweep_gathers_sae_from_the_ito_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sparseinfer.experiments.scaling as scaling

    monkeypatch.setattr(scaling, "scaling_sizes", lambda: [(8, 4, 2), (8, 12, 3)])
    table = run_scaling(TINY, tmp_path, progress=False)
    assert set(table["method"]) == {"sae", "sae+ito", "mlp", "sparse_coding", "fista", "omp"}
    assert len(table) == 2 * 6
    # the sae row is the last training row of the sae+ito run
    results = read_parquet(tmp_path / "results.parquet")
    run = results[(results["method"] == "sae+ito") & (results["dim"] == 4)].iloc[0]
    history = read_parquet(tmp_path / RUNS_DIR / run["run_id"] / "history.parquet")
    sae = table[(table["method"] == "sae") & (table["dim"] == 4)].iloc[0]
    assert sae["latent_mcc"] == history[history["phase"] == "train"]["latent_mcc"].iloc[-1]
    assert table.loc[table["dim"] == 4, "boundary"].iloc[0] == pytest.approx(recovery_boundary(8, 2))
    fista = table[table["method"] == "fista"].sort_values("dim")
    assert list(fista["above_boundary"]) == [False, True]
    assert (tmp_path / "figures" / "scaling_mcc.png").is_file()
    assert (tmp_path / "figures" / "scaling_mcc_minus_sae.png").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "| 8 | 12 | 3 |" in report and "above boundary" in report


def test_tiny_theory_study_end_to_end(tmp_path: Path) -> None:
    preset = TheoryPreset(
        n_latents=6,
        k=2,
        dims=(3, 6),
        seeds=(0,),
        lrs=(1e-2,),
        steps=20,
        eval_every=10,
        bp_samples=16,
        pt_n_latents=12,
        pt_deltas=(0.25, 0.75),
        pt_rhos=(0.2, 0.8),
        pt_trials=3,
        rank_steps=20,
    )
    floor = run_theory(preset, tmp_path, progress=False)
    assert set(floor["method"]) == {"sae (best)", "fista", "omp", "basis pursuit"}
    bp = floor[(floor["method"] == "basis pursuit") & (floor["dim"] == 6)].iloc[0]
    assert bp["exact_fraction"] == 1.0 and bp["mcc_error"] < 1e-6  # M = N: basis pursuit is exact
    rank = read_parquet(tmp_path / "rank_check.parquet")
    assert rank.loc[rank["dim"] == 6, "max_error"].iloc[0] < 1e-9
    assert rank.loc[rank["dim"] == 3, "max_error"].iloc[0] > 0.1
    for name in ("error_floor", "phase_transition", "rank_check"):
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    assert "Phase transition" in (tmp_path / "report.md").read_text()
