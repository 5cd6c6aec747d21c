"""`sparseinfer reproduce scaling`: the protocol's scaling sweep over (N, M, K), every method on the same data.

Sizes: N in {16, 32, 64, 128}, M in {8, 16, 32}, K in {3, 9, 15} with M < N and K < M, plus the M > N control
(N, M) = (16, 32). Methods (true dictionary, setting `known_dictionary`, unless said otherwise):
- `sae` and `sae+ito`: ONE run each size and seed trains the SAE (linear + ReLU, no bias) and then refines its test
  codes by inference-time optimisation (Adam on exp-parameterised codes, warm-started from the SAE); `sae` is read
  from the run's last training row, `sae+ito` from its last row. Same SAE, so their difference is ITO's alone.
- `mlp`: linear, ReLU, linear, ReLU encoder (hidden width from the preset).
- `sparse_coding`: the study's sparse coding, which learns its dictionary (setting `learn_both`, the only one where
  the protocol defines it); test codes by ITO against the learned dictionary.
- `fista` (non-negative Lasso, small penalty) and `omp` (non-negative, k = K): exact-solver baselines.
Every run goes through the sweep runner (one folder per run, resumable); this module then gathers one row per
(method, size, seed) into `scaling.parquet` and draws the heat maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.execute import execute
from sparseinfer.experiments.files import RUNS_DIR, read_parquet, write_parquet
from sparseinfer.experiments.runner import run_sweep
from sparseinfer.experiments.sweep_config import RunConfig, parse_run
from sparseinfer.theory.boundary import recovery_boundary

N_VALUES = (16, 32, 64, 128)
M_VALUES = (8, 16, 32)
K_VALUES = (3, 9, 15)
CONTROL = (16, 32)  # (N, M) with M > N
METHODS = ("sae", "mlp", "sparse_coding", "sae+ito", "fista", "omp")
TABLE_FILE = "scaling.parquet"
FISTA = {"penalty": 1e-3, "nonneg": True, "max_iter": 5000, "tol": 1e-6}


@dataclass(frozen=True)
class ScalingPreset:
    """Steps, learning rates and seeds of one scale of the sweep."""

    steps: int  # SAE and MLP (known dictionary)
    sparse_coding_steps: int  # learn_both
    ito_steps: int
    ito_lr: float
    sparse_coding_ito_steps: int
    sparse_coding_ito_lr: float
    lr: float
    seeds: tuple[int, ...]
    mlp_hidden: int
    eval_every: int


SCALING_PRESETS: dict[str, ScalingPreset] = {
    "paper": ScalingPreset(20_000, 40_000, 20_000, 1e-3, 10_000, 3e-3, 1e-3, (0, 1, 2, 3, 4), 256, 500),
    # 10x the protocol's learning rate so that 10-40x fewer steps reach a comparable point; one seed;
    # MLP width 64 (protocol: 256) to fit 2 shared cores.
    "quick": ScalingPreset(1_000, 1_500, 500, 1e-2, 500, 1e-2, 1e-2, (0,), 64, 500),
}


def scaling_sizes() -> list[tuple[int, int, int]]:
    """The protocol's (N, M, K): M < N and K < M, plus the control (16, 32, K)."""
    sizes = []
    for n in N_VALUES:
        for m in M_VALUES:
            if m < n or (n, m) == CONTROL:
                sizes += [(n, m, k) for k in K_VALUES if k < m]
    return sizes


def _methods(k: int, preset: ScalingPreset) -> list[dict[str, Any]]:
    train = {"steps": preset.steps, "lr": preset.lr, "eval_every": preset.eval_every}
    known = {"setting": "known_dictionary", "train": train}
    ito = {"steps": preset.ito_steps, "lr": preset.ito_lr, "start": "encoder", "log_every": preset.ito_steps}
    solver = {"setting": "known_dictionary", "train": {"steps": 0}, "save_weights": False}
    sc_train = {"steps": preset.sparse_coding_steps, "lr": preset.lr, "eval_every": preset.sparse_coding_steps}
    sc_ito = {
        "steps": preset.sparse_coding_ito_steps,
        "lr": preset.sparse_coding_ito_lr,
        "start": "cold",
        "log_every": preset.sparse_coding_ito_steps,
    }
    return [
        {**known, "method": "sae+ito", "encoder": {"name": "relu", "params": {"bias": False}}, "ito": ito},
        {**known, "method": "mlp", "encoder": {"name": "mlp", "params": {"hidden": [preset.mlp_hidden]}}},
        {"setting": "learn_both", "method": "sparse_coding", "kind": "sparse_coding", "train": sc_train, "ito": sc_ito},
        {**solver, "method": "fista", "encoder": {"name": "fista", "params": FISTA}},
        {**solver, "method": "omp", "encoder": {"name": "omp", "params": {"k": k, "nonneg": True}}},
    ]


def scaling_runs(preset_name: str | ScalingPreset, seeds: list[int] | None = None) -> list[RunConfig]:
    """Every run of the sweep at scale `preset_name` (validated configs)."""
    preset = _preset(preset_name)
    runs = []
    for n, m, k in scaling_sizes():
        for method in _methods(k, preset):
            for seed in seeds or preset.seeds:
                runs.append(parse_run({**method, "data": {"n_latents": n, "dim": m, "k": k}, "seed": seed}))
    return runs


