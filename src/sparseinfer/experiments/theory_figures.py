"""Figures of the theory and scaling studies: MCC heat maps over (N, M) with the recovery boundary, the phase
diagram of L1 recovery against the Donoho-Tanner curves, the error floor against M, and the rank check.

Pure drawing from tables (no training here); each figure is saved as PNG (dpi 150) and PDF.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from sparseinfer.theory.boundary import boundary_rho, recovery_boundary
from sparseinfer.theory.phase_transition import transition_rho

DPI = 150
LABELS = {
    "sae": "SAE",
    "mlp": "MLP",
    "sparse_coding": "sparse coding (learned dict.)",
    "sae+ito": "SAE + ITO",
    "fista": "FISTA (true dict.)",
    "omp": "OMP (true dict.)",
}


def _save(fig: Figure, stem: Path) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"), dpi=DPI)
    fig.savefig(stem.with_suffix(".pdf"))
    return stem.with_suffix(".png")


def _heat_panel(ax: Axes, cells: pd.DataFrame, value: str, k: int, cmap: str, vmin: float, vmax: float) -> object:
    """Squares at (log2 N, log2 M) coloured by `value` with the number written in; the boundary M = 2 K ln(N/K)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    norm, colours = Normalize(vmin, vmax), colormaps[cmap]
    ns, ms = sorted({16, 32, 64, 128}), [8, 16, 32]
    for n in ns:
        for m in ms:
            x, y = math.log2(n), math.log2(m)
            row = cells[(cells["n_latents"] == n) & (cells["dim"] == m)]
            if row.empty or not np.isfinite(row[value].iloc[0]):
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="0.93", edgecolor="white", hatch="///"))
                continue
            v = float(row[value].iloc[0])
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=colours(norm(v)), edgecolor="white", lw=1.5))
            shade = norm(v)
            dark = (shade < 0.35 or shade > 0.85) if cmap == "RdBu" else shade < 0.6
            ax.text(
                x,
                y,
                f"{v:+.2f}" if cmap == "RdBu" else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
            if m > n:
                ax.text(x, y - 0.36, "M > N", ha="center", va="center", fontsize=6.5, color="white" if dark else "k")
    n_line = np.geomspace(max(k * 1.05, 2**3.5), 2**7.5, 200)
    m_line = np.array([recovery_boundary(n, k) for n in n_line])
    keep = m_line > 0
    ax.plot(np.log2(n_line[keep]), np.log2(np.clip(m_line[keep], 2**2, 2**6)), color="red", lw=2.2)
    ax.set_xlim(3.5, 7.5)
    ax.set_ylim(2.5, 5.5)
    ax.set_xticks([math.log2(n) for n in ns], [str(n) for n in ns])
    ax.set_yticks([math.log2(m) for m in ms], [str(m) for m in ms])
    ax.set_xlabel("N (latents)")
    ax.set_ylabel("M (dimensions)")
    return norm


def _heat_grid(
    table: pd.DataFrame,
    methods: list[str],
    value: str,
    cmap: str,
    vmin: float,
    vmax: float,
    title: str,
    colour_label: str,
) -> Figure:
    ks = sorted(table["k"].unique())
    fig = Figure(figsize=(3.4 * len(ks) + 1.6, 2.9 * len(methods) + 0.8), layout="constrained")
    axes = fig.subplots(len(methods), len(ks), squeeze=False)
    for i, method in enumerate(methods):
        for j, k in enumerate(ks):
            part = table[(table["method"] == method) & (table["k"] == k)]
            _heat_panel(axes[i, j], part, value, int(k), cmap, vmin, vmax)
            axes[i, j].set_title(f"{LABELS.get(method, method)}, K = {k}", fontsize=10)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), ax=axes, shrink=0.5, label=colour_label)
    handles = [
        Line2D([], [], color="red", lw=2.2, label="recovery boundary M = 2 K ln(N/K) (recoverable above)"),
        Rectangle(
            (0, 0), 1, 1, facecolor="0.93", hatch="///", edgecolor="white", label="not in the sweep (K >= M, M = N)"
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(title)
    return fig


def scaling_figures(table: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Heat maps of mean latent MCC per method, and of each method's MCC minus the SAE's."""
    mean = table.groupby(["method", "n_latents", "dim", "k"], as_index=False)["latent_mcc"].mean()
    methods = [m for m in LABELS if m in set(mean["method"])]
    n_seeds = table["seed"].nunique()
    files = {}
    fig = _heat_grid(
        mean,
        methods,
        "latent_mcc",
        "viridis",
        0.0,
        1.0,
        f"Latent MCC on test data (mean over {n_seeds} seed(s))",
        "latent MCC",
    )
    files["latent MCC per method"] = _save(fig, Path(out_dir) / "scaling_mcc")
    if "sae" in methods:
        sae = mean[mean["method"] == "sae"].drop(columns="method").rename(columns={"latent_mcc": "sae"})
        diff = mean.merge(sae, on=["n_latents", "dim", "k"])
        diff["gap"] = diff["latent_mcc"] - diff["sae"]
        others = [m for m in methods if m != "sae"]
        bound = max(0.05, float(np.nanmax(np.abs(diff["gap"]))))
        fig = _heat_grid(
            diff,
            others,
            "gap",
            "RdBu",
            -bound,
            bound,
            "Latent MCC minus the SAE's (blue: better than the SAE)",
            "MCC − SAE MCC",
        )
        files["difference to the SAE"] = _save(fig, Path(out_dir) / "scaling_mcc_minus_sae")
    return files


def phase_figure(cells: pd.DataFrame, crossings: pd.DataFrame, out_dir: Path) -> Path:
    """Success fraction of basis pursuit over (delta, rho), signed and non-negative, with the theoretical curves."""
    fig = Figure(figsize=(12, 4.9), layout="constrained")
    axes = fig.subplots(1, 2)
    delta_line = np.linspace(0.02, 0.98, 120)
    study = np.array([boundary_rho(d) for d in delta_line])
    for ax, signed in zip(axes, (True, False), strict=True):
        part = cells[cells["signed"] == signed]
        deltas, rhos = sorted(part["delta"].unique()), sorted(part["rho"].unique())
        grid = part.pivot_table(index="rho", columns="delta", values="success").reindex(index=rhos, columns=deltas)
        image = ax.pcolormesh(_edges(deltas), _edges(rhos), grid.to_numpy(), cmap="Greys_r", vmin=0, vmax=1)
        both = [("signed", True, "tab:blue"), ("non-negative", False, "tab:orange")]
        for name, s, colour in both:
            curve = [transition_rho(d, signed=s) for d in delta_line]
            lw, ls = (2.6, "-") if s == signed else (1.2, ":")
            ax.plot(delta_line, curve, color=colour, lw=lw, ls=ls, label=f"theory, {name} (ALMT 2014)")
        ax.plot(delta_line, study, color="red", lw=1.6, ls="--", label="study's boundary M = 2K ln(N/K)")
        cross = crossings[crossings["signed"] == signed]
        ax.plot(
            cross["delta_actual"],
            cross["rho_empirical"],
            "o",
            color="gold",
            mec="k",
            ms=6,
            label="empirical 50% crossing",
        )
        n = int(part["n_latents"].iloc[0])
        trials = int(part["trials"].iloc[0])
        kind = "signed codes, L1" if signed else "non-negative codes, L1 with s >= 0"
        ax.set_title(f"{kind} (N = {n}, {trials} codes per cell)", fontsize=10)
        ax.set_xlabel("δ = M / N (undersampling)")
        ax.set_ylabel("ρ = K / M (sparsity)")
        ax.set_xlim(_edges(deltas)[0], _edges(deltas)[-1])
        ax.set_ylim(_edges(rhos)[0], _edges(rhos)[-1])
    fig.colorbar(image, ax=axes, label="fraction exactly recovered by basis pursuit")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, frameon=False)
    fig.suptitle("Phase transition of L1 recovery: recovered (white) below the curve, not (black) above")
    return _save(fig, Path(out_dir) / "phase_transition")


def _edges(centres: list[float]) -> np.ndarray:
    c = np.asarray(centres, dtype=float)
    mids = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mids[0] - c[0])], mids, [c[-1] + (c[-1] - mids[-1])]])


def error_floor_figure(floor: pd.DataFrame, n_latents: int, k: int, out_dir: Path) -> Path:
    """1 - latent MCC and FVU against M: the best SAE found by training vs the exact solvers (log scale)."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    boundary = recovery_boundary(n_latents, k)
    styles = {
        "sae (best)": ("tab:red", "o", "-"),
        "fista": ("tab:blue", "s", "-"),
        "omp": ("tab:green", "^", "-"),
        "basis pursuit": ("k", "x", "--"),
    }
    for ax, (column, label) in zip(axes, (("mcc_error", "1 − latent MCC"), ("fvu", "FVU")), strict=True):
        for method, (colour, marker, ls) in styles.items():
            part = floor[floor["method"] == method].sort_values("dim")
            if part.empty:
                continue
            y = np.maximum(part[column].to_numpy(float), 1e-12)
            ax.plot(part["dim"], y, color=colour, marker=marker, ls=ls, label=method)
        ax.axvline(boundary, color="red", ls=":", lw=1.5, label=f"boundary M* = 2K ln(N/K) = {boundary:.1f}")
        ax.axvline(n_latents, color="0.4", ls="-.", lw=1.2, label=f"M = N = {n_latents}")
        ax.set_yscale("log")
        ax.set_ylim(1e-12 / 2, 2)
        ax.set_xlabel("M (dimensions)")
        ax.set_ylabel(label + " (floored at 1e-12)")
        ax.set_title(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    fig.suptitle(
        f"Error floor vs M (N = {n_latents}, K = {k}, true dictionary): best SAE over seeds and learning rates "
        "vs exact solvers"
    )
    return _save(fig, Path(out_dir) / "error_floor")


def rank_figure(rank: pd.DataFrame, n_latents: int, out_dir: Path) -> Path:
    """Smallest worst-case error of ReLU(W x) on 1- and 2-sparse codes (optimised W; the trained SAE's W) vs M."""
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.subplots()
    rank = rank.sort_values("dim")
    ax.plot(rank["dim"], rank["max_error"], "o-", color="k", lw=2, label="optimised W, no bias: 1- and 2-sparse")
    ax.plot(rank["dim"], rank["max_error_1sparse"], "s--", color="0.5", label="same W: 1-sparse codes only")
    if "max_error_bias" in rank:
        ax.plot(rank["dim"], rank["max_error_bias"], "d:", color="tab:purple", label="optimised W and bias b")
    if "trained_sae_error" in rank:
        ax.plot(
            rank["dim"],
            rank["trained_sae_error"],
            "^-",
            color="tab:red",
            alpha=0.7,
            label="best trained SAE's W, as trained",
        )
    ax.axvline(n_latents, color="0.4", ls="-.", lw=1.2, label=f"M = N = {n_latents}")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(-1e-4, 2)
    ax.set_xlabel("M (dimensions)")
    ax.set_ylabel("max |ReLU(Wx) − s| / max s  (symlog)")
    ax.set_title(f"Rank argument: A = W D cannot be I on sparse codes when M < N (N = {n_latents})")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return _save(fig, Path(out_dir) / "rank_check")
