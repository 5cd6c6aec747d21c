"""Evaluate trained runs on a held-out activation store and compare them: reconstruction (`reconstruction`),
downstream loss (`downstream`) and the comparison at matched L0 (`matched`); SAEBench's core extras (cosine
similarity, shrinkage `l2_ratio`, normalised KL `kl_score`) come with them, and `latents_dir` collects a per-latent
firing table (Parquet) per evaluated row.

Every run folder and the store are checked before any compute (`check_runs`): a run must be finished and trained on
activations of the store's model, hook point and width. With `target_l0`, an `infer_with` method is calibrated per
dictionary and target (`calibrate`) on held-out tokens, so its rows sit at the target L0 by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from sparseinfer.data.store import ActivationStore
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create
from sparseinfer.errors import SparseInferError
from sparseinfer.evaluation.calibrate import Calibration, calibrate
from sparseinfer.evaluation.downstream import Reference, downstream_metrics, hook_point, reference_passes
from sparseinfer.evaluation.frontier import frontier_figure
from sparseinfer.evaluation.held_out import reconstruction_metrics
from sparseinfer.evaluation.matched import matched_l0
from sparseinfer.io._common import read_json
from sparseinfer.lm.model import load_model
from sparseinfer.metrics.firing import FiringStatistics
from sparseinfer.training.activations.train import load_run

Progress = Callable[[str], None]
CALIBRATION_TOKENS = 2048
CALIBRATION_SEED = 1  # the calibration sample is drawn apart from the evaluation's order (seed 0)


def _silent(message: str) -> None:
    """The default progress sink: nothing."""


def run_source(run: str | Path) -> dict[str, Any]:
    """A finished run's `run.json` (one-line error when the folder is not a finished run)."""
    path = Path(run) / "run.json"
    if not path.exists():
        raise SparseInferError(f"{run} is not a finished training run (no run.json)")
    return read_json(path)


def _resolved_hook(pattern: str, model: str, lm: torch.nn.Module | None) -> str:
    """The canonical label of an on-the-fly run's hook pattern (through the store's model)."""
    from sparseinfer.lm.hooks import resolve_hook_points

    module = lm if lm is not None else load_model(model)[0]
    points = resolve_hook_points(module, pattern)
    return points[0].label if len(points) == 1 else pattern


def check_runs(
    runs: list[str | Path], store: str | Path, lm: torch.nn.Module | None = None
) -> tuple[ActivationStore, list[dict[str, Any]]]:
    """Open the store and every run's `run.json`, and refuse (before any compute) a run that is unfinished or was
    trained at another hook point, on another model or at another width than the store's."""
    if not runs:
        raise SparseInferError("give at least one run folder")
    held_out = ActivationStore.open(store)
    manifest = held_out.manifest
    infos = []
    for run in runs:
        info = run_source(run)
        source = info.get("source", {})
        hook = source.get("hook")
        if hook is not None and source.get("on_the_fly") and hook != manifest.hook:
            hook = _resolved_hook(hook, manifest.model, lm)
        if hook is not None and hook != manifest.hook:
            raise SparseInferError(
                f"run {run} was trained at hook {hook!r} but the store {store} holds {manifest.hook!r}: "
                "evaluate it on a store harvested at the same hook point"
            )
        if source.get("model") not in (None, manifest.model):
            raise SparseInferError(
                f"run {run} was trained on model {source['model']!r}, the store on {manifest.model!r}"
            )
        if info.get("dim") != manifest.dim:
            raise SparseInferError(f"run {run} has width {info.get('dim')} but the store's activations {manifest.dim}")
        infos.append(info)
    return held_out, infos


def calibration_signals(store: ActivationStore, scale: float, n_tokens: int = CALIBRATION_TOKENS) -> Tensor:
    """Held-out tokens (scaled as the run's inputs) on which a method's penalty is calibrated."""
    return store.sample(n_tokens, seed=CALIBRATION_SEED) * scale


def _first_contexts(store: ActivationStore, n: int) -> Tensor:
    """The token ids of the store's first `n` contexts, reading only the shards that hold them."""
    parts, have = [], 0
    for i in range(len(store.manifest.shards)):
        if have >= n:
            break
        parts.append(store.read_shard(i)["token_ids"])
        have += parts[-1].shape[0]
    return torch.cat(parts)[:n]


