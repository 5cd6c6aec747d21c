"""Pure metrics on tensors or arrays: correlation (MCC), support recovery, reconstruction, activity."""

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
from sparseinfer.metrics.reconstruction import explained_variance, fvu, mse
from sparseinfer.metrics.support import SupportRecovery, relative_code_error, support_recovery

__all__ = [
    "Matching",
    "SupportRecovery",
    "correlation_matrix",
    "dead_latents",
    "dense_latents",
    "dictionary_matching",
    "dictionary_mcc",
    "explained_variance",
    "fvu",
    "l0",
    "latent_frequencies",
    "latent_matching",
    "latent_mcc",
    "latent_mcc_unmatched",
    "match_matrix",
    "mse",
    "relative_code_error",
    "support_recovery",
]
