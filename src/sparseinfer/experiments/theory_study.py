"""`sparseinfer reproduce theory`: the claims the study rests on, measured on the study's data.

(a) Error floor: at fixed N and K, for growing M, the best SAE found by training (every seed x learning rate of the
    preset, true dictionary frozen, the best point of each run kept, then the best run) against exact solvers with the
    true dictionary (FISTA, OMP through the sweep runner; basis pursuit as a linear program).
(b) Phase transition: the fraction of codes basis pursuit recovers exactly over a (delta = M/N, rho = K/M) grid,
    signed and non-negative, against the curves from the statistical dimension (Amelunxen et al. 2014).
(c) Rank check: the smallest worst-case error of ReLU(W x) (and ReLU(W x + b)) on all 1- and 2-sparse codes, found by
    optimising W directly, for the dictionaries of (a); the best trained SAE's W is one of the starting points.
Writes tables (Parquet), `report.md`, `theory.json` (headline numbers) and `figures/` under `out`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.execute import execute
from sparseinfer.experiments.files import RUNS_DIR, read_parquet, write_json, write_parquet
from sparseinfer.experiments.runner import RunSpec, run_sweep
from sparseinfer.experiments.scaling import FISTA
from sparseinfer.experiments.sweep_config import parse_run
from sparseinfer.io import load_sae
from sparseinfer.metrics import fvu, latent_mcc
from sparseinfer.theory.boundary import recovery_boundary
from sparseinfer.theory.phase_transition import (
    agreement,
    basis_pursuit,
    empirical_transition,
    exactly_recovered,
    transition_crossings,
    transition_rho,
)
from sparseinfer.theory.rank import probe_codes, rank_check, sparse_max_error


@dataclass(frozen=True)
class TheoryPreset:
    """Sizes, training budget and grids of the three checks."""

    n_latents: int
    k: int
    dims: tuple[int, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    steps: int
    eval_every: int
    bp_samples: int  # test samples solved by basis pursuit in (a)
    pt_n_latents: int
    pt_deltas: tuple[float, ...]
    pt_rhos: tuple[float, ...]
    pt_trials: int
    rank_steps: int


THEORY_PRESETS: dict[str, TheoryPreset] = {
    "paper": TheoryPreset(
        n_latents=16,
        k=3,
        dims=(4, 6, 8, 10, 12, 14, 16, 20, 24, 32),
        seeds=(0, 1, 2, 3, 4),
        lrs=(1e-3, 3e-3, 1e-2),
        steps=20_000,
        eval_every=200,
        bp_samples=1024,
        pt_n_latents=100,
        pt_deltas=tuple(np.round(np.linspace(0.1, 0.9, 17), 3)),
        pt_rhos=tuple(np.round(np.linspace(0.05, 0.95, 19), 3)),
        pt_trials=50,
        rank_steps=2000,
    ),
    "quick": TheoryPreset(
        n_latents=16,
        k=3,
        dims=(4, 6, 8, 10, 12, 16, 24, 32),
        seeds=(0, 1),
        lrs=(3e-3, 1e-2),
        steps=1_500,
        eval_every=100,
        bp_samples=256,
        pt_n_latents=40,
        pt_deltas=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        pt_rhos=(0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95),
        pt_trials=12,
        rank_steps=400,
    ),
}


def _preset(name: str | TheoryPreset) -> TheoryPreset:
    if isinstance(name, TheoryPreset):
        return name
    if name not in THEORY_PRESETS:
        raise SparseInferError(f"unknown preset {name!r}; known presets: {', '.join(THEORY_PRESETS)}")
    return THEORY_PRESETS[name]


def floor_specs(preset: TheoryPreset, seeds: list[int] | None = None) -> list[RunSpec]:
    """The SAE runs (every M x seed x learning rate) and the FISTA / OMP evaluations of the error-floor study."""
    specs = []
    for dim in preset.dims:
        data = {"n_latents": preset.n_latents, "dim": dim, "k": preset.k}
        raws: list[dict[str, Any]] = []
        for lr in preset.lrs:
            train = {"steps": preset.steps, "lr": lr, "eval_every": preset.eval_every}
            sae = {"name": "relu", "params": {"bias": False}}
            raws += [
                {"method": f"sae-lr{lr:g}", "encoder": sae, "train": train, "seed": s} for s in seeds or preset.seeds
            ]
        for name, params in (("fista", FISTA), ("omp", {"k": preset.k, "nonneg": True})):
            raws.append({"method": name, "encoder": {"name": name, "params": params}, "train": {"steps": 0}})
        for raw in raws:
            run = parse_run({"setting": "known_dictionary", "data": data, **raw})
            specs.append(run.spec())
    return specs


def _best_point(history: pd.DataFrame) -> tuple[float, float]:
    """(1 - best latent MCC, smallest FVU) over a run's evaluation points."""
    return 1.0 - float(history["latent_mcc"].max()), float(history["fvu"].min())


