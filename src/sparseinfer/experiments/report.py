"""The report of a sweep, read only from its plain result files: a summary table (mean ± std over seeds) per
setting in the terminal and in `report.md`, and the figures of `figures.py` linked from it.

Inputs: `results_dir/results.parquet` (one row per run) and `results_dir/runs/<run_id>/history.parquet` (one row per
evaluation point of a run). Optional `results_dir/notes.md` (the protocol's fixed defects) is included verbatim.

Runs that differ only in their data seed (`config.data.seed`) are replicates, like model seeds: they are pooled, and
when a method ran on several data sets the tables split its spread into the spread over model seeds (the pooled
within-data-set std) and the spread over data seeds (the std of the per-data-set means).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.figures import (
    CURVE_COLUMNS,
    SIZE_COLUMNS,
    FigureSet,
    colour_map,
    equal_runs,
    write_figures,
)
from sparseinfer.experiments.files import RESULTS_TABLE, RUNS_DIR, read_parquet

HISTORY_FILE = "history.parquet"
REPORT_FILE = "report.md"
NOTES_FILE = "notes.md"
FIGURES_DIR = "figures"
DATA_SEED_COLUMN = "config.data.seed"
METRICS = ("latent_mcc", "best_latent_mcc", "dict_mcc")
REQUIRED_COLUMNS = (
    "run_id",
    "setting",
    "method",
    "seed",
    *SIZE_COLUMNS,
    *METRICS,
    "total_flops",
    "wall_time_s",
)
HISTORY_COLUMNS = ("step", "phase", "total_flops", "latent_mcc")
_HEADERS = {
    "latent_mcc": "latent MCC",
    "best_latent_mcc": "best latent MCC",
    "dict_mcc": "dict MCC",
    "total_flops_mean": "total FLOPs",
    "wall_time_s_mean": "wall time (s)",
    "n_data_seeds": "data sets",
    "latent_mcc_model_std": "± model seeds",
    "latent_mcc_data_std": "± data seeds",
}


def data_seeds(results: pd.DataFrame) -> pd.Series:
    """Each run's data seed (`config.data.seed`); 0 for results written before the column existed."""
    if DATA_SEED_COLUMN in results:
        return results[DATA_SEED_COLUMN].fillna(0).astype(int)
    return pd.Series(0, index=results.index, dtype=int)


def spread_by_source(values: pd.Series, data_seed: pd.Series) -> tuple[float, float]:
    """(model-seed std, data-seed std) of one method's runs: the root of the mean, over data sets, of the sample
    variance over model seeds (data sets with one run left out); and the sample std of the per-data-set means (NaN
    with one data set)."""
    frame = pd.DataFrame({"v": values.to_numpy(float), "d": data_seed.to_numpy()})
    by_data = frame.groupby("d")["v"]
    within = by_data.var(ddof=1).dropna()
    means = by_data.mean().dropna()
    model = float(np.sqrt(within.mean())) if len(within) else math.nan
    data = float(means.std(ddof=1)) if len(means) > 1 else math.nan
    return model, data


def summarise(results: pd.DataFrame, group_by: Sequence[str] = ()) -> pd.DataFrame:
    """Aggregate runs over seeds (model and data seeds) per (setting, method, *group_by, n_latents, dim, k): n_seeds
    (runs), n_data_seeds, mean and sample std (ddof=1, NaN for one run) of each MCC, the latent MCC's spread split by
    source (`spread_by_source`: latent_mcc_model_std, latent_mcc_data_std), mean total FLOPs and mean wall time.
    Sorted by setting, size, and latent MCC (best first)."""
    _require(results, (*REQUIRED_COLUMNS[1:], *group_by), "results")
    keys = ["setting", "method", *(c for c in group_by if c not in ("setting", "method", *SIZE_COLUMNS))]
    keys += SIZE_COLUMNS
    results = results.assign(_data_seed=data_seeds(results))
    grouped = results.groupby(keys, dropna=False, sort=False)
    table = grouped.size().rename("n_seeds").to_frame()
    table["n_data_seeds"] = grouped["_data_seed"].nunique()
    for metric in METRICS:
        table[f"{metric}_mean"] = grouped[metric].mean()
        table[f"{metric}_std"] = grouped[metric].std(ddof=1)
    spreads = grouped.apply(lambda g: spread_by_source(g["latent_mcc"], g["_data_seed"]), include_groups=False)
    table["latent_mcc_model_std"] = spreads.map(lambda t: t[0])
    table["latent_mcc_data_std"] = spreads.map(lambda t: t[1])
    table["total_flops_mean"] = grouped["total_flops"].mean()
    table["wall_time_s_mean"] = grouped["wall_time_s"].mean()
    table = table.reset_index()
    order = ["setting", *SIZE_COLUMNS, "latent_mcc_mean"]
    return table.sort_values(order, ascending=[True] * 4 + [False], na_position="last", kind="stable").reset_index(
        drop=True
    )


def markdown_tables(summary: pd.DataFrame) -> dict[str, str]:
    """The same tables as `print_tables`, as GitHub markdown (size line first when there is one size), by setting."""
    out = {}
    for setting, size, headers, rows in setting_tables(summary):
        lines = [f"Size: {size}", ""] if size else []
        lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        out[setting] = "\n".join(lines)
    return out


