"""Reconstruction on held-out activations the way SAE users measure it (over the store's token positions):
FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (explained variance = 1 - FVU), L0 = mean number of non-zero codes
per token, dead latents (never non-zero) and dense ones (non-zero on > 10% of tokens), a log10 firing-frequency
histogram, inference FLOPs per token, and SAEBench's cosine similarity and shrinkage (`l2_ratio`, see
`metrics.fidelity`); a `FiringStatistics` passed in collects the per-latent firing table on the same tokens."""

from __future__ import annotations

from typing import Any

import torch

from sparseinfer.codes import as_dense
from sparseinfer.data.store import ActivationStore
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.metrics.fidelity import row_cosines, row_l2_ratios
from sparseinfer.metrics.firing import FiringStatistics

DENSE_THRESHOLD = 0.1


@torch.no_grad()
def reconstruction_metrics(
    encoder: Encoder,
    dictionary: Dictionary,
    store: ActivationStore,
    scale: float,
    n_tokens: int,
    batch_size: int,
    firing: FiringStatistics | None = None,
) -> dict[str, Any]:
    """FVU, L0, dead/dense fractions, a log10 firing-frequency histogram and inference FLOPs per token."""
    device = dictionary.atoms.device
    err = total = l0 = 0.0
    s1 = torch.zeros(dictionary.dim, dtype=torch.float64)
    s2 = 0.0
    fires = torch.zeros(dictionary.n_latents, dtype=torch.float64)
    seen = 0
    flops = 0
    cos = l2_ratio = 0.0
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
        cos += float(row_cosines(xd, x_hat).sum())
        l2_ratio += float(row_l2_ratios(xd, x_hat).sum())
        if firing is not None:
            firing.update(dense)
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
        "cosine_similarity": cos / seen,
        "l2_ratio": l2_ratio / seen,
    }
