"""Evaluate trained runs on a held-out activation store and compare them: reconstruction (`reconstruction`),
downstream loss (`downstream`) and the comparison at matched L0 (`matched`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sparseinfer.data.store import ActivationStore
from sparseinfer.encoders.base import create
from sparseinfer.evaluation.downstream import downstream_metrics, hook_point
from sparseinfer.evaluation.figures import frontier_figure
from sparseinfer.evaluation.matched import matched_l0
from sparseinfer.evaluation.reconstruction import reconstruction_metrics
from sparseinfer.lm.model import load_model
from sparseinfer.training.activations.train import load_run


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
) -> dict[str, Any]:
    """All metrics of one run on a held-out store; `infer_with` swaps in another encoder on the learned dictionary."""
    encoder, dictionary, info = load_run(run, device)
    label = info["config"]["encoder"]
    if infer_with:
        encoder = create(infer_with, dim=info["dim"], n_latents=info["n_latents"], **(infer_params or {})).to(device)
        label = f"{infer_with} on {label}'s dictionary"
    held_out = ActivationStore.open(store)
    scale = info["scale"]
    row: dict[str, Any] = {"run": str(run), "encoder": label, "n_latents": info["n_latents"]}
    row["train_flops"] = info["history"][-1]["train_flops"] if info["history"] else 0
    row |= reconstruction_metrics(encoder, dictionary, held_out, scale, n_tokens, batch_size)
    if downstream_contexts > 0:
        manifest = held_out.manifest
        lm, _ = model if model is not None else load_model(manifest.model, device)
        ids = torch.cat([held_out.read_shard(i)["token_ids"] for i in range(len(manifest.shards))])
        row |= downstream_metrics(
            lm, hook_point(manifest.hook), ids[:downstream_contexts], encoder, dictionary, scale, manifest.bos
        )
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
) -> list[dict[str, Any]]:
    """Evaluate several runs on one held-out store (the model is loaded once); with `infer_with`, each run twice."""
    model = None
    if downstream_contexts > 0:
        model = load_model(ActivationStore.open(store).manifest.model, device)
    rows = []
    for run in runs:
        rows.append(evaluate_run(run, store, n_tokens, downstream_contexts, model=model, device=device))
        if infer_with:
            rows.append(
                evaluate_run(run, store, n_tokens, downstream_contexts, infer_with=infer_with,
                             infer_params=infer_params, model=model, device=device)
            )  # fmt: skip
    return rows
