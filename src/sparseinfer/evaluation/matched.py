"""Comparison at matched L0: encoders differ in L0, so raw rows are not comparable. For each target L0 (default:
every L0 that some run reached) and each encoder label, the metrics (FVU, CE, loss recovered, KL, inference FLOPs per
token) are interpolated linearly in log L0 between that encoder's two runs bracketing the target ("interpolated";
"exact" when a run sits at the target), or, when the target lies outside the encoder's range (e.g. a single run),
taken from its nearest run in log L0 ("nearest", with that run's own L0 shown). Rows calibrated to a target
(a `target_l0` column, see `calibrate`) are used at their own target as they are ("calibrated")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

MATCHED_METRICS = ("fvu", "ce", "loss_recovered", "kl", "inference_flops_per_token")


def _at_l0(runs: pd.DataFrame, target: float, metrics: list[str]) -> dict[str, Any]:
    """One encoder's metrics at `target` L0: interpolated in log L0 between bracketing runs, else the nearest run."""
    runs = runs.sort_values("l0")
    logs = np.log(runs["l0"].clip(lower=1e-9).to_numpy(dtype=float))
    t = math.log(max(target, 1e-9))
    hit = np.isclose(logs, t, rtol=0, atol=1e-9)
    if hit.any():
        row = runs.iloc[int(np.argmax(hit))]
        return {"how": "exact", "l0": float(row["l0"]), **{m: float(row[m]) for m in metrics}}
    if len(runs) >= 2 and logs[0] < t < logs[-1]:
        hi = int(np.searchsorted(logs, t))
        w = (t - logs[hi - 1]) / (logs[hi] - logs[hi - 1])
        lo_row, hi_row = runs.iloc[hi - 1], runs.iloc[hi]
        values = {m: float((1 - w) * lo_row[m] + w * hi_row[m]) for m in metrics}
        return {"how": "interpolated", "l0": float(target), **values}
    row = runs.iloc[int(np.argmin(np.abs(logs - t)))]
    return {"how": "nearest", "l0": float(row["l0"]), **{m: float(row[m]) for m in metrics}}


def matched_l0(table: pd.DataFrame, targets: list[float] | None = None) -> pd.DataFrame:
    """Every encoder label at every target L0 (see the module docstring), sorted by target then FVU."""
    metrics = [m for m in MATCHED_METRICS if m in table]
    calibrated = table["target_l0"].notna() if "target_l0" in table else pd.Series(False, index=table.index)
    if targets is None:
        source = table.loc[calibrated, "target_l0"] if calibrated.any() else table["l0"]
        targets = sorted({float(f"{v:.3g}") for v in source})
    rows = []
    for target in targets:
        for label, runs in table.groupby("encoder", sort=False):
            mine = calibrated.loc[runs.index]
            if mine.any():
                hit = runs[mine & (runs["target_l0"] == target)]
                if len(hit):
                    row = hit.iloc[0]
                    rows.append({"target_l0": target, "encoder": label, "how": "calibrated", "l0": float(row["l0"]),
                                 **{m: float(row[m]) for m in metrics}})  # fmt: skip
                continue
            rows.append({"target_l0": target, "encoder": label, **_at_l0(runs, target, metrics)})
    return pd.DataFrame(rows).sort_values(["target_l0", "fvu"], kind="stable").reset_index(drop=True)