def error_floor(results: pd.DataFrame, sweep_dir: Path, preset: TheoryPreset) -> tuple[pd.DataFrame, dict[int, str]]:
    """One row per (method, M): the SAE's best over its runs and training, the solvers' values, basis pursuit's.

    Also returns, per M, the run id of the best SAE (its weights start the rank check)."""
    rows, best_runs = [], {}
    for dim, part in results.groupby("dim"):
        saes = part[part["method"].str.startswith("sae")]
        points = []
        for _, run in saes.iterrows():
            history = read_parquet(Path(sweep_dir) / RUNS_DIR / run["run_id"] / "history.parquet")
            points.append((*_best_point(history), run["run_id"], run["method"], int(run["seed"])))
        if points:
            best = min(points)
            best_runs[int(dim)] = best[2]
            rows.append(
                {
                    "method": "sae (best)",
                    "dim": int(dim),
                    "mcc_error": best[0],
                    "fvu": min(p[1] for p in points),
                    "exact_fraction": math.nan,
                    "detail": f"{best[3]}, seed {best[4]}, of {len(points)} runs",
                }
            )
        for _, run in part[~part["method"].str.startswith("sae")].iterrows():
            rows.append(
                {
                    "method": run["method"],
                    "dim": int(dim),
                    "mcc_error": 1.0 - float(run["latent_mcc"]),
                    "fvu": float(run["fvu"]),
                    "exact_fraction": math.nan,
                    "detail": "true dictionary",
                }
            )
        rows.append(_basis_pursuit_row(int(dim), preset))
    floor = pd.DataFrame(rows)
    floor["above_boundary"] = floor["dim"] >= recovery_boundary(preset.n_latents, preset.k)
    return floor.sort_values(["dim", "method"]).reset_index(drop=True), best_runs


def _basis_pursuit_row(dim: int, preset: TheoryPreset) -> dict[str, Any]:
    """Non-negative basis pursuit with the true dictionary on the first `bp_samples` test codes."""
    data = make_synthetic(n_latents=preset.n_latents, dim=dim, k=preset.k, dtype="float64")
    x, truth = data.test_x[: preset.bp_samples].numpy(), data.test_codes[: preset.bp_samples].numpy()
    codes = basis_pursuit(data.dictionary.atoms.numpy(), x, nonneg=True)
    return {
        "method": "basis pursuit",
        "dim": dim,
        "mcc_error": 1.0 - latent_mcc(truth, codes),
        "fvu": fvu(x, codes @ data.dictionary.atoms.numpy()),
        "exact_fraction": float(exactly_recovered(truth, codes).mean()),
        "detail": f"first {len(x)} test codes",
    }


