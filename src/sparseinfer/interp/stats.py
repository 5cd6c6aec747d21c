"""Statistics over per-latent interpretability scores: AUROC, bootstrap 95% intervals of a method's mean score,
and comparisons between methods: paired (Wilcoxon signed-rank and paired t on the latents both methods scored,
when they share a dictionary, e.g. one dictionary under different inference) or unpaired (Welch's t and
Mann-Whitney U) otherwise, each with a bootstrap interval of the difference of means."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats import rankdata

from sparseinfer.errors import SparseInferError

N_BOOT = 2000
LEVEL = 0.95


def auroc(scores: np.ndarray | list[float], labels: np.ndarray | list[bool]) -> float:
    """Area under the ROC curve of `scores` for binary `labels`: the probability that a random positive scores
    above a random negative, ties counting one half (the normalised Mann-Whitney U, from average ranks)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise SparseInferError(f"auroc needs 1-D scores and labels of one length, got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise SparseInferError("auroc scores contain NaN or Inf")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise SparseInferError("auroc needs at least one positive and one negative")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_mean(values: np.ndarray | list[float], n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """(mean, low, high): the mean of the finite `values` and its percentile-bootstrap `level` interval
    (resampling the values with replacement; a single value has a zero-width interval)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if not 0 < level < 1 or n_boot < 1:
        raise SparseInferError("bootstrap needs 0 < level < 1 and n_boot >= 1")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(v.mean()), float(low), float(high)


def _bootstrap_difference(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b), resampling each group on its own."""
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    db = b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(da - db, [tail, 100 - tail])
    return float(low), float(high)


def summarise(scores: pd.DataFrame, metrics: list[str], by: str = "encoder", n_boot: int = N_BOOT,
              seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """One row per (`by` group, metric): n (finite scores), mean, std and the bootstrap 95% interval of the mean."""
    if by not in scores:
        raise SparseInferError(f"scores need a column {by!r}")
    rows = []
    for metric in metrics:
        if metric not in scores:
            raise SparseInferError(f"scores have no column {metric!r}")
        for name, group in scores.groupby(by, sort=False):
            v = group[metric].to_numpy(float)
            v = v[np.isfinite(v)]
            mean, low, high = bootstrap_mean(v, n_boot, seed=seed)
            std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
            rows.append({by: name, "metric": metric, "n": int(v.size), "mean": mean, "std": std, "ci_low": low,
                         "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows)


def compare(scores: pd.DataFrame, metric: str, reference: str | None = None, n_boot: int = N_BOOT,
            seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per encoder: n, mean, std and bootstrap interval of `metric`, and a two-sided test against a reference
    encoder (column `reference`). Without `reference`: an encoder that shares its `dictionary` with an earlier one
    (e.g. ITO codes of an SAE's dictionary) is tested against the first encoder of that dictionary, every other
    encoder against the first encoder. Encoders that share a `dictionary` value with their reference and at least
    two latents are compared paired (per-latent differences: paired t, Wilcoxon signed-rank); others unpaired
    (Welch's t, Mann-Whitney U). `diff` is mean(encoder) - mean(reference) with its bootstrap interval."""
    if metric not in scores or "encoder" not in scores:
        raise SparseInferError(f"scores need columns 'encoder' and {metric!r}")
    finite = scores[np.isfinite(scores[metric].to_numpy(float))]
    names = list(dict.fromkeys(scores["encoder"]))
    if reference is not None and reference not in names:
        raise SparseInferError(f"no encoder {reference!r} among {sorted(names)}")
    encoders = scores.drop_duplicates("encoder")
    owner = dict(zip(encoders["encoder"], encoders["dictionary"], strict=True)) if "dictionary" in scores else {}
    first_of: dict[Any, str] = {}  # dictionary (None: unknown) -> its first encoder
    for name in names:
        first_of.setdefault(owner.get(name), name)
    summary = summarise(scores, [metric], n_boot=n_boot, seed=seed).set_index("encoder")
    rows = []
    for name in names:
        row = {"encoder": name, "metric": metric, **summary.loc[name].drop("metric").to_dict()}
        row["n"] = int(row["n"])
        against = reference if reference is not None else first_of[owner.get(name)]
        if against == name and reference is None:  # its dictionary's first encoder: against the first encoder
            against = names[0]
        if name != against:
            row["reference"] = against
            row |= _test(finite[finite["encoder"] == name], finite[finite["encoder"] == against], metric, n_boot,
                         seed)  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def _test(mine: pd.DataFrame, ref: pd.DataFrame, metric: str, n_boot: int, seed: int) -> dict[str, object]:
    pairs = pd.DataFrame()
    if "dictionary" in mine and "dictionary" in ref:
        pairs = mine.merge(ref, on=["dictionary", "latent"], suffixes=("", "_ref"))
    if len(pairs) >= 2:
        a, b = pairs[metric].to_numpy(float), pairs[f"{metric}_ref"].to_numpy(float)
        d = a - b
        low, high = bootstrap_mean(d, n_boot, seed=seed)[1:]
        out: dict[str, object] = {"test": "paired", "n_pairs": len(d), "diff": float(d.mean()), "diff_low": low,
                                  "diff_high": high}  # fmt: skip
        out["t_p"] = float(stats.ttest_rel(a, b).pvalue) if d.std() > 0 else (1.0 if d.mean() == 0 else 0.0)
        out["rank_p"] = float(stats.wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
        return out
    a, b = mine[metric].to_numpy(float), ref[metric].to_numpy(float)
    if a.size < 2 or b.size < 2:
        return {"test": "", "n_pairs": 0}
    low, high = _bootstrap_difference(a, b, n_boot, seed)
    out = {"test": "unpaired", "n_pairs": 0, "diff": float(a.mean() - b.mean()), "diff_low": low, "diff_high": high}
    out["t_stat"], out["t_p"] = (float(x) for x in stats.ttest_ind(a, b, equal_var=False))
    out["rank_stat"], out["rank_p"] = (float(x) for x in stats.mannwhitneyu(a, b, alternative="two-sided"))
    return out
