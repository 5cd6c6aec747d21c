"""Evaluate trained dictionaries on held-out activations the way SAE users do, and compare runs.

Formulas (over the held-out token positions, BOS position excluded):
- FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (explained variance = 1 - FVU), on raw activations.
- L0 = mean number of non-zero codes per token. Dead: latents never non-zero; dense: non-zero on > 10% of tokens.
- Downstream, on the held-out store's token ids: the activation at the hook point is replaced by its
  reconstruction at every position but BOS; `ce` is the next-token cross-entropy, `ce_clean` without splicing,
  `ce_zero` with the activation zeroed, `loss_recovered = (ce_zero - ce) / (ce_zero - ce_clean)`, and
  `kl` = mean over positions of KL(clean next-token distribution || spliced one).

Comparison at matched L0 (`matched_l0`): encoders differ in L0, so raw rows are not comparable. For each target L0
(default: every L0 that some run reached) and each encoder label, the metrics (FVU, CE, loss recovered, KL,
inference FLOPs per token) are interpolated linearly in log L0 between that encoder's two runs bracketing the
target ("interpolated"; "exact" when a run sits at the target), or, when the target lies outside the encoder's range
(e.g. a single run), taken from its nearest run in log L0 ("nearest", with that run's own L0 shown).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sparseinfer.activations_training import load_run
from sparseinfer.codes import as_dense
from sparseinfer.data.store import ActivationStore
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create
from sparseinfer.lm.hooks import HookPoint, splice
from sparseinfer.lm.model import load_model

DENSE_THRESHOLD = 0.1


def _point(label: str) -> HookPoint:
    module, _, side = label.partition(":")
    return HookPoint(module, side or "output")


@torch.no_grad()
def reconstruction_metrics(
    encoder: Encoder, dictionary: Dictionary, store: ActivationStore, scale: float, n_tokens: int, batch_size: int
) -> dict[str, Any]:
    """FVU, L0, dead/dense fractions, a log10 firing-frequency histogram and inference FLOPs per token."""
    device = dictionary.atoms.device
    err = total = l0 = 0.0
    s1 = torch.zeros(dictionary.dim, dtype=torch.float64)
    s2 = 0.0
    fires = torch.zeros(dictionary.n_latents, dtype=torch.float64)
    seen = 0
    flops = 0
    for xb in store.iter_batches(batch_size, seed=0, epochs=1, drop_last=False):
        x = xb.to(device) * scale
        codes = encoder(x, dictionary)
        flops += encoder.inference_flops(x.shape[0], dictionary.dim, dictionary.n_latents)
        dense = as_dense(codes)
        x_hat = dictionary.decode(codes)
        xd = x.double().cpu()
        err += float((x - x_hat).double().pow(2).sum())
        s1 += xd.sum(0)
        s2 += float(xd.pow(2).sum())
        active = (dense != 0).double().cpu()
        fires += active.sum(0)
        l0 += float(active.sum())
        seen += x.shape[0]
        if seen >= n_tokens:
            break
    total = s2 - float(s1.pow(2).sum()) / seen
    freq = fires / seen
    edges = list(range(-8, 1))
    logf = torch.log10(freq.clamp_min(1e-9))
    hist = torch.histogram(logf.float(), bins=torch.tensor(edges, dtype=torch.float32)).hist.long().tolist()
    return {
        "eval_tokens": seen,
        "fvu": err / total,
        "explained_variance": 1 - err / total,
        "l0": l0 / seen,
        "dead_fraction": float((freq == 0).double().mean()),
        "dense_fraction": float((freq > DENSE_THRESHOLD).double().mean()),
        "freq_hist_log10": {"edges": edges, "counts": hist},
        "inference_flops_per_token": flops / seen,
    }


def _ce_and_logits(model: torch.nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return ce, logits


@torch.no_grad()
def downstream_metrics(
    model: torch.nn.Module,
    point: HookPoint,
    token_ids: Tensor,
    encoder: Encoder,
    dictionary: Dictionary,
    scale: float,
    keep_first: bool,
    batch_size: int = 8,
) -> dict[str, float]:
    """Cross-entropy clean / spliced / zero-ablated, loss recovered and KL(clean || spliced) (see module doc)."""
    start = 1 if keep_first else 0

    def reconstruct(act: Tensor) -> Tensor:
        body = act[:, start:]
        flat = body.reshape(-1, body.shape[-1]).float() * scale
        x_hat = dictionary.decode(encoder(flat, dictionary)) / scale
        new = act.clone()
        new[:, start:] = x_hat.reshape(body.shape).to(act.dtype)
        return new

    def zero(act: Tensor) -> Tensor:
        new = act.clone()
        new[:, start:] = 0
        return new

    sums = {"ce_clean": 0.0, "ce": 0.0, "ce_zero": 0.0, "kl": 0.0}
    n = 0
    for ids in token_ids.split(batch_size):
        ids = ids.to(dictionary.atoms.device)
        ce_clean, clean = _ce_and_logits(model, ids)
        with splice(model, point, reconstruct):
            ce, spliced = _ce_and_logits(model, ids)
        with splice(model, point, zero):
            ce_zero, _ = _ce_and_logits(model, ids)
        logp, logq = clean.log_softmax(-1), spliced.log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1).mean()
        for key, value in zip(sums, (ce_clean, ce, ce_zero, kl), strict=True):
            sums[key] += float(value) * ids.shape[0]
        n += ids.shape[0]
    out = {k: v / n for k, v in sums.items()}
    gap = out["ce_zero"] - out["ce_clean"]
    out["loss_recovered"] = (out["ce_zero"] - out["ce"]) / gap if gap > 0 else math.nan
    return out


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
            lm, _point(manifest.hook), ids[:downstream_contexts], encoder, dictionary, scale, manifest.bos
        )
    return row


MATCHED_METRICS = ("fvu", "ce", "loss_recovered", "kl", "inference_flops_per_token")


def _at_l0(runs: pd.DataFrame, target: float, metrics: list[str]) -> dict[str, Any]:
    """One encoder's metrics at `target` L0: interpolated in log L0 between bracketing runs, else the nearest run."""
    runs = runs.sort_values("l0")
    logs = np.log(runs["l0"].clip(lower=1e-9).to_numpy(dtype=float))
    t = math.log(max(target, 1e-9))
    hit = np.isclose(logs, t, rtol=0, atol=1e-9)
    if hit.any():
        row = runs.iloc[int(np.argmax(hit))]
        return {"how": "exact", "l0": float(row["l0"]), **{m: float(row[m]) for m in metrics}}
    if len(runs) >= 2 and logs[0] < t < logs[-1]:
        hi = int(np.searchsorted(logs, t))
        w = (t - logs[hi - 1]) / (logs[hi] - logs[hi - 1])
        lo_row, hi_row = runs.iloc[hi - 1], runs.iloc[hi]
        values = {m: float((1 - w) * lo_row[m] + w * hi_row[m]) for m in metrics}
        return {"how": "interpolated", "l0": float(target), **values}
    row = runs.iloc[int(np.argmin(np.abs(logs - t)))]
    return {"how": "nearest", "l0": float(row["l0"]), **{m: float(row[m]) for m in metrics}}