def rank_table(preset: TheoryPreset, sweep_dir: Path, best_runs: dict[int, str]) -> pd.DataFrame:
    """The rank check at every M of (a), without and with bias, starting also from the best trained SAE's W."""
    rows = []
    ones, twos = probe_codes(preset.n_latents)
    for dim in preset.dims:
        atoms = make_synthetic(n_latents=preset.n_latents, dim=dim, k=preset.k, dtype="float64").dictionary.atoms
        starts, trained = {}, math.nan
        if dim in best_runs:
            encoder = load_sae(Path(sweep_dir) / RUNS_DIR / best_runs[dim]).encoder
            starts["trained SAE"] = encoder.linear.weight.detach().double()
            trained = sparse_max_error(starts["trained SAE"], atoms, torch.cat([ones, twos]))
        plain = rank_check(atoms, starts, steps=preset.rank_steps)
        biased = rank_check(atoms, starts, steps=preset.rank_steps, bias=True)
        rows.append(
            {
                "dim": dim,
                "n_latents": preset.n_latents,
                "max_error": plain.max_error,
                "max_error_1sparse": plain.max_error_1sparse,
                "max_error_2sparse": plain.max_error_2sparse,
                "max_error_bias": biased.max_error,
                "best_start": plain.best_start,
                "pinv_error": plain.initial["pinv"],
                "trained_sae_error": trained,
            }
        )
    return pd.DataFrame(rows)


