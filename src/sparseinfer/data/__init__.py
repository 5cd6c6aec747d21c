"""Data sources: the synthetic ground-truth generator (and, elsewhere, harvested activations)."""

from sparseinfer.data.synthetic import SyntheticConfig, SyntheticData, latent_weights, make_synthetic

__all__ = ["SyntheticConfig", "SyntheticData", "latent_weights", "make_synthetic"]
