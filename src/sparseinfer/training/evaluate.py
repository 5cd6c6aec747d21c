"""Score an (encoder, dictionary) pair against synthetic ground truth on the test split."""

from __future__ import annotations

import math

import torch

from sparseinfer.codes import as_dense
from sparseinfer.data.synthetic import SyntheticData
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.metrics import dictionary_mcc, fvu, l0, latent_mcc, latent_mcc_unmatched
from sparseinfer.training.regimes import Regime


def score_codes(codes: torch.Tensor, dictionary: Dictionary, data: SyntheticData, regime: Regime) -> dict[str, float]:
    """Latent MCC (aligned in known_codes, matched otherwise), dictionary MCC, FVU and L0 of test codes."""
    codes = as_dense(codes).detach()
    mcc = latent_mcc_unmatched if regime.supervised else latent_mcc
    scores = {"latent_mcc": mcc(data.test_codes, codes), "l0": l0(codes)}
    if regime.supervised:
        scores["dict_mcc"] = math.nan
        scores["fvu"] = math.nan
    else:
        scores["dict_mcc"] = dictionary_mcc(data.dictionary.atoms.detach(), dictionary.atoms.detach())
        with torch.no_grad():
            scores["fvu"] = fvu(data.test_x, dictionary.decode(codes))
    return scores


def evaluate_synthetic(
    encoder: Encoder, dictionary: Dictionary, data: SyntheticData, regime: Regime
) -> dict[str, float]:
    """Infer the test codes in eval mode, score them, and count the inference FLOPs of doing so."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        codes = encoder(data.test_x, dictionary)
    encoder.train(was_training)
    scores = score_codes(codes, dictionary, data, regime)
    n_test = data.test_x.shape[0]
    scores["inference_flops"] = encoder.inference_flops(n_test, dictionary.dim, dictionary.n_latents)
    return scores
