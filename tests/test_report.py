"""The report layer on a synthetic results folder whose numbers are known by construction: summary statistics
against hand-computed mean/std, the frontier against a hand-solved case, and the files written."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from sparseinfer.cli.tables import print_study_tables
from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.figures import MeanCurve, data_seed_curve, frontier, mean_curve
from sparseinfer.experiments.report import (
    eng,
    load_results,
    spread_by_source,
    summarise,
    sweep_axes,
    write_report,
)

SETTINGS = ("known_codes", "learn_both")
# Final latent MCC of seeds 0, 1, 2: means and sample stds are easy by hand (e.g. 0.5, 0.6, 0.7 -> 0.6 ± 0.1).
FINAL = {
    ("known_codes", "sae"): (0.5, 0.6, 0.7),
    ("known_codes", "mlp-32"): (0.85, 0.9, 0.95),
    ("known_codes", "sae+ito"): (0.7, 0.75, 0.8),
    ("learn_both", "sae"): (0.4, 0.5, 0.6),
    ("learn_both", "mlp-32"): (0.6, 0.7, 0.8),
    ("learn_both", "sae+ito"): (0.9, 0.92, 0.94),
}
TRAIN_STEPS, ITO_STEPS, N_POINTS = 1000, 500, 21
STEP_FLOPS = {"sae": 1e6, "mlp-32": 1e7, "sae+ito": 1e6}
INFER_FLOPS = {"sae": 1e5, "mlp-32": 1e6, "sae+ito": 1e5}
ITO_STEP_FLOPS = 2e5


def _rise(start: float, end: float, n: int) -> np.ndarray:
    """A saturating curve from start to end in n points."""
    t = np.linspace(0, 1, n)
    return start + (end - start) * (1 - np.exp(-4 * t)) / (1 - np.exp(-4))


def _history(setting: str, method: str, final: float, sae_final: float) -> pd.DataFrame:
    steps = np.linspace(0, TRAIN_STEPS, N_POINTS).astype(int)
    train_flops = steps * STEP_FLOPS[method]
    train_end = final if method != "sae+ito" else sae_final
    hist = pd.DataFrame(
        {
            "step": steps,
            "phase": "train",
            "train_flops": train_flops.astype(np.int64),
            "inference_flops": np.int64(INFER_FLOPS[method]),
            "latent_mcc": _rise(0.1, train_end, N_POINTS),
            "dict_mcc": _rise(0.2, 0.95, N_POINTS) if setting == "learn_both" else np.nan,
            "loss": np.linspace(1, 0.1, N_POINTS),
        }
    )
    if method == "sae+ito":  # ITO restarts its step count; the report appends it after training
        ito_steps = np.linspace(0, ITO_STEPS, 11).astype(int)[1:]
        ito = pd.DataFrame(
            {
                "step": ito_steps,
                "phase": "ito",
                "train_flops": np.int64(train_flops[-1]),
                "inference_flops": (INFER_FLOPS[method] + ito_steps * ITO_STEP_FLOPS).astype(np.int64),
                "latent_mcc": _rise(sae_final, final, 11)[1:],
                "dict_mcc": 0.95 if setting == "learn_both" else np.nan,
                "loss": 0.05,
            }
        )
        hist = pd.concat([hist, ito], ignore_index=True)
    hist["total_flops"] = hist["train_flops"] + hist["inference_flops"]
    return hist


def _make_results_dir(root: Path, with_notes: bool = True) -> pd.DataFrame:
    rows = []
    for (setting, method), finals in FINAL.items():
        for seed, final in enumerate(finals):
            run_id = f"{setting}-{method}-s{seed}"
            hist = _history(setting, method, final, FINAL[(setting, "sae")][seed])
            (root / "runs" / run_id).mkdir(parents=True)
            hist.to_parquet(root / "runs" / run_id / "history.parquet", index=False)
            last = hist.iloc[-1]
            rows.append(
                {
                    "run_id": run_id,
                    "setting": setting,
                    "method": method,
                    "seed": seed,
                    "n_latents": 16,
                    "dim": 8,
                    "k": 3,
                    "latent_mcc": final,
                    "dict_mcc": 0.95 if setting == "learn_both" else np.nan,
                    "best_latent_mcc": final + 0.01 * seed,
                    "train_flops": int(last["train_flops"]),
                    "inference_flops": int(last["inference_flops"]),
                    "total_flops": int(last["total_flops"]),
                    "wall_time_s": 10.0 + seed,
                    "encoder.k": 3 if method == "sae" else None,
                }
            )
    results = pd.DataFrame(rows)
    results.to_parquet(root / "results.parquet", index=False)
    if with_notes:
        (root / "notes.md").write_text("- Dictionary MCC uses Hungarian matching (the original used greedy).\n")
    return results


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("results")
    _make_results_dir(root)
    out = io.StringIO()
    write_report(root)
    results = load_results(root)
    print_study_tables(summarise(results, sweep_axes(results)), Console(file=out, width=200, color_system=None))
    return root, out.getvalue()


def test_summary_matches_hand_computation(tmp_path: Path) -> None:
    summary = summarise(_make_results_dir(tmp_path))
    assert len(summary) == 6
    row = summary.set_index(["setting", "method"]).loc[("known_codes", "sae")]
    assert row["n_seeds"] == 3
    assert row["latent_mcc_mean"] == pytest.approx(0.6)
    assert row["latent_mcc_std"] == pytest.approx(0.1)  # sample std (ddof=1) of 0.5, 0.6, 0.7
    assert row["best_latent_mcc_mean"] == pytest.approx(0.61)  # 0.5, 0.61, 0.72
    assert row["best_latent_mcc_std"] == pytest.approx(0.11)
    assert np.isnan(row["dict_mcc_mean"])
    assert row["total_flops_mean"] == pytest.approx(TRAIN_STEPS * 1e6 + 1e5)
    assert row["wall_time_s_mean"] == pytest.approx(11.0)
    ito = summary.set_index(["setting", "method"]).loc[("learn_both", "sae+ito")]
    assert ito["latent_mcc_mean"] == pytest.approx(0.92)
    assert ito["latent_mcc_std"] == pytest.approx(0.02)
    assert ito["dict_mcc_mean"] == pytest.approx(0.95) and ito["dict_mcc_std"] == pytest.approx(0.0)
    assert ito["total_flops_mean"] == pytest.approx(TRAIN_STEPS * 1e6 + 1e5 + ITO_STEPS * ITO_STEP_FLOPS)
    # Within a setting, best latent MCC first.
    known = summary[summary["setting"] == "known_codes"]["method"].tolist()
    assert known == ["mlp-32", "sae+ito", "sae"]


def test_summary_group_by_splits_rows(tmp_path: Path) -> None:
    results = _make_results_dir(tmp_path)
    results.loc[results["seed"] == 2, "encoder.k"] = 5
    summary = summarise(results, group_by=("encoder.k",))
    sae = summary[(summary["setting"] == "known_codes") & (summary["method"] == "sae")]
    assert sorted(sae["n_seeds"]) == [1, 2]
    assert sae.set_index("encoder.k").loc[3.0, "latent_mcc_mean"] == pytest.approx(0.55)
    out = io.StringIO()
    print_study_tables(summary, Console(file=out, width=200, color_system=None))
    assert "encoder.k" in out.getvalue() and "0.550 ± 0.071" in out.getvalue()
    with pytest.raises(SparseInferError, match="no_such_column"):
        summarise(results, group_by=("no_such_column",))


def test_frontier_known_case() -> None:
    # A: cheap, plateaus at 0.6. B: starts later, peaks at 0.8 then declines (the running max keeps 0.8).
    curves = {"A": ([1, 10, 100], [0.2, 0.5, 0.6]), "B": ([10, 100, 1000], [0.1, 0.8, 0.7])}
    front = frontier(curves)
    assert front["budget"].tolist() == [1, 10, 100, 1000]
    assert front["method"].tolist() == ["A", "A", "B", "B"]
    np.testing.assert_allclose(front["mcc"], [0.2, 0.5, 0.8, 0.8])
    at = frontier(curves, budgets=[0.5, 50, 5000])
    assert at["method"].isna().tolist() == [True, False, False]
    assert at["method"].tolist()[1:] == ["A", "B"]
    np.testing.assert_allclose(at["mcc"], [np.nan, 0.5, 0.8])
    # Ties: the method that reached the value with fewer FLOPs wins (B, at 5), then the one listed first.
    tie = frontier({"A": ([1, 10], [0.1, 0.5]), "B": ([5, 20], [0.5, 0.5])})
    assert tie["method"].tolist() == ["A", "B", "B", "B"]
    assert frontier({"A": ([10], [0.5]), "B": ([10], [0.5])})["method"].tolist() == ["A"]
    with pytest.raises(SparseInferError, match="equal length"):
        frontier({"A": ([1, 2], [0.1])})


def test_mean_curve_exact_and_interpolated() -> None:
    same = mean_curve([([0, 1, 2], [0.0, 0.5, 1.0]), ([0, 1, 2], [0.2, 0.7, 1.0])])
    np.testing.assert_allclose(same.x, [0, 1, 2])
    np.testing.assert_allclose(same.mean, [0.1, 0.6, 1.0])
    np.testing.assert_allclose(same.std, [np.sqrt(0.02), np.sqrt(0.02), 0.0])
    # Different x: interpolated onto a grid over the common range [1, 4]; y = x and y = 2x give mean 1.5 x.
    diff = mean_curve([([0, 4], [0.0, 4.0]), ([1, 2, 5], [2.0, 4.0, 10.0])], n_grid=7)
    np.testing.assert_allclose(diff.x, np.linspace(1, 4, 7))
    np.testing.assert_allclose(diff.mean, 1.5 * diff.x)
    # Log-x interpolation is linear in log10(x): y = log10(x) is reproduced exactly.
    logc = mean_curve([([1, 1000], [0.0, 3.0]), ([1, 10, 1000], [0.0, 1.0, 3.0])], log_x=True, n_grid=4)
    np.testing.assert_allclose(logc.x, [1, 10, 100, 1000])
    np.testing.assert_allclose(logc.mean, [0, 1, 2, 3], atol=1e-12)


def test_eng_notation() -> None:
    assert eng(1.234e12) == "1.23e12"
    assert eng(4.5e8) == "450e6"
    assert eng(12345.0) == "12.3e3"
    assert eng(999.96) == "1.00e3"
    assert eng(7.0) == "7.00"
    assert eng(float("nan")) == "—"


def test_report_tables(report_dir: tuple[Path, str]) -> None:
    root, printed = report_dir
    assert "0.600 ± 0.100" in printed and "0.920 ± 0.020" in printed
    first_words = [line.split()[0] for line in printed.splitlines() if line.strip()]
    assert first_words[first_words.index("known_codes") :][4:7] == ["mlp-32", "sae+ito", "sae"]
    text = (root / "report.md").read_text()
    assert "## known_codes" in text and "## learn_both" in text
    assert "| sae | 3 | 0.600 ± 0.100 | 0.610 ± 0.110 | 1.00e9 | 11.0 |" in text
    assert "Hungarian matching" in text  # notes.md is included
    assert "figures/known_codes_mcc_vs_flops.png" in text and "figures/learn_both_frontier.pdf" in text
    assert "| mlp-32 | 0.900 |" in text  # frontier: mlp-32 best at the largest budgets (known codes)


def test_report_figures(report_dir: tuple[Path, str]) -> None:
    root, _ = report_dir
    for setting in SETTINGS:
        for kind in ("mcc_vs_step", "mcc_vs_flops", "frontier"):
            png = root / "figures" / f"{setting}_{kind}.png"
            pdf = png.with_suffix(".pdf")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
            assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000


def test_missing_and_bad_results(tmp_path: Path) -> None:
    with pytest.raises(SparseInferError, match=r"no results\.parquet"):
        write_report(tmp_path)
    pd.DataFrame({"run_id": pd.Series([], dtype=str)}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(SparseInferError, match="no runs"):
        load_results(tmp_path)
    pd.DataFrame({"run_id": ["a"], "setting": ["known_codes"], "method": ["sae"]}).to_parquet(
        tmp_path / "results.parquet"
    )
    with pytest.raises(SparseInferError, match="latent_mcc"):
        load_results(tmp_path)


def test_notes_with_their_own_heading_get_no_second_one(tmp_path: Path) -> None:
    _make_results_dir(tmp_path, with_notes=False)
    (tmp_path / "notes.md").write_text("## How this run follows the protocol\n- Hungarian matching.\n")
    text = write_report(tmp_path).read_text()
    assert "## How this run follows the protocol\n- Hungarian matching." in text
    assert "Notes on the protocol" not in text


def test_missing_history_is_noted_and_bad_history_rejected(tmp_path: Path) -> None:
    results = _make_results_dir(tmp_path, with_notes=False)
    results[results["setting"] == "known_codes"].to_parquet(tmp_path / "results.parquet", index=False)
    (tmp_path / "runs" / "known_codes-sae-s0" / "history.parquet").unlink()
    path = write_report(tmp_path)
    text = path.read_text()
    assert "No history file for 1 run(s)" in text and "known_codes-sae-s0" in text
    assert "Notes on the protocol" not in text
    pd.DataFrame({"step": [0], "phase": ["train"]}).to_parquet(
        tmp_path / "runs" / "known_codes-sae-s1" / "history.parquet"
    )
    with pytest.raises(SparseInferError, match="total_flops"):
        write_report(tmp_path)


def test_several_sizes_get_their_own_figures_and_columns(tmp_path: Path) -> None:
    results = _make_results_dir(tmp_path, with_notes=False)
    results = results[(results["setting"] == "known_codes") & (results["method"] == "sae")].copy()
    results.loc[results["seed"] == 2, ["n_latents", "dim"]] = [32, 16]
    results.to_parquet(tmp_path / "results.parquet", index=False)
    text = write_report(tmp_path).read_text()
    assert "| method | N | M | K | n |" in text
    assert "| sae | 16 | 8 | 3 | 2 | 0.550 ± 0.071 |" in text  # 0.5, 0.6: std = 0.1 / sqrt(2)
    assert "| sae | 32 | 16 | 3 | 1 | 0.700 |" in text  # one seed: no std
    for stem in ("known_codes_N16_M8_K3", "known_codes_N32_M16_K3"):
        assert (tmp_path / "figures" / f"{stem}_frontier.png").stat().st_size > 20_000
        assert f"figures/{stem}_mcc_vs_step.png" in text


def test_spread_by_source_known_case_and_scipy_anova() -> None:
    from scipy.stats import f_oneway

    values = pd.Series([0.5, 0.7, 0.8, 1.0, 0.55, 0.65])
    data = pd.Series([0, 0, 1, 1, 2, 2])
    model, between = spread_by_source(values, data)
    # Within-data-set variances 0.02, 0.02, 0.005 -> mean 0.015; data-set means 0.6, 0.9, 0.6 -> std sqrt(0.03).
    assert model == pytest.approx(np.sqrt(0.015)) and between == pytest.approx(np.sqrt(0.03))
    # One-way ANOVA with equal groups of n = 2: F = n * var(means) / mean within variance.
    f = f_oneway([0.5, 0.7], [0.8, 1.0], [0.55, 0.65]).statistic
    assert f == pytest.approx(2 * between**2 / model**2)
    one = spread_by_source(pd.Series([0.5, 0.6, 0.7]), pd.Series([4, 4, 4]))
    assert one[0] == pytest.approx(0.1) and np.isnan(one[1])
    single = spread_by_source(pd.Series([0.5, 0.9]), pd.Series([0, 1]))  # one model seed per data set
    assert np.isnan(single[0]) and single[1] == pytest.approx(np.std([0.5, 0.9], ddof=1))


def test_data_seed_curve_pools_model_variance_and_spreads_means() -> None:
    x = np.array([0.0, 1.0, 2.0])
    a = MeanCurve(x, np.array([0.1, 0.5, 0.6]), np.array([0.1, 0.2, np.nan]), 3)
    b = MeanCurve(x, np.array([0.3, 0.5, 0.8]), np.array([0.3, 0.0, np.nan]), 3)
    c = data_seed_curve([a, b])
    np.testing.assert_allclose(c.mean, [0.2, 0.5, 0.7])
    np.testing.assert_allclose(c.std, [np.sqrt(0.05), np.sqrt(0.02), np.nan])
    np.testing.assert_allclose(c.data_std, [np.sqrt(0.02), 0.0, np.sqrt(0.02)])
    assert (c.n_seeds, c.n_data_seeds) == (6, 2)
    with pytest.raises(SparseInferError, match="at least one"):
        data_seed_curve([])


def _with_data_seeds(root: Path) -> pd.DataFrame:
    """The known results on two data sets: data seed 1 adds 0.1 to every final MCC (and to its curve)."""
    results = _make_results_dir(root, with_notes=False)
    results["config.data.seed"] = 0
    second = results.copy()
    second["config.data.seed"] = 1
    second["latent_mcc"] += 0.1
    second["run_id"] += "-d1"
    for old, new in zip(results["run_id"], second["run_id"], strict=True):
        hist = pd.read_parquet(root / "runs" / old / "history.parquet")
        hist["latent_mcc"] += 0.1
        (root / "runs" / new).mkdir()
        hist.to_parquet(root / "runs" / new / "history.parquet", index=False)
    both = pd.concat([results, second], ignore_index=True)
    both.to_parquet(root / "results.parquet", index=False)
    return both


def test_data_seeds_are_pooled_with_the_spread_split_by_source(tmp_path: Path) -> None:
    results = _with_data_seeds(tmp_path)
    assert "config.data.seed" not in sweep_axes(results)
    summary = summarise(results, sweep_axes(results))
    row = summary.set_index(["setting", "method"]).loc[("known_codes", "sae")]
    assert (row["n_seeds"], row["n_data_seeds"]) == (6, 2)
    assert row["latent_mcc_mean"] == pytest.approx(0.65)  # 0.5, 0.6, 0.7 and 0.6, 0.7, 0.8
    assert row["latent_mcc_model_std"] == pytest.approx(0.1)
    assert row["latent_mcc_data_std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    text = write_report(tmp_path).read_text()
    assert "| method | n | latent MCC | data sets | ± model seeds | ± data seeds |" in text
    assert "| sae | 6 | 0.650 ± 0.105 | 2 | 0.100 | 0.071 |" in text
    assert "lighter one ± the data-seed std" in text
    assert (tmp_path / "figures" / "known_codes_mcc_vs_step.png").stat().st_size > 20_000
    one = summarise(results[results["config.data.seed"] == 0])
    assert one["n_data_seeds"].eq(1).all() and one["latent_mcc_data_std"].isna().all()
    np.testing.assert_allclose(one["latent_mcc_model_std"], one["latent_mcc_std"])
