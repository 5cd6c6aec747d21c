"""Support recovery: did the encoder find the right active latents, and how far are the code values off.

Latents must be aligned (known dictionary, or after `Matching.align`). A true latent is active where it is
nonzero; an inferred one where |value| > threshold (a threshold ignores tiny values iterative solvers leave).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparseinfer.errors import SparseInferError
from sparseinfer.metrics._inputs import ArrayLike, as_pair
from sparseinfer.validation import check_positive


@dataclass(frozen=True)
class SupportRecovery:
    """Micro-averaged precision, recall and F1 of the active sets, with the counts behind them."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def support_recovery(true_codes: ArrayLike, inferred_codes: ArrayLike, threshold: float = 0.0) -> SupportRecovery:
    """Precision / recall / F1 over all (sample, latent) entries; all 1 when both supports are empty."""
    check_positive(threshold, "threshold", allow_zero=True)
    s, s_hat = as_pair(true_codes, inferred_codes, ("true codes", "inferred codes"))
    truth, found = s != 0, np.abs(s_hat) > threshold
    tp = int((truth & found).sum())
    fp = int((~truth & found).sum())
    fn = int((truth & ~found).sum())
    if tp + fp + fn == 0:
        return SupportRecovery(1.0, 1.0, 1.0, 0, 0, 0)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)  # = 2PR / (P + R), without 0/0
    return SupportRecovery(precision, recall, f1, tp, fp, fn)


def relative_code_error(true_codes: ArrayLike, inferred_codes: ArrayLike) -> float:
    """||S - S_hat||_F / ||S||_F over aligned codes."""
    s, s_hat = as_pair(true_codes, inferred_codes, ("true codes", "inferred codes"))
    norm = np.linalg.norm(s)
    if norm == 0:
        raise SparseInferError("true codes are all zero: the relative code error is undefined")
    return float(np.linalg.norm(s - s_hat) / norm)
