"""Mean correlation coefficients (MCC): how well inferred latents or learned atoms match the ground truth.

All correlations are absolute Pearson correlations, 0 where either variable has zero variance (a dead latent
correlates with nothing). Matching is one-to-one: `"hungarian"` maximises the total correlation
(scipy's linear_sum_assignment), `"greedy"` repeatedly takes the largest remaining entry (what the original
study used for dictionaries; it can only do worse). With unequal widths min(p, q) pairs are matched and the
mean is always over the TRUE variables: a true latent left without a partner counts 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from sparseinfer.dictionary import Dictionary
from sparseinfer.errors import SparseInferError
from sparseinfer.metrics._inputs import ArrayLike, as_matrix, as_pair

MatchingMethod = Literal["hungarian", "greedy"]
_CONSTANT_RTOL = 1e-12  # a column whose spread is below this fraction of its magnitude counts as constant


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching of true variables (rows of `matrix`) to inferred ones (columns)."""

    assignment: np.ndarray  # (p,) inferred index matched to each true index; -1 where unmatched
    correlations: np.ndarray  # (p,) |correlation| of each true variable with its match; 0 where unmatched
    matrix: np.ndarray  # (p, q) |correlation| matrix the matching was made on

    @property
    def mcc(self) -> float:
        """Mean matched correlation over the true variables."""
        return float(self.correlations.mean())

    def align(self, inferred: ArrayLike) -> np.ndarray:
        """Reorder the columns of `inferred` (n, q) into the true order (n, p); unmatched columns are zeros."""
        y = as_matrix(inferred, "inferred")
        if y.shape[1] != self.matrix.shape[1]:
            raise SparseInferError(f"inferred has {y.shape[1]} columns, the matching has {self.matrix.shape[1]}")
        out = np.zeros((y.shape[0], self.assignment.shape[0]))
        hit = self.assignment >= 0
        out[:, hit] = y[:, self.assignment[hit]]
        return out


def _standardise(a: np.ndarray) -> np.ndarray:
    """Centre each column and scale it to unit norm; (numerically) constant columns become all zeros."""
    centred = a - a.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    scale = np.sqrt(a.shape[0]) * np.abs(a).max(axis=0, initial=0.0)
    ok = norms > _CONSTANT_RTOL * scale
    return np.where(ok, centred / np.where(ok, norms, 1.0), 0.0)


def _abs_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.clip(np.abs(_standardise(x).T @ _standardise(y)), 0.0, 1.0)


def correlation_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """|Pearson| between every column of `a` (n, p) and every column of `b` (n, q): a (p, q) matrix."""
    x, y = as_pair(a, b, ("a", "b"), same_cols=False)
    return _abs_corr(x, y)


def match_matrix(scores: ArrayLike, matching: MatchingMethod = "hungarian") -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching maximising the scores of a (p, q) matrix: (row indices, column indices) of the pairs."""
    s = as_matrix(scores, "scores")
    if matching == "hungarian":
        rows, cols = linear_sum_assignment(s, maximize=True)
        return rows.astype(np.int64), cols.astype(np.int64)
    if matching == "greedy":
        return _greedy(s)
    raise SparseInferError(f"unknown matching {matching!r}; choose 'hungarian' or 'greedy'")


def _greedy(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Take the largest remaining entry, drop its row and column, repeat (ties: first in row-major order)."""
    p, q = s.shape
    row_free, col_free = np.ones(p, bool), np.ones(q, bool)
    rows, cols = [], []
    for flat in np.argsort(-s, axis=None, kind="stable"):
        i, j = divmod(int(flat), q)
        if row_free[i] and col_free[j]:
            row_free[i] = col_free[j] = False
            rows.append(i)
            cols.append(j)
            if len(rows) == min(p, q):
                break
    order = np.argsort(rows)
    return np.asarray(rows, np.int64)[order], np.asarray(cols, np.int64)[order]


def _matching_from_matrix(matrix: np.ndarray, matching: MatchingMethod) -> Matching:
    rows, cols = match_matrix(matrix, matching)
    assignment = np.full(matrix.shape[0], -1, dtype=np.int64)
    correlations = np.zeros(matrix.shape[0])
    assignment[rows] = cols
    correlations[rows] = matrix[rows, cols]
    return Matching(assignment, correlations, matrix)


def latent_matching(
    true_codes: ArrayLike, inferred_codes: ArrayLike, matching: MatchingMethod = "hungarian"
) -> Matching:
    """Match inferred latents to true latents by |correlation| over the samples (rows)."""
    x, y = as_pair(true_codes, inferred_codes, ("true codes", "inferred codes"), same_cols=False)
    return _matching_from_matrix(_abs_corr(x, y), matching)


def latent_mcc(true_codes: ArrayLike, inferred_codes: ArrayLike, matching: MatchingMethod = "hungarian") -> float:
    """Latent MCC: mean over true latents of |correlation| with the matched inferred latent (unmatched count 0)."""
    return latent_matching(true_codes, inferred_codes, matching).mcc


def latent_mcc_unmatched(true_codes: ArrayLike, inferred_codes: ArrayLike) -> float:
    """MCC of already aligned latents (known-codes setting): mean |correlation| of column i with column i."""
    x, y = as_pair(true_codes, inferred_codes, ("true codes", "inferred codes"))
    diag = np.abs((_standardise(x) * _standardise(y)).sum(axis=0))
    return float(np.clip(diag, 0.0, 1.0).mean())


def _atoms(a: ArrayLike | Dictionary, name: str) -> np.ndarray:
    return as_matrix(a.atoms if isinstance(a, Dictionary) else a, name)


def dictionary_matching(
    true_atoms: ArrayLike | Dictionary, learned_atoms: ArrayLike | Dictionary, matching: MatchingMethod = "hungarian"
) -> Matching:
    """Match learned atoms to true atoms by |mean-centred cosine|: atoms are the variables, coordinates the samples."""
    true, learned = _atoms(true_atoms, "true atoms"), _atoms(learned_atoms, "learned atoms")
    if true.shape[1] != learned.shape[1]:
        raise SparseInferError(f"true atoms have dim {true.shape[1]} but learned atoms have dim {learned.shape[1]}")
    return _matching_from_matrix(_abs_corr(true.T, learned.T), matching)


def dictionary_mcc(
    true_atoms: ArrayLike | Dictionary, learned_atoms: ArrayLike | Dictionary, matching: MatchingMethod = "hungarian"
) -> float:
    """Dictionary MCC: mean over true atoms of |mean-centred cosine| with the matched learned atom."""
    return dictionary_matching(true_atoms, learned_atoms, matching).mcc
