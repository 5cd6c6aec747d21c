"""Figures of the evaluation: the frontier of reconstruction and downstream loss against L0, one line per encoder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def frontier_figure(table: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("fvu", "ce") if m in table]
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, runs in table.groupby("encoder", sort=False):
            runs = runs.sort_values("l0")
            ax.plot(runs["l0"], runs[metric], marker="o", label=label)  # one frontier line per encoder
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 2, 5, 10, 20 (no overlaps)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel({"fvu": "FVU", "ce": "spliced next-token CE"}[metric])
        if metric == "ce" and "ce_clean" in table:
            ax.axhline(float(table["ce_clean"].iloc[0]), ls="--", c="k", lw=0.8, label="clean")
        ax.legend(fontsize=7)
    fig.suptitle("held-out activations: reconstruction and downstream loss against sparsity")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)
