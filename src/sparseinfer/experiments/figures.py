"""Figures of a sweep, drawn from run histories only: MCC against training step and against total FLOPs (mean ± std
over seeds), and the compute-optimal frontier (which method is best at each FLOP budget). A method run on several
data sets (histories with a `data_seed` column) gets two bands: ± the model-seed std (pooled within data sets) and,
lighter, ± the data-seed std (of the per-data-set mean curves).

Uses matplotlib's object API (`Figure`, no pyplot), so it runs headless on the Agg canvas and changes no global
state. Every figure is saved as PNG (dpi 150) and PDF.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from numpy.typing import ArrayLike

from sparseinfer.errors import SparseInferError

TRAIN_PHASE = "train"
SIZE_COLUMNS = ("n_latents", "dim", "k")
CURVE_COLUMNS = ("run_id", "setting", "label", *SIZE_COLUMNS, "step", "phase", "total_flops", "latent_mcc")
DPI = 150
N_GRID = 300
_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_X_LABELS = {
    "step": "training step (ITO steps appended after training)",
    "flops": "total FLOPs (training + test inference)",
}
_Y_LABELS = {"latent_mcc": "latent MCC (test set)", "dict_mcc": "dictionary MCC"}


@dataclass(frozen=True)
class MeanCurve:
    """A label's curve averaged over seeds on a common x grid; `std` is NaN where fewer than two seeds cover x."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n_seeds: int
    post_start: float | None = None  # x where the post-training (ITO) phase begins, median over seeds
    data_std: np.ndarray | None = None  # std over data seeds of the per-data-set means (several data sets only)
    n_data_seeds: int = 1


@dataclass
class FigureSet:
    """The figures of one setting (and one size, when the setting has several) plus its frontier table."""

    setting: str
    size: tuple[int, int, int] | None
    files: dict[str, Path] = field(default_factory=dict)  # kind ("step", "flops", "frontier") -> PNG path
    frontier: pd.DataFrame = field(default_factory=pd.DataFrame)


def colour_map(labels: Iterable[str]) -> dict[str, tuple[float, float, float, float]]:
    """One fixed colour per label, assigned in sorted order, so a method keeps its colour in every figure."""
    names = sorted(set(labels))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    if len(names) <= cmap.N:
        return {name: cmap(i) for i, name in enumerate(names)}
    wide = matplotlib.colormaps["turbo"]
    return {name: wide(i / max(len(names) - 1, 1)) for i, name in enumerate(names)}


def mean_curve(series: Sequence[tuple[ArrayLike, ArrayLike]], log_x: bool = False, n_grid: int = N_GRID) -> MeanCurve:
    """Average seeds' (x, y) curves: exactly when all share the same x, else by linear interpolation (in log x
    when `log_x`) onto `n_grid` points spanning the x range every seed covers (the union if they do not overlap)."""
    runs = [_clean(x, y, log_x) for x, y in series]
    runs = [(x, y) for x, y in runs if len(x)]
    if not runs:
        raise SparseInferError("mean_curve needs at least one curve with a finite point")
    if all(len(x) == len(runs[0][0]) and np.array_equal(x, runs[0][0]) for x, _ in runs):
        grid, ys = runs[0][0], np.stack([y for _, y in runs])
    else:
        lo, hi = max(x[0] for x, _ in runs), min(x[-1] for x, _ in runs)
        if lo >= hi:
            lo, hi = min(x[0] for x, _ in runs), max(x[-1] for x, _ in runs)
        grid = np.geomspace(lo, hi, n_grid) if log_x else np.linspace(lo, hi, n_grid)
        t = np.log10 if log_x else (lambda v: v)
        ys = np.stack([np.interp(t(grid), t(x), y, left=np.nan, right=np.nan) for x, y in runs])
    count = np.isfinite(ys).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(ys, axis=0) / np.where(count > 0, count, np.nan)
        var = np.nansum((ys - mean) ** 2, axis=0) / np.where(count > 1, count - 1, np.nan)
    return MeanCurve(x=grid, mean=mean, std=np.sqrt(var), n_seeds=len(runs))