def encoder_metrics(
    encoder: Encoder,
    dictionary: Dictionary,
    held_out: ActivationStore,
    scale: float,
    n_tokens: int,
    downstream_contexts: int,
    batch_size: int,
    model: torch.nn.Module | None,
    firing: FiringStatistics | None = None,
    reference: list[Reference] | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics of `encoder` on `dictionary` (with cosine similarity and `l2_ratio`), plus the
    downstream loss and normalised KL when `model` is given; `firing` collects the per-latent firing table;
    `reference`: the clean and zero-ablated passes over the same contexts (`downstream_reference`), shared."""
    row = reconstruction_metrics(encoder, dictionary, held_out, scale, n_tokens, batch_size, firing)
    if downstream_contexts > 0 and model is not None:
        manifest = held_out.manifest
        ids = _first_contexts(held_out, downstream_contexts)
        row |= downstream_metrics(model, hook_point(manifest.hook), ids[:downstream_contexts], encoder, dictionary,
                                  scale, manifest.bos, reference=reference)  # fmt: skip
    return row


def downstream_reference(held_out: ActivationStore, downstream_contexts: int,
                         model: torch.nn.Module) -> list[Reference]:  # fmt: skip
    """The clean and zero-ablated passes that `encoder_metrics` needs for the store's first contexts, once for
    every encoder evaluated on them."""
    manifest = held_out.manifest
    ids = _first_contexts(held_out, downstream_contexts)[:downstream_contexts]
    return reference_passes(model, hook_point(manifest.hook), ids, manifest.bos)


def evaluate_run(
    run: str | Path,
    store: str | Path,
    n_tokens: int = 16_384,
    downstream_contexts: int = 16,
    batch_size: int = 2048,
    infer_with: str | None = None,
    infer_params: dict[str, Any] | None = None,
    model: tuple[torch.nn.Module, Any] | None = None,
    device: str = "cpu",
    target_l0: float | None = None,
    calibration_tokens: int = CALIBRATION_TOKENS,
    latent_table: str | Path | None = None,
) -> dict[str, Any]:
    """All metrics of one run on a held-out store; `infer_with` swaps in another encoder on the learned dictionary,
    with fixed `infer_params` or, given `target_l0`, calibrated to that L0 on held-out tokens (`ito` warm-starts
    from the run's encoder). `latent_table`: write the per-latent firing statistics there (Parquet)."""
    encoder, dictionary, info = load_run(run, device)
    label = info["config"]["encoder"]
    held_out = ActivationStore.open(store)
    scale = info["scale"]
    cal: Calibration | None = None
    if infer_with and target_l0 is not None:
        x = calibration_signals(held_out, scale, calibration_tokens).to(device)
        cal = calibrate(infer_with, dictionary, x, target_l0, infer_params, warm=encoder)
        encoder, label = cal.encoder, f"{infer_with} on {label}'s dictionary"
    elif infer_with:
        encoder = create(infer_with, dim=info["dim"], n_latents=info["n_latents"], **(infer_params or {})).to(device)
        label = f"{infer_with} on {label}'s dictionary"
    row: dict[str, Any] = {"run": str(run), "encoder": label, "n_latents": info["n_latents"]}
    row["train_flops"] = info.get("train_flops", info["history"][-1]["train_flops"] if info["history"] else 0)
    if cal is not None:
        row |= {k: v for k, v in cal.summary().items() if k != "method"}
    if downstream_contexts > 0 and model is None:
        model = load_model(held_out.manifest.model, device)
    lm = model[0] if model is not None else None
    firing = FiringStatistics(dictionary.n_latents) if latent_table is not None else None
    row |= encoder_metrics(encoder, dictionary, held_out, scale, n_tokens, downstream_contexts, batch_size, lm, firing)
    if firing is not None and latent_table is not None:
        Path(latent_table).parent.mkdir(parents=True, exist_ok=True)
        firing.table().to_parquet(latent_table)
        row["latent_table"] = str(latent_table)
    return row


def comparison_table(rows: list[dict[str, Any]], out: str | Path | None = None) -> pd.DataFrame:
    """One row per run, in run order; with `out`: comparison.parquet, matched_l0.parquet (the same
    encoders at common L0 values) and frontier.png (FVU vs L0 and downstream CE vs L0)."""
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "freq_hist_log10"} for r in rows])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / "comparison.parquet")
        matched_l0(table).to_parquet(out / "matched_l0.parquet")
        frontier_figure(table, out)
    return table


def evaluate_runs(
    runs: list[str | Path],
    store: str | Path,
    n_tokens: int = 16_384,
    downstream_contexts: int = 16,
    infer_with: str | None = None,
    infer_params: dict[str, Any] | None = None,
    device: str = "cpu",
    target_l0: list[float] | None = None,
    progress: Progress = _silent,
    latents_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate several runs on one held-out store (checked up front; the model is loaded once); with
    `infer_with`, each run again per target L0 (or once with fixed `infer_params` when no target is given).
    `latents_dir`: one per-latent firing table per row, `latents_<row>.parquet`."""
    manifest = ActivationStore.open(store).manifest
    model = load_model(manifest.model, device) if downstream_contexts > 0 else None
    check_runs(runs, store, model[0] if model is not None else None)
    if target_l0 is not None and not infer_with:
        raise SparseInferError("--target-l0 calibrates the --infer-with method: give --infer-with too")
    jobs: list[tuple[str | Path, bool, float | None]] = []  # (run, swap in infer_with, target L0)
    for run in runs:
        jobs.append((run, False, None))
        if infer_with:
            jobs += [(run, True, t) for t in (target_l0 or [None])]
    rows = []
    for i, (run, swap, target) in enumerate(jobs, 1):
        what = "its own encoder" if not swap else f"{infer_with}" + (f" at L0 {target:g}" if target else "")
        progress(f"evaluate [{i}/{len(jobs)}] {run}: {what}")
        rows.append(
            evaluate_run(run, store, n_tokens, downstream_contexts, infer_with=infer_with if swap else None,
                         infer_params=infer_params, model=model, device=device, target_l0=target,
                         latent_table=None if latents_dir is None else Path(latents_dir) / f"latents_{i - 1}.parquet")
        )  # fmt: skip
        last = rows[-1]
        progress(f"  fvu {last['fvu']:.4f}, l0 {last['l0']:.1f}" + (f", ce {last['ce']:.3f}" if "ce" in last else ""))
    return rows