def load_results(results_dir: Path) -> pd.DataFrame:
    """Read `results_dir/results.parquet`; missing, empty or lacking the required columns is a SparseInferError."""
    path = Path(results_dir) / RESULTS_TABLE
    if not path.is_file():
        raise SparseInferError(f"no {RESULTS_TABLE} in {results_dir}: run the sweep first (or point at its folder)")
    results = read_parquet(path)
    if results.empty:
        raise SparseInferError(f"{path} has no runs: nothing to report")
    _require(results, REQUIRED_COLUMNS, str(path))
    return results


def load_histories(
    results_dir: Path, results: pd.DataFrame, group_by: Sequence[str] = ()
) -> tuple[pd.DataFrame, list[str]]:
    """Every run's history with its setting, label, size and data seed attached (`figures.CURVE_COLUMNS` plus
    dict_mcc and data_seed), and the run ids whose history file is absent."""
    frames, absent = [], []
    labels = run_labels(results, group_by)
    seeds = data_seeds(results).reset_index(drop=True)
    for i, run in results.reset_index(drop=True).iterrows():
        path = Path(results_dir) / RUNS_DIR / str(run["run_id"]) / HISTORY_FILE
        if not path.is_file():
            absent.append(str(run["run_id"]))
            continue
        history = read_parquet(path)
        _require(history, HISTORY_COLUMNS, str(path))
        extra = {c: run[c] for c in ("run_id", "setting", *SIZE_COLUMNS)}
        frames.append(history.assign(label=labels.iloc[i], data_seed=seeds.iloc[i], **extra))
    columns = [*CURVE_COLUMNS, "dict_mcc", "data_seed"]
    if not frames:
        return pd.DataFrame(columns=columns), absent
    curves = pd.concat(frames, ignore_index=True)
    if "dict_mcc" not in curves:
        curves["dict_mcc"] = np.nan
    return curves[columns], absent


def run_labels(results: pd.DataFrame, group_by: Sequence[str] = ()) -> pd.Series:
    """A run's curve label: its method, plus its `group_by` values in brackets ("sae [encoder.k=3]")."""
    if not group_by:
        return results["method"].astype(str).reset_index(drop=True)
    parts = [results[c].map(lambda v, c=c: f"{c}={_value(v)}") for c in group_by]
    joined = pd.concat(parts, axis=1).agg(", ".join, axis=1)
    return (results["method"].astype(str) + " [" + joined + "]").reset_index(drop=True)


def write_report(results_dir: Path, group_by: Sequence[str] = ()) -> Path:
    """Read the sweep in `results_dir`, draw its figures into `results_dir/figures/` and write
    `results_dir/report.md` (tables, figure links, frontier winners, notes). Returns the report's path."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    group_by = tuple(group_by) or sweep_axes(results)
    summary = summarise(results, group_by)
    curves, absent = load_histories(results_dir, results, group_by)
    colours = colour_map(run_labels(results, group_by))
    sets = write_figures(curves, results_dir / FIGURES_DIR, colours) if len(curves) else []
    text = _markdown(results_dir, results, summary, sets, absent)
    path = results_dir / REPORT_FILE
    path.write_text(text, encoding="utf-8")
    return path


def sweep_axes(results: pd.DataFrame) -> tuple[str, ...]:
    """Config columns (`config.*`) that vary within some (setting, method) group: the sweep's hyperparameter axes,
    which the tables and curves must keep apart rather than average over. The data seed is not one (a replicate)."""
    axes = []
    replicates = (DATA_SEED_COLUMN,)  # data seeds are pooled like model seeds, not kept apart
    for column in sorted(c for c in results.columns if c.startswith("config.") and c not in replicates):
        values = results[column].astype(str)
        if values.groupby([results["setting"], results["method"]]).nunique().max() > 1:
            axes.append(column)
    return tuple(axes)


def eng(value: float) -> str:
    """Engineering notation with three significant figures: 1.23e12, 450e6, 12.3e9; '—' for NaN."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    exp = 3 * math.floor(math.log10(abs(value)) / 3)
    mant = float(f"{value / 10**exp:.3g}")
    if abs(mant) >= 1000:
        mant, exp = mant / 1000, exp + 3
    digits = 2 - math.floor(math.log10(abs(mant)))
    text = f"{mant:.{max(digits, 0)}f}"
    return text if exp == 0 else f"{text}e{exp}"