def _preset(name: str | ScalingPreset) -> ScalingPreset:
    if isinstance(name, ScalingPreset):
        return name
    if name not in SCALING_PRESETS:
        raise SparseInferError(f"unknown preset {name!r}; known presets: {', '.join(SCALING_PRESETS)}")
    return SCALING_PRESETS[name]


def method_rows(results: pd.DataFrame, out: Path) -> pd.DataFrame:
    """One row per (method, N, M, K, seed) from the sweep's results; `sae+ito` runs also give the `sae` row (their
    last training row in history.parquet)."""
    rows = []
    for _, run in results.iterrows():
        base = {c: run[c] for c in ("seed", "n_latents", "dim", "k")}
        rows.append({"method": run["method"], **base, "latent_mcc": run["latent_mcc"], "fvu": run["fvu"]})
        if run["method"] == "sae+ito":
            history = read_parquet(Path(out) / RUNS_DIR / run["run_id"] / "history.parquet")
            last = history[history["phase"] == "train"].iloc[-1]
            rows.append({"method": "sae", **base, "latent_mcc": last["latent_mcc"], "fvu": last["fvu"]})
    table = pd.DataFrame(rows)
    table["boundary"] = [recovery_boundary(n, k) for n, k in zip(table["n_latents"], table["k"], strict=True)]
    table["above_boundary"] = table["dim"] >= table["boundary"]
    return table


def summarise_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """Mean latent MCC over seeds: one row per size, one column per method, plus the boundary."""
    wide = table.pivot_table(index=["n_latents", "dim", "k"], columns="method", values="latent_mcc", aggfunc="mean")
    wide = wide[[m for m in METHODS if m in wide.columns]].reset_index()
    wide.columns.name = None
    wide.insert(3, "boundary", [recovery_boundary(n, k) for n, k in zip(wide["n_latents"], wide["k"], strict=True)])
    wide.insert(4, "above_boundary", wide["dim"] >= wide["boundary"])
    return wide


def side_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean latent MCC per method above and below the boundary (over sizes and seeds), and the count of sizes."""
    out = table.groupby(["method", "above_boundary"])["latent_mcc"].agg(["mean", "count"]).reset_index()
    out["method"] = pd.Categorical(out["method"], [m for m in METHODS if m in set(out["method"])], ordered=True)
    return out.sort_values(["above_boundary", "method"]).reset_index(drop=True)


def run_scaling(
    preset: str,
    out: Path,
    workers: int = 1,
    resume: bool = False,
    seeds: list[int] | None = None,
    progress: bool = True,
    backend: str = "process",
    ray_address: str | None = None,
) -> pd.DataFrame:
    """Run the sweep into `out/runs/`, gather `out/scaling.parquet`, draw `out/figures/` and write `out/report.md`."""
    from sparseinfer.experiments.theory_figures import scaling_figures

    runs = scaling_runs(preset, seeds)
    specs = [run.spec() for run in runs]
    out = Path(out)
    results = run_sweep(
        specs, out, execute, workers=workers, resume=resume, progress=progress, backend=backend, ray_address=ray_address
    )
    if results.empty or "method" not in results:
        raise SparseInferError(f"no run of the scaling sweep completed; see the error.txt files in {out / RUNS_DIR}")
    table = method_rows(results, out)
    write_parquet(out / TABLE_FILE, table)
    figures = scaling_figures(table, out / "figures")
    scaling_report(table, figures, out, preset if isinstance(preset, str) else "custom")
    return table


def _fmt(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.3f}"


def scaling_report(table: pd.DataFrame, figures: dict[str, Path], out: Path, preset: str) -> Path:
    """`out/report.md`: what ran, the figures, MCC above/below the boundary, and the per-size table."""
    out = Path(out)
    wide = summarise_sizes(table)
    sides = side_summary(table)
    n_seeds = table["seed"].nunique()
    lines = [
        f"# Scaling sweep (preset `{preset}`, {n_seeds} seed(s), {len(wide)} sizes)",
        "",
        "Latent MCC on the 1024 test samples (mean over seeds). Recovery boundary M* = 2 K ln(N / K); a size is "
        "*above* it when M >= M*. `sae` and `sae+ito` come from the same runs (ITO warm-started from that SAE); "
        "`sparse_coding` learns its dictionary (setting learn_both); all others use the true dictionary.",
        "",
    ]
    for name, path in figures.items():
        lines += [f"![{name}]({path.relative_to(out).as_posix()})", ""]
    lines += ["## Mean latent MCC by side of the boundary", "", "| method | below boundary | above boundary |"]
    lines += ["|---|---|---|"]
    for method in [m for m in METHODS if m in set(sides["method"].astype(str))]:
        cells = []
        for above in (False, True):
            part = sides[(sides["method"].astype(str) == method) & (sides["above_boundary"] == above)]
            cells.append(f"{part['mean'].iloc[0]:.3f} (n={int(part['count'].iloc[0])})" if len(part) else "—")
        lines.append(f"| {method} | {cells[0]} | {cells[1]} |")
    methods = [m for m in METHODS if m in wide.columns]
    lines += ["", "## Per size", "", "| N | M | K | M* | side | " + " | ".join(methods) + " |"]
    lines += ["|" + "---|" * (5 + len(methods))]
    for _, r in wide.iterrows():
        side = "above" if r["above_boundary"] else "below"
        cells = " | ".join(_fmt(r[m]) for m in methods)
        lines.append(f"| {r['n_latents']} | {r['dim']} | {r['k']} | {r['boundary']:.1f} | {side} | {cells} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