def data_seed_curve(per_data_seed: Sequence[MeanCurve], log_x: bool = False, n_grid: int = N_GRID) -> MeanCurve:
    """Combine one mean curve per data set: the mean of their means, `std` the root mean of their model-seed
    variances (NaN where no data set has two seeds), `data_std` the sample std of their means."""
    if not per_data_seed:
        raise SparseInferError("data_seed_curve needs at least one curve")
    between = mean_curve([(c.x, c.mean) for c in per_data_seed], log_x, n_grid)
    t = np.log10 if log_x else (lambda v: v)
    variances = []
    for c in per_data_seed:
        ok = np.isfinite(c.x) & ((c.x > 0) if log_x else True)
        var = np.interp(t(between.x), t(c.x[ok]), c.std[ok] ** 2, left=np.nan, right=np.nan)
        variances.append(var)
    stacked = np.stack(variances)
    count = np.isfinite(stacked).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        within = np.sqrt(np.nansum(stacked, axis=0) / np.where(count > 0, count, np.nan))
    n_seeds = sum(c.n_seeds for c in per_data_seed)
    return MeanCurve(between.x, between.mean, within, n_seeds, None, between.std, len(per_data_seed))


def frontier(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], budgets: ArrayLike | None = None) -> pd.DataFrame:
    """The compute-optimal frontier: for each FLOP budget B, the method whose curve reaches the highest MCC at a
    point costing at most B (a run can stop early, so each curve counts by its running maximum).

    `curves` maps a method to (flops, mcc) points; `budgets` defaults to every point's FLOPs. Returns columns
    budget, method, mcc, sorted by budget; method is missing (NA) and mcc NaN where no curve has started yet. Ties
    go to the method that reached the value with fewer FLOPs, then to the one listed first.
    """
    prepared = {name: _running_best(name, x, y) for name, (x, y) in curves.items()}
    if budgets is None:
        points = [x for x, _, _ in prepared.values()]
        budgets = np.unique(np.concatenate(points)) if points else np.array([])
    budgets = np.sort(np.asarray(budgets, dtype=float).ravel())
    best, best_cost = np.full(budgets.shape, -np.inf), np.full(budgets.shape, np.inf)
    winner: list[str | None] = [None] * len(budgets)
    for name, (x, value, cost) in prepared.items():
        idx = np.searchsorted(x, budgets, side="right") - 1
        ok = idx >= 0
        v = np.where(ok, value[np.clip(idx, 0, None)] if len(x) else -np.inf, -np.inf)
        c = np.where(ok, cost[np.clip(idx, 0, None)] if len(x) else np.inf, np.inf)
        for i in np.flatnonzero(ok & ((v > best) | ((v == best) & (c < best_cost)))):
            best[i], best_cost[i], winner[i] = v[i], c[i], name
    return pd.DataFrame({"budget": budgets, "method": winner, "mcc": np.where(np.isfinite(best), best, np.nan)})


