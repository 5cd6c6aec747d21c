"""Pure metrics on tensors or arrays: correlation (MCC), support recovery, reconstruction, fidelity (cosine,
shrinkage, normalised KL), activity and per-latent firing statistics."""

from sparseinfer.metrics.activity import dead_latents, dense_latents, l0, latent_frequencies
from sparseinfer.metrics.correlation import (
    Matching,
    correlation_matrix,
    dictionary_matching,
    dictionary_mcc,
    latent_matching,
    latent_mcc,
    latent_mcc_unmatched,
    match_matrix,
)
from sparseinfer.metrics.fidelity import cosine_similarity, kl_score, row_cosines, row_l2_ratios, shrinkage
from sparseinfer.metrics.firing import FiringStatistics, latent_statistics
from sparseinfer.metrics.reconstruction import explained_variance, fvu, mse
from sparseinfer.metrics.support import SupportRecovery, relative_code_error, support_recovery

__all__ = [
    "FiringStatistics",
    "Matching",
    "SupportRecovery",
    "correlation_matrix",
    "cosine_similarity",
    "dead_latents",
    "dense_latents",
    "dictionary_matching",
    "dictionary_mcc",
    "explained_variance",
    "fvu",
    "kl_score",
    "l0",
    "latent_frequencies",
    "latent_matching",
    "latent_mcc",
    "latent_mcc_unmatched",
    "latent_statistics",
    "match_matrix",
    "mse",
    "relative_code_error",
    "row_cosines",
    "row_l2_ratios",
    "shrinkage",
    "support_recovery",
]
