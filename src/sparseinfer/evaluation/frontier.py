"""Figures of the evaluation: the frontier of reconstruction and downstream loss against L0 (or against inference
FLOPs per token), one line per encoder (or per any label column)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

AXES = {"l0": "L0 (active latents per token)", "inference_flops_per_token": "inference FLOPs per token"}
METRICS = {"fvu": "FVU (held-out)", "ce": "spliced next-token CE"}


STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 3)), "P"))


def frontier_figure(
    table: pd.DataFrame,
    out: Path,
    x: str = "l0",
    group: str = "encoder",
    name: str = "frontier.png",
    colour: str | None = None,
    style: str | None = None,
) -> Path:
    """FVU and spliced CE (those present) against `x` (log scale), one line per `group` value; returns the path.

    `colour` / `style`: columns whose values pick each line's colour / line style and marker (e.g. the dictionary
    and the inference method), so that many lines stay distinguishable; by default every line gets the next
    colour of the cycle, which repeats after ten."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metrics = [m for m in METRICS if m in table and table[m].notna().any()]
    colours = {v: f"C{i % 10}" for i, v in enumerate(pd.unique(table[colour]))} if colour else {}
    styles = {v: STYLES[i % len(STYLES)] for i, v in enumerate(pd.unique(table[style]))} if style else {}
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        for i, (label, runs) in enumerate(table.groupby(group, sort=False)):
            runs = runs.sort_values(x)
            first = runs.iloc[0]
            line, marker = styles.get(first[style], STYLES[0]) if style else STYLES[0]
            tint = colours[first[colour]] if colour else f"C{i % 10}"
            ax.plot(runs[x], runs[metric], ls=line, marker=marker, c=tint, label=label)  # one line per label
        ax.set_xscale("log")
        if x == "l0":
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 2, 5, 10, 20 (no overlaps)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(AXES.get(x, x))
        ax.set_ylabel(METRICS[metric])
        if metric == "ce" and "ce_clean" in table:
            ax.axhline(float(table["ce_clean"].iloc[0]), ls="--", c="k", lw=0.8, label="clean")
    handles, labels = axes[0][-1].get_legend_handles_labels()  # the last axes: the CE one has the clean line
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside the data
    against = "sparsity" if x == "l0" else "inference compute"
    fig.suptitle(f"held-out activations: reconstruction and downstream loss against {against}")
    fig.tight_layout()
    path = Path(out) / name
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
