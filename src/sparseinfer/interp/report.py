"""The comparison table printed by `sparseinfer interpret` (rich), from scores and the per-metric comparison."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def comparison_table(scores: pd.DataFrame, comparison: pd.DataFrame) -> Table:
    """One row per (metric, encoder): n, mean ± std, Welch and Mann-Whitney p against the first encoder, s/latent."""
    table = Table(title="interpretability by encoder (tests against the first encoder, two-sided)")
    for col in ("metric", "encoder", "n", "mean", "std", "welch_p", "mannwhitney_p", "s/latent"):
        table.add_column(col, justify="left" if col in ("metric", "encoder") else "right")
    seconds = scores.groupby("encoder")["seconds"].mean() if "seconds" in scores else {}
    for row in comparison.to_dict("records"):
        table.add_row(row["metric"], row["encoder"], str(row["n"]), _fmt(row["mean"]), _fmt(row["std"]),
                      _fmt(row.get("welch_p")), _fmt(row.get("mannwhitney_p")),
                      _fmt(float(seconds.get(row["encoder"], float("nan"))), 1))  # fmt: skip
    return table