def _running_best(name: str, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A curve's finite points sorted by FLOPs, its running maximum, and the FLOPs at which that maximum was reached."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise SparseInferError(f"frontier: curve {name!r} needs 1-D flops and mcc of equal length")
    if not np.isfinite(x).all() or np.isinf(y).any():
        raise SparseInferError(f"frontier: curve {name!r} has NaN/Inf FLOPs or infinite MCC")
    keep = np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    x, y = x[keep][order], y[keep][order]
    if not len(x):
        return x, y, x
    running = np.maximum.accumulate(y)
    rises = np.concatenate([[True], y[1:] > running[:-1]])
    reached = np.maximum.accumulate(np.where(rises, np.arange(len(y)), 0))
    return x, running, x[reached]


def write_figures(
    curves: pd.DataFrame, out_dir: Path, colours: Mapping[str, tuple[float, ...]] | None = None
) -> list[FigureSet]:
    """Draw every figure for the histories in `curves` (one row per history point, columns `CURVE_COLUMNS` plus
    optional `dict_mcc`) into `out_dir`; one set per setting and per (n_latents, dim, k) when a setting has several."""
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise SparseInferError(f"history table lacks column(s): {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = dict(colours) if colours is not None else colour_map(curves["label"].astype(str))
    sets = []
    with matplotlib.rc_context(_STYLE):
        for setting, by_setting in curves.groupby("setting", sort=True):
            by_size = list(by_setting.groupby(list(SIZE_COLUMNS), sort=True))
            for size, part in by_size:
                size_t = tuple(int(v) for v in size)
                sets.append(_figure_set(str(setting), size_t, len(by_size) > 1, part, out_dir, colours))
    return sets


def _figure_set(
    setting: str, size: tuple[int, int, int], several: bool, part: pd.DataFrame, out_dir: Path, colours: Mapping
) -> FigureSet:
    """The three figures of one (setting, size)."""
    stem = _slug(setting) + (f"_N{size[0]}_M{size[1]}_K{size[2]}" if several else "")
    size_text = f"N={size[0]}, M={size[1]}, K={size[2]}"
    panels = ["latent_mcc"] + (["dict_mcc"] if _informative(part, "dict_mcc") else [])
    result = FigureSet(setting=setting, size=size if several else None)
    flops_curves = {}
    for axis in ("step", "flops"):
        fig, axes = _panels(len(panels))
        handles: dict[str, Line2D] = {}
        post_phase = data_bands = False
        for ax, metric in zip(axes, panels, strict=True):
            mean_curves = _label_curves(part, axis, metric)
            if axis == "flops" and metric == "latent_mcc":
                flops_curves = mean_curves
            post_phase |= any(c.post_start is not None for c in mean_curves.values())
            data_bands |= any(c.n_data_seeds > 1 for c in mean_curves.values())
            handles.update(_draw_curves(ax, mean_curves, colours, log_x=axis == "flops"))
            ax.set_xlabel(_X_LABELS[axis])
            ax.set_ylabel(_Y_LABELS[metric])
            ax.set_title(_Y_LABELS[metric].split(" (")[0])
        what = "training step" if axis == "step" else "total FLOPs"
        over = "model and data seeds" if data_bands else "seeds"
        fig.suptitle(f"{setting}: MCC vs {what}\n({size_text}; mean ± std over {over})")  # two lines: fits
        _legend(fig, [handles[k] for k in sorted(handles)], post_phase=post_phase, data_bands=data_bands)
        result.files[axis] = _save(fig, out_dir / f"{stem}_mcc_vs_{axis}")
    front = frontier({name: (c.x, c.mean) for name, c in flops_curves.items()})
    result.frontier = front
    fig, (ax,) = _panels(1)
    handles = _draw_frontier(ax, flops_curves, front, colours)
    ax.set_xlabel(_X_LABELS["flops"])
    ax.set_ylabel("best latent MCC reachable within budget")
    fig.suptitle(f"{setting}: compute-optimal frontier ({size_text})")
    _legend(fig, handles, post_phase=False, title="method")
    result.files["frontier"] = _save(fig, out_dir / f"{stem}_frontier")
    return result


def _label_curves(part: pd.DataFrame, axis: str, metric: str) -> dict[str, MeanCurve]:
    """Mean curve per label of `metric` against `axis` ("step" or "flops"), ITO phases appended after training."""
    result = {}
    log_x = axis == "flops"
    for label, runs in part.groupby("label", sort=True):
        by_data = list(runs.groupby("data_seed", sort=True)) if "data_seed" in runs else [(0, runs)]
        per_data, starts = [], []
        for _, data_runs in by_data:
            series = []
            for _, run in data_runs.groupby("run_id", sort=True):
                run = _ordered(run)
                x = run["_step"].to_numpy(float) if axis == "step" else run["total_flops"].to_numpy(float)
                y = run[metric].to_numpy(float) if metric in run else np.full(len(run), np.nan)
                if np.isfinite(y).any() and (not log_x or (x > 0).any()):
                    series.append((x, y))
                    post = run["phase"].to_numpy() != TRAIN_PHASE
                    if post.any():
                        starts.append(float(x[np.argmax(post)]))
            if series:
                per_data.append(mean_curve(series, log_x=log_x))
        if per_data:
            curve = per_data[0] if len(per_data) == 1 else data_seed_curve(per_data, log_x=log_x)
            start = float(np.median(starts)) if starts else None
            result[str(label)] = dataclasses.replace(curve, post_start=start)
    return result


def _ordered(run: pd.DataFrame) -> pd.DataFrame:
    """Training rows first, then post-training (ITO) rows; `_step` continues the step count across phases."""
    post = (run["phase"] != TRAIN_PHASE).to_numpy()
    run = run.assign(_post=post).sort_values(["_post", "step"], kind="stable")
    step = run["step"].to_numpy(float)
    post = run["_post"].to_numpy()
    if post.any() and (~post).any() and step[post].min() <= step[~post].max():
        step = np.where(post, step + step[~post].max(), step)
    return run.assign(_step=step)


def _draw_curves(ax: Axes, curves: Mapping[str, MeanCurve], colours: Mapping, log_x: bool) -> dict[str, Line2D]:
    """Mean line (solid while training, dashed after) and a ± std band per label; returns legend handles.

    A method with an ITO phase usually shares its training curve with its base method (same seeds), so it is drawn
    wider and underneath: both stay visible where they coincide."""
    handles = {}
    for name, c in curves.items():
        colour = colours[name]
        lw, z = (3.2, 2) if c.post_start is not None else (1.8, 3)
        if len(c.x) == 1:
            ax.errorbar(c.x, c.mean, yerr=np.nan_to_num(c.std), fmt="o", color=colour, capsize=3, zorder=z)
        else:
            split = np.searchsorted(c.x, c.post_start) if c.post_start is not None else len(c.x)
            ax.plot(c.x[: split + 1], c.mean[: split + 1], color=colour, lw=lw, zorder=z)
            if split < len(c.x):
                ax.plot(c.x[split:], c.mean[split:], color=colour, lw=lw, ls="--", zorder=z)
            band = np.isfinite(c.std)
            if band.any():
                ax.fill_between(c.x, c.mean - c.std, c.mean + c.std, where=band, color=colour, alpha=0.25, lw=0)
            if c.data_std is not None and np.isfinite(c.data_std).any():
                lo, hi = c.mean - c.data_std, c.mean + c.data_std
                ax.fill_between(c.x, lo, hi, where=np.isfinite(c.data_std), color=colour, alpha=0.1, lw=0)
                for edge in (lo, hi):
                    ax.plot(c.x, edge, color=colour, lw=0.8, ls=":", zorder=z)
        runs = f"{c.n_data_seeds} data sets x {c.n_seeds // c.n_data_seeds}" if c.n_data_seeds > 1 else f"n={c.n_seeds}"
        handles[name] = Line2D([], [], color=colour, lw=2.5, label=f"{name} ({runs})")
    if log_x:
        ax.set_xscale("log")
    if not curves:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, color="grey")
    return handles


def _draw_frontier(ax: Axes, curves: Mapping[str, MeanCurve], front: pd.DataFrame, colours: Mapping) -> list[Line2D]:
    """Faint mean curves, then the frontier as a thick step line coloured by the winning method per segment."""
    for name, c in curves.items():
        ax.plot(c.x, c.mean, color=colours[name], lw=1, alpha=0.45, marker="o" if len(c.x) == 1 else None)
    front = front.dropna(subset=["method"]).reset_index(drop=True)
    for start, stop in equal_runs(front["method"].tolist()):
        seg = front.iloc[start : min(stop + 1, len(front))]
        colour = colours[front["method"].iloc[start]]
        ax.plot(seg["budget"], seg["mcc"], drawstyle="steps-post", color=colour, lw=3.5, solid_capstyle="butt")
    ax.set_xscale("log")
    winners = set(front["method"])
    handles = [
        Line2D([], [], color=colours[n], lw=3.5 if n in winners else 1.5, label=n + (" (on frontier)" * (n in winners)))
        for n in curves
    ]
    handles.append(Line2D([], [], color="grey", lw=3.5, label="frontier: best so far (colour = method)"))
    handles.append(Line2D([], [], color="grey", lw=1, alpha=0.6, label="mean curve of each method"))
    return handles


def equal_runs(values: Sequence[object]) -> list[tuple[int, int]]:
    """Index ranges [start, stop) of consecutive equal entries: the frontier's segments, one per winning stretch."""
    bounds = [0] + [i for i in range(1, len(values)) if values[i] != values[i - 1]] + [len(values)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _panels(n: int) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(6.4 * n + 2.6, 4.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def _legend(
    fig: Figure, handles: list[Line2D], post_phase: bool, title: str = "method (seeds)", data_bands: bool = False
) -> None:
    handles = list(handles)
    if data_bands:
        handles.append(Patch(color="grey", alpha=0.45, label="± std over model seeds (pooled)"))
        handles.append(Patch(color="grey", alpha=0.15, ls=":", label="± std over data seeds (dotted edges)"))
    if post_phase:
        handles.append(Line2D([], [], color="grey", ls="--", lw=1.8, label="dashed: inference-time optimisation"))
    fig.legend(handles=handles, loc="outside right center", frameon=False, title=title)


def _save(fig: Figure, stem: Path) -> Path:
    """Save PNG (dpi 150) and PDF; returns the PNG path."""
    png = stem.with_suffix(".png")
    fig.savefig(png, dpi=DPI)
    fig.savefig(stem.with_suffix(".pdf"))
    return png


def _informative(part: pd.DataFrame, column: str) -> bool:
    """True if `column` has finite values that change (dictionary MCC is constant when the dictionary is known)."""
    if column not in part:
        return False
    values = part[column].to_numpy(float)
    values = values[np.isfinite(values)]
    return len(values) > 0 and float(values.max() - values.min()) > 1e-9


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "setting"


def _clean(x: ArrayLike, y: ArrayLike, log_x: bool) -> tuple[np.ndarray, np.ndarray]:
    """Finite points (positive x on a log axis), sorted by x; of repeated x values the last one is kept."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    last = np.append(x[1:] != x[:-1], True)
    return x[last], y[last]