def _markdown(
    results_dir: Path,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    sets: list[FigureSet],
    absent: list[str],
) -> str:
    """The text of report.md."""
    lines = [
        "# sparseinfer report",
        "",
        f"{len(results)} runs from `{RESULTS_TABLE}`; cells are mean ± std over seeds (sample std); "
        "MCC on the test set; total FLOPs = training + inference of the test codes.",
        "",
    ]
    if summary["n_data_seeds"].max() > 1:
        lines += [
            "Methods ran on several data sets (data seeds): mean and ± pool every run; '± model seeds' is the "
            "root mean within-data-set variance over model seeds, '± data seeds' the std of the per-data-set means "
            "(latent MCC). Figures: the darker band is ± the model-seed std, the lighter one ± the data-seed std.",
            "",
        ]
    notes = results_dir / NOTES_FILE
    if notes.is_file():
        text = notes.read_text(encoding="utf-8").strip()
        heading = [] if text.startswith("#") else ["## Notes on the protocol", ""]  # notes with their own heading
        lines += [*heading, text, ""]
    if absent:
        shown = ", ".join(absent[:10]) + (f", … ({len(absent)} in all)" if len(absent) > 10 else "")
        lines += [f"> No history file for {len(absent)} run(s), left out of the figures: {shown}", ""]
    tables = markdown_tables(summary)
    for setting, table in tables.items():
        lines += [f"## {setting}", "", table, ""]
        for fs in (s for s in sets if s.setting == setting):
            if fs.size is not None:
                lines += [f"### Figures for N={fs.size[0]}, M={fs.size[1]}, K={fs.size[2]}", ""]
            for kind, caption in (("step", "MCC vs step"), ("flops", "MCC vs FLOPs"), ("frontier", "frontier")):
                png = fs.files[kind].relative_to(results_dir).as_posix()
                lines += [f"![{setting}: {caption}]({png}) ([PDF]({png[:-4]}.pdf))", ""]
            lines += [*_frontier_text(fs.frontier), ""]
    return "\n".join(lines).rstrip() + "\n"


def _frontier_text(front: pd.DataFrame) -> list[str]:
    """Which method is on the compute-optimal frontier over which FLOP range."""
    front = front.dropna(subset=["method"]).reset_index(drop=True)
    if front.empty:
        return []
    lines = ["Compute-optimal frontier (best latent MCC reachable within each FLOP budget):", ""]
    lines += ["| FLOP budget from | to | best method | MCC reached |", "|---|---|---|---|"]
    for start, stop in equal_runs(front["method"].tolist()):
        seg = front.iloc[start:stop]
        lines.append(
            f"| {eng(seg['budget'].iloc[0])} | {eng(seg['budget'].iloc[-1])} | {seg['method'].iloc[0]} "
            f"| {seg['mcc'].iloc[-1]:.3f} |"
        )
    return lines


def group_columns(summary: pd.DataFrame) -> list[str]:
    """The sweep-axis columns of a `summarise` table: those between method and n_latents."""
    columns = list(summary.columns)
    return columns[columns.index("method") + 1 : columns.index(SIZE_COLUMNS[0])]


def setting_tables(summary: pd.DataFrame) -> list[tuple[str, str, list[str], list[list]]]:
    """(setting, size text, headers, formatted rows) per setting, rows sorted by latent MCC (best first). The size
    text ("N=16, M=8, K=3") is set when a setting has one size, else sizes are columns; all-NaN metrics are left out."""
    group_by = group_columns(summary)
    out = []
    for setting, part in summary.groupby("setting", sort=True):
        part = part.sort_values("latent_mcc_mean", ascending=False, na_position="last", kind="stable")
        sizes = part[list(SIZE_COLUMNS)].drop_duplicates()
        one_size = len(sizes) == 1
        size = "N={}, M={}, K={}".format(*sizes.iloc[0]) if one_size else ""
        metrics = [m for m in METRICS if part[f"{m}_mean"].notna().any()]
        several = "n_data_seeds" in part and part["n_data_seeds"].max() > 1 and metrics[:1] == ["latent_mcc"]
        split = ["n_data_seeds", "latent_mcc_model_std", "latent_mcc_data_std"] if several else []
        headers = ["method", *group_by, *([] if one_size else ["N", "M", "K"]), "n"]
        headers += [_HEADERS[m] for m in metrics[:1]] + [_HEADERS[c] for c in split]
        headers += [_HEADERS[m] for m in metrics[1:]] + [_HEADERS["total_flops_mean"], _HEADERS["wall_time_s_mean"]]
        rows = []
        for _, r in part.iterrows():
            row = [str(r["method"]), *(_value(r[c]) for c in group_by)]
            row += [] if one_size else [str(int(r[c])) for c in SIZE_COLUMNS]
            cells = [_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in metrics]
            spread = [str(int(r[split[0]])), *(_std(r[c]) for c in split[1:])] if several else []
            row += [str(int(r["n_seeds"])), *cells[:1], *spread, *cells[1:]]
            row += [eng(r["total_flops_mean"]), f"{r['wall_time_s_mean']:.1f}"]
            rows.append(row)
        out.append((str(setting), size, headers, rows))
    return out


def _pm(mean: float, std: float) -> str:
    """'0.912 ± 0.013'; just the mean with one seed; '—' when undefined."""
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f}"


def _std(value: float) -> str:
    """'0.013'; '—' when undefined."""
    return f"{value:.3f}" if np.isfinite(value) else "—"


def _value(v: object) -> str:
    """A hyperparameter value for a label or cell: compact numbers, 'None' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "None"
    if isinstance(v, float | np.floating):
        return f"{float(v):g}"
    return str(v)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SparseInferError(f"{what} lacks required column(s): {', '.join(missing)}")
