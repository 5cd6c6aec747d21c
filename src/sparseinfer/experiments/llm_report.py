"""The language-model study's report (`report.md`) and figures, read only from the study folder's files:
`results.parquet` (evaluation rows), `interp/*.parquet` (scores, summaries, controls), `config.yaml` and the stage
markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sparseinfer.experiments.llm_files import STAGES, marker, write_atomic

RESULTS = "results.parquet"


def _method_label(row: pd.Series) -> str:
    return f"{row['dictionary']} / {row['method']}"


def write_llm_report(out: Path) -> Path:
    """`report.md` and figures from `results.parquet`, `interp/*.parquet`, `config.yaml` and the stage markers."""
    from sparseinfer.evaluation.frontier import frontier_figure

    out = Path(out)
    results = pd.read_parquet(out / RESULTS)
    config = yaml.safe_load((out / "config.yaml").read_text())
    ok = results[results["error"] == ""].copy()
    ok["label"] = ok.apply(_method_label, axis=1)
    figures = []
    styled = {"colour": "dictionary", "style": "method"}  # a colour per dictionary, a line style per method
    if len(ok):
        figures.append(frontier_figure(ok, out, x="l0", group="label", name="frontier_l0.png", **styled))
        figures.append(
            frontier_figure(ok, out, x="inference_flops_per_token", group="label", name="frontier_flops.png", **styled)
        )
    lines = [f"# Language-model study: preset `{config['preset']['name']}`", "",
             f"Model {config['preset']['model']} at {config['preset']['hook']}, corpus `{config['preset']['text']}`, "
             f"dictionaries {config['preset']['expansion']}x, targets L0 {config['preset']['targets']}. "
             f"Expected time: {config['preset']['expected']}.", "", "## Stages", "",
             "| stage | seconds | peak RSS (GB) |", "|---|---:|---:|"]  # fmt: skip
    for stage in STAGES[:-1]:
        if marker(out, stage).exists():
            m = json.loads(marker(out, stage).read_text())
            lines.append(f"| {stage} | {m['seconds']:.0f} | {m['peak_rss_gb']:.2f} |")
    cols = [c for c in ("dictionary", "method", "target_l0", "l0", "fvu", "loss_recovered", "kl", "dead_fraction",
                        "dense_fraction", "inference_flops_per_token", "train_flops") if c in results]  # fmt: skip
    lines += ["", "## Reconstruction and downstream loss at matched L0", "",
              "Every method calibrated to the dictionary's target L0 on held-out tokens (`calibrated_l0`: the L0 "
              "there; `l0`: on the evaluation tokens).", "", _markdown(results[cols])]  # fmt: skip
    errors = results[results["error"] != ""]
    if len(errors):
        lines += ["", "### Rows without numbers", ""] + [
            f"- {r.run} / {r.method}: {r.error}" for r in errors.itertuples()
        ]
    if len(ok):
        lines += ["", "## FVU relative to each dictionary's own encoder", ""]
        base = ok[ok["method"] == "own"].set_index("run")["fvu"]
        gain = ok.assign(fvu_vs_own=ok["fvu"] / ok["run"].map(base))
        lines += [_markdown(gain.pivot_table(index="run", columns="method", values="fvu_vs_own"))]
    lines += _interp_lines(out, figures)
    probe = out / "probe.parquet"
    if probe.exists():  # sparse probing and absorption (experiments/llm_probe.py), when that stage ran
        from sparseinfer.experiments.llm_probe import probe_report_lines

        lines += ["", *probe_report_lines(out)]
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _cell(value: Any) -> str:
    """One table cell: floats with 4 significant digits, the rest as text."""
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)


def _markdown(table: pd.DataFrame) -> str:
    """A table as GitHub Markdown (the index too, when it is named)."""
    if not len(table):
        return "(no rows)"
    frame = table.reset_index() if table.index.name is not None else table
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


INTERP_METRICS = ("detection_bacc", "fuzzing_bacc", "embedding_auroc", "detection_auroc", "fuzzing_auroc")


def _interp_lines(out: Path, figures: list[Path]) -> list[str]:
    """The interpretability section: per family and per control, mean [95% interval] of each score, the paired /
    unpaired comparison against the first family, and the figure (appended to `figures`)."""
    folder = out / "interp"
    parts = [pd.read_parquet(folder / name).rename(columns={"control": "encoder"})
             for name in ("summary.parquet", "controls_summary.parquet") if (folder / name).exists()]  # fmt: skip
    if not parts:
        return []
    summary = pd.concat(parts, ignore_index=True)
    summary = summary[summary["metric"].isin(INTERP_METRICS)]
    cell = summary.assign(value=[f"{m:.3f} [{lo:.3f}, {hi:.3f}] (n={n})" for m, lo, hi, n in
                                 summary[["mean", "ci_low", "ci_high", "n"]].itertuples(index=False)])  # fmt: skip
    table = cell.pivot(index="encoder", columns="metric", values="value")
    table = table.loc[list(dict.fromkeys(summary["encoder"])), [m for m in INTERP_METRICS if m in table]]
    table.index.name = "family / control"
    lines = ["", "## Interpretability", "",
             "Random live latents of each family's dictionary at the interpreted target (and of the preset's "
             "`interp_methods` on the same dictionaries), explained by the LLM from "
             "top-activating windows and scored by detection and fuzzing (balanced accuracy at the prevalence-matched "
             "cut, and AUROC of P(yes)) and by embedding similarity; mean [bootstrap 95% interval]. The controls sit "
             "beside them: planted token features must score high (>= 0.85), explanations shuffled across the "
             "planted features at chance (0.50).", "", _markdown(table)]  # fmt: skip
    comparison = folder / "comparison.parquet"
    if comparison.exists():
        lines += ["", "Each family against the first (different dictionaries: unpaired tests); codes of another "
                  "inference method on a family's dictionary against that family's own encoder (the same latents: "
                  "paired tests):", "",
                  _markdown(pd.read_parquet(comparison))]  # fmt: skip
    figures.append(interp_figure(summary, out / "interp.png"))
    return lines


def interp_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Bars with 95% intervals per family and control, one panel per score, the 0.5 (chance) and 0.85 lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in INTERP_METRICS if m in set(summary["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = summary[summary["metric"] == metric]
        names = rows["encoder"].tolist()
        colours = ["tab:grey" if n in ("planted", "shuffled") else "tab:blue" for n in names]
        err = [rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]
        ax.bar(range(len(names)), rows["mean"], yerr=err, color=colours, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.axhline(0.5, ls="--", c="k", lw=0.8)
        ax.axhline(0.85, ls=":", c="tab:green", lw=0.8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_ylim(0, 1)
    fig.suptitle("auto-interp: families (blue) and controls (grey), mean and 95% interval", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