def phase_tables(preset: TheoryPreset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Empirical transition cells (signed and non-negative) and the 50% crossings against theory."""
    cells = pd.concat(
        [
            empirical_transition(preset.pt_deltas, preset.pt_rhos, preset.pt_n_latents, preset.pt_trials, signed)
            for signed in (True, False)
        ],
        ignore_index=True,
    )
    return cells, transition_crossings(cells)


def run_theory(
    preset: str,
    out: Path,
    workers: int = 1,
    resume: bool = False,
    seeds: list[int] | None = None,
    progress: bool = True,
    backend: str = "process",
    ray_address: str | None = None,
) -> pd.DataFrame:
    """Run (a), (b), (c) into `out`; returns the error-floor table."""
    from sparseinfer.experiments.theory_figures import error_floor_figure, phase_figure, rank_figure

    p = _preset(preset)
    out = Path(out)
    sweep_dir = out / "error_floor"
    specs = floor_specs(p, seeds)
    results = run_sweep(
        specs,
        sweep_dir,
        execute,
        workers=workers,
        resume=resume,
        progress=progress,
        backend=backend,
        ray_address=ray_address,
    )
    if results.empty or "method" not in results:
        raise SparseInferError(f"no error-floor run completed; see the error.txt files in {sweep_dir / RUNS_DIR}")
    floor, best_runs = error_floor(results, sweep_dir, p)
    rank = rank_table(p, sweep_dir, best_runs)
    cells, crossings = phase_tables(p)
    for name, table in (("error_floor", floor), ("rank_check", rank), ("phase_cells", cells)):
        write_parquet(out / f"{name}.parquet", table)
    write_parquet(out / "phase_crossings.parquet", crossings)
    figures = {
        "error floor": error_floor_figure(floor, p.n_latents, p.k, out / "figures"),
        "phase transition": phase_figure(cells, crossings, out / "figures"),
        "rank check": rank_figure(rank, p.n_latents, out / "figures"),
    }
    headline = _headline(floor, rank, cells, crossings, p)
    write_json(out / "theory.json", headline)
    _write_report(out, preset if isinstance(preset, str) else "custom", p, floor, rank, crossings, headline, figures)
    return floor


def _headline(
    floor: pd.DataFrame, rank: pd.DataFrame, cells: pd.DataFrame, crossings: pd.DataFrame, p: TheoryPreset
) -> dict[str, Any]:
    finite = crossings.dropna(subset=["difference"])
    return {
        "theory_rho_at_delta_0.5": {"signed": transition_rho(0.5, True), "nonneg": transition_rho(0.5, False)},
        "phase_agreement": {
            "signed": agreement(cells[cells["signed"]]),
            "nonneg": agreement(cells[~cells["signed"]]),
        },
        "crossing_mean_abs_difference": {
            "signed": float(finite[finite["signed"]]["difference"].abs().mean()),
            "nonneg": float(finite[~finite["signed"]]["difference"].abs().mean()),
        },
        "boundary_M": recovery_boundary(p.n_latents, p.k),
        "error_floor": {
            f"M={int(d)}": {m: float(v) for m, v in zip(g["method"], g["mcc_error"], strict=True)}
            for d, g in floor.groupby("dim")
        },
        "rank_max_error": {f"M={int(r.dim)}": float(r.max_error) for r in rank.itertuples()},
    }


def _write_report(
    out: Path,
    preset: str,
    p: TheoryPreset,
    floor: pd.DataFrame,
    rank: pd.DataFrame,
    crossings: pd.DataFrame,
    headline: dict[str, Any],
    figures: dict[str, Path],
) -> None:
    boundary = recovery_boundary(p.n_latents, p.k)
    lines = [f"# Theory checks (preset `{preset}`)", ""]
    lines += [
        f"## (a) Error floor: N = {p.n_latents}, K = {p.k}, boundary M* = {boundary:.2f}",
        "",
        f"SAE: best of {len(p.seeds)} seed(s) x learning rates {', '.join(f'{lr:g}' for lr in p.lrs)}, "
        f"{p.steps} full-batch Adam steps each, best evaluation point kept. Error = 1 - latent MCC (test set).",
        "",
        f"![error floor]({figures['error floor'].relative_to(out).as_posix()})",
        "",
        "| M | side | " + " | ".join(_floor_methods(floor)) + " | BP exact fraction |",
        "|" + "---|" * (3 + len(_floor_methods(floor))),
    ]
    for dim, part in floor.groupby("dim"):
        by = dict(zip(part["method"], part["mcc_error"], strict=True))
        exact = part.loc[part["method"] == "basis pursuit", "exact_fraction"]
        side = "above" if dim >= boundary else "below"
        cells = " | ".join(f"{by.get(m, math.nan):.2e}" for m in _floor_methods(floor))
        lines.append(f"| {dim} | {side} | {cells} | {exact.iloc[0]:.3f} |")
    h = headline
    lines += [
        "",
        "## (b) Phase transition of L1 recovery",
        "",
        f"Theory at delta = 0.5: rho = {h['theory_rho_at_delta_0.5']['signed']:.4f} (signed), "
        f"{h['theory_rho_at_delta_0.5']['nonneg']:.4f} (non-negative). Grid cells on the side of the curve their "
        f"success fraction says: {h['phase_agreement']['signed']:.1%} (signed), {h['phase_agreement']['nonneg']:.1%} "
        f"(non-negative). Mean |empirical 50% crossing - theory|: "
        f"{h['crossing_mean_abs_difference']['signed']:.3f} (signed), "
        f"{h['crossing_mean_abs_difference']['nonneg']:.3f} (non-negative); N = {p.pt_n_latents}, "
        f"{p.pt_trials} codes per cell.",
        "",
        f"![phase transition]({figures['phase transition'].relative_to(out).as_posix()})",
        "",
        "| signs | delta (M/N) | rho empirical | rho theory | difference |",
        "|---|---|---|---|---|",
    ]
    for r in crossings.itertuples():
        kind = "signed" if r.signed else "non-negative"
        lines.append(
            f"| {kind} | {r.delta_actual:.3f} | {r.rho_empirical:.3f} | {r.rho_theory:.3f} | {r.difference:+.3f} |"
        )
    lines += [
        "",
        "## (c) Rank check: smallest worst-case error of ReLU(W x) on all 1- and 2-sparse codes (magnitudes 1, 2)",
        "",
        f"![rank check]({figures['rank check'].relative_to(out).as_posix()})",
        "",
        "| M | optimised W | 1-sparse only | 2-sparse | with bias | W = pinv(D) | trained SAE W | best start |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rank.itertuples():
        lines.append(
            f"| {r.dim} | {r.max_error:.3g} | {r.max_error_1sparse:.3g} | {r.max_error_2sparse:.3g} | "
            f"{r.max_error_bias:.3g} | {r.pinv_error:.3g} | {r.trained_sae_error:.3g} | {r.best_start} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _floor_methods(floor: pd.DataFrame) -> list[str]:
    order = ["sae (best)", "fista", "omp", "basis pursuit"]
    return [m for m in order if m in set(floor["method"])]
