"""Every table the command line prints (rich), built from the rows and DataFrames the library returns, and the
console they go to (full width in files and pipes). The library itself never prints."""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from sparseinfer.encoders import available, get
from sparseinfer.encoders.base import describe
from sparseinfer.evaluation.inference import InferenceReport
from sparseinfer.evaluation.matched import MATCHED_METRICS
from sparseinfer.evaluation.refine import RefineResult
from sparseinfer.experiments.report import group_columns, setting_tables


def terminal() -> Console:
    """A rich console sized for the output: the terminal's width, or 160 columns for files and pipes."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def inference_table(report: InferenceReport) -> Table:
    """A terminal table of one inference report."""
    table = Table(title=f"{report.encoder} on {report.n_samples} signals (N={report.n_latents}, M={report.dim})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.metrics.items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("FLOPs", f"{report.flops:.3e}")
    table.add_row("time (s)", f"{report.seconds:.4f}")
    if report.diagnostics:
        table.add_row("solver", report.diagnostics)
    return table


def _default(value: Any) -> str:
    return "required" if value is inspect.Parameter.empty else repr(value)


def encoder_table() -> Table:
    """Every registered encoder: name, kind, one-line description, and its declared hyperparameters (one a line:
    name=default, type, description)."""
    table = Table(title="registered encoders", show_lines=True)
    for column in ("name", "kind", "description", "hyperparameters"):
        table.add_column(column, overflow="fold")
    for name in available():
        params = "\n".join(f"{h.name}={_default(h.default)} ({h.type}) {h.description}" for h in describe(name))
        cls = get(name)
        table.add_row(name, cls.kind, cls.summary, params)
    return table


def refine_table(rows: list[RefineResult], title: str = "SAE codes vs refined codes") -> Table:
    """A terminal table of a comparison (downstream columns when the rows carry them)."""
    table = Table(title=title)
    extra = [c for c in ("ce", "loss_recovered", "kl") if all(hasattr(r, c) for r in rows) and rows]
    columns = ["method", "FVU", "L0", "FLOPs", "extra FLOPs", "calibration FLOPs", *extra, "detail"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("method", "detail") else "right")
    for r in rows:
        cal = f"{r.calibration_flops:.2e} ({r.calibration_samples} sig.)" if r.calibration_flops else "-"
        cells = [f"{getattr(r, c):.4f}" for c in extra]
        table.add_row(
            r.method, f"{r.fvu:.4f}", f"{r.l0:.2f}", f"{r.flops:.3e}", f"{r.extra_flops:.3e}", cal, *cells, r.detail
        )
    return table


RUN_COLUMNS = ["encoder", "l0", "fvu", "dead_fraction", "dense_fraction", "ce_clean", "ce", "ce_zero"]
RUN_COLUMNS += ["loss_recovered", "kl", "inference_flops_per_token", "train_flops"]
MATCHED_COLUMNS = ["target_l0", "encoder", "how", "l0", *MATCHED_METRICS]
TEXT_COLUMNS = ("encoder", "how")


def evaluation_table(table: pd.DataFrame, title: str = "dictionaries on held-out activations") -> Any:
    """A comparison table (per run, or `matched_l0`'s) as a rich table for the terminal."""
    from rich.table import Table

    columns = MATCHED_COLUMNS if "target_l0" in table else RUN_COLUMNS
    shown = Table(title=title)
    present = [c for c in columns if c in table]
    for c in present:
        shown.add_column(c, justify="left" if c in TEXT_COLUMNS else "right")
    for _, r in table.iterrows():
        shown.add_row(*(str(r[c]) if c in TEXT_COLUMNS else f"{r[c]:.4g}" for c in present))
    return shown


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(row: dict[str, Any], mean: str = "mean", low: str = "ci_low", high: str = "ci_high") -> str:
    if row.get(mean) is None or (isinstance(row.get(mean), float) and math.isnan(row[mean])):
        return "-"
    return f"{row[mean]:.3f} [{_fmt(row.get(low))}, {_fmt(row.get(high))}]"


def interpretability_table(scores: pd.DataFrame, comparison: pd.DataFrame,
                           controls: pd.DataFrame | None = None) -> Table:  # fmt: skip
    """One row per (metric, encoder): n, mean [bootstrap 95% interval], the test against the first encoder
    (paired on shared latents or unpaired), the difference of means [95% interval], p-values, s/latent; then the
    controls (planted features, shuffled explanations) when given, so every result is read next to them."""
    title = "interpretability by encoder (mean [95% bootstrap CI]; tests against the first encoder, two-sided)"
    table = Table(title=title)
    for col in ("metric", "encoder", "n", "mean [95% CI]", "test", "diff [95% CI]", "p (t)", "p (rank)", "s/latent"):
        table.add_column(col, justify="left" if col in ("metric", "encoder", "test") else "right")
    seconds = scores.groupby("encoder")["seconds"].mean() if "seconds" in scores and "encoder" in scores else {}
    for row in comparison.to_dict("records"):
        table.add_row(row["metric"], row["encoder"], str(row["n"]), _interval(row), str(row.get("test") or "-"),
                      _interval(row, "diff", "diff_low", "diff_high"), _fmt(row.get("t_p")), _fmt(row.get("rank_p")),
                      _fmt(float(seconds.get(row["encoder"], float("nan"))), 1))  # fmt: skip
    if controls is not None and len(controls):
        seconds = controls.groupby("control")["seconds"].mean() if "seconds" in controls else {}
        for row in control_rows(controls):
            table.add_row(row["metric"], f"control: {row['control']}", str(row["n"]), _interval(row), "-", "-", "-",
                          "-", _fmt(float(seconds.get(row["control"], float("nan"))), 1))  # fmt: skip
    return table


def control_rows(controls: pd.DataFrame) -> list[dict[str, Any]]:
    """Bootstrap mean and interval per (control, metric) of a `controls.parquet` table."""
    from sparseinfer.interp.controls import control_summary
    from sparseinfer.interp.latent import METRICS

    return control_summary(controls, list(METRICS)).to_dict("records")


def print_study_tables(summary: pd.DataFrame, console: Console) -> None:
    """Print one rich table per setting: "mean ± std" cells, FLOPs in engineering notation, best latent MCC first.
    Sweep axes (`group_by` columns of `summarise`) get their own columns."""
    group_by = group_columns(summary)
    for setting, size, headers, rows in setting_tables(summary):
        title = f"{setting} ({size})" if size else setting
        table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        for i, header in enumerate(headers):
            # Two-line headers, and cells never cut: the usual table fits an 80-column terminal.
            header = header.replace(" ", "\n", 1)
            width = max(len(line) for line in [*header.splitlines(), *(row[i] for row in rows)])
            justify = "left" if i < 1 + len(group_by) else "right"
            table.add_column(header, justify=justify, min_width=width, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)


LLM_COLUMNS = ("dictionary", "method", "target_l0", "l0", "fvu", "loss_recovered", "kl", "dead_fraction",
               "inference_flops_per_token")  # fmt: skip


def llm_study_table(results: Any) -> Table:
    """The LLM study's `results.parquet` (a path or a frame): one row per dictionary x method x target."""
    frame = pd.read_parquet(results) if not isinstance(results, pd.DataFrame) else results
    table = Table(title="language-model study: every method calibrated to its dictionary's target L0")
    present = [c for c in LLM_COLUMNS if c in frame]
    for c in [*present, "error"]:
        table.add_column(c, justify="left" if c in ("dictionary", "method", "error") else "right")
    for row in frame.to_dict("records"):
        cells = [str(row[c]) if isinstance(row[c], str) else _fmt(float(row[c]), 4) for c in present]
        table.add_row(*cells, str(row.get("error", ""))[:60])
    return table


def probe_table(frame: pd.DataFrame, ks: tuple[int, ...] = (1, 2, 5, 20)) -> Table:
    """Sparse probing / absorption rows (`probe_runs`' long format): one row per encoder, one column per task at
    each k and per absorption metric; cells are value [95% interval]."""
    table = Table(title="sparse probing (held-out accuracy) and first-letter absorption [95% bootstrap CI]")
    if len(frame):  # the dense probe also with every dimension (its largest k)
        frame = frame[frame["k"].isin([*ks, 0]) | (frame["encoder"] == "dense")]
    names = zip(frame["task"], frame["k"], frame["metric"], strict=True)
    columns = list(dict.fromkeys(f"{t} k={k}" if m == "accuracy" else m for t, k, m in names))
    table.add_column("encoder")
    for column in columns:
        table.add_column(column, justify="right")
    for (run, encoder), group in frame.groupby(["run", "encoder"], sort=False):
        cells = {}
        for row in group.to_dict("records"):
            key = f"{row['task']} k={row['k']}" if row["metric"] == "accuracy" else row["metric"]
            cells[key] = _interval(row, "value")
        table.add_row(encoder if not run else f"{encoder} ({run})", *(cells.get(c, "-") for c in columns))
    return table
