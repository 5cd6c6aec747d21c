"""A small activation store of clustered random 'activations', for tests that train without a model."""

from __future__ import annotations

from pathlib import Path

import torch

from sparseinfer.data.store import ActivationStore, Manifest


def clustered_store(
    folder: Path, dim: int, clusters: int, scale: float, noise: float, offset: float, shards: int = 4, seed: int = 0
) -> Path:
    """`shards` shards of 16 contexts x 9 tokens (BOS first): cluster centres (N(0, scale^2)) plus noise and offset."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen) * scale
    store = ActivationStore.create(folder, Manifest("none", "h", "float32", dim, 9, True))
    for _ in range(shards):
        pick = torch.randint(clusters, (16, 9), generator=gen)
        store.append(centres[pick] + noise * torch.randn(16, 9, dim, generator=gen) + offset, torch.zeros(16, 9).long())
    store.finish()
    return folder