def matched_l0(table: pd.DataFrame, targets: list[float] | None = None) -> pd.DataFrame:
    """Every encoder label at every target L0 (see the module docstring), sorted by target then FVU."""
    metrics = [m for m in MATCHED_METRICS if m in table]
    if targets is None:
        targets = sorted({float(f"{v:.3g}") for v in table["l0"]})
    rows = [
        {"target_l0": target, "encoder": label, **_at_l0(runs, target, metrics)}
        for target in targets
        for label, runs in table.groupby("encoder", sort=False)
    ]
    return pd.DataFrame(rows).sort_values(["target_l0", "fvu"], kind="stable").reset_index(drop=True)


def comparison_table(rows: list[dict[str, Any]], out: str | Path | None = None) -> pd.DataFrame:
    """One row per run, in run order; with `out`: comparison.parquet, matched_l0.parquet (the same
    encoders at common L0 values) and frontier.png (FVU vs L0 and downstream CE vs L0)."""
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "freq_hist_log10"} for r in rows])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / "comparison.parquet")
        matched_l0(table).to_parquet(out / "matched_l0.parquet")
        _plots(table, out)
    return table


def _plots(table: pd.DataFrame, out: Path) -> None:
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


RUN_COLUMNS = ["encoder", "l0", "fvu", "dead_fraction", "dense_fraction", "ce_clean", "ce", "ce_zero"]
RUN_COLUMNS += ["loss_recovered", "kl", "inference_flops_per_token", "train_flops"]
MATCHED_COLUMNS = ["target_l0", "encoder", "how", "l0", *MATCHED_METRICS]
TEXT_COLUMNS = ("encoder", "how")


def rich_table(table: pd.DataFrame, title: str = "dictionaries on held-out activations") -> Any:
    """A comparison table (per run, or `matched_l0`'s) as a rich table for the terminal."""
    from rich.table import Table

    columns = MATCHED_COLUMNS if "target_l0" in table else RUN_COLUMNS
    shown = Table(title=title)
    present = [c for c in columns if c in table]
    for c in present:
        shown.add_column(c, justify="left" if c in TEXT_COLUMNS else "right")
    for _, r in table.iterrows():
        shown.add_row(*(str(r[c]) if c in TEXT_COLUMNS else f"{r[c]:.4g}" for c in present))
    return shown


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
