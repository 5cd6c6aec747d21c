"""scikit-learn estimators over sparseinfer's encoders.

- `SparseEncoder`: like `sklearn.decomposition.SparseCoder`: a fixed dictionary (rows), codes from any registered
  encoder (`fista`, `omp`, `lca`, ...).
- `DictionaryLearning`: like `sklearn.decomposition.DictionaryLearning`: learns `components_` (rows) by alternating
  sparse coding (our solvers) with block-coordinate atom updates, minimising scikit-learn's objective
  0.5 ||X - U V||_F^2 + alpha ||U||_{1,1} subject to ||V_k||_2 <= 1 (`alpha` has scikit-learn's meaning: the
  per-sample Lasso penalty, our encoders' `penalty`).
Both work in `Pipeline` and `GridSearchCV` and pass `sklearn.utils.estimator_checks.check_estimator`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from sparseinfer.codes import as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create, hyperparameters


def _build_encoder(name: str, dim: int, n_latents: int, alpha: float, params: dict[str, Any] | None) -> Encoder:
    """A registered encoder with `penalty=alpha` (if it takes a penalty) and the user's params on top."""
    accepted = hyperparameters(name)
    hp: dict[str, Any] = {"penalty": alpha} if "penalty" in accepted else {}
    if "k" in accepted:
        hp["k"] = min(max(1, dim // 10), n_latents)  # scikit-learn's default n_nonzero_coefs for OMP
    hp |= dict(params or {})
    return create(name, dim=dim, n_latents=n_latents, **hp).to(torch.float64).eval()


def _encode(encoder: Encoder, X: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Codes (n_samples, n_components) of X against atoms (rows; any non-zero norms), in float64."""
    dictionary = Dictionary(torch.from_numpy(np.require(atoms, np.float64, ["C", "W"])), normalise=False)
    x = torch.from_numpy(np.require(X, np.float64, ["C", "W"]))
    with torch.no_grad():
        return as_dense(encoder(x, dictionary)).numpy()


def objective(X: np.ndarray, codes: np.ndarray, components: np.ndarray, alpha: float) -> float:
    """scikit-learn's dictionary-learning objective 0.5 ||X - U V||_F^2 + alpha ||U||_{1,1}."""
    return float(0.5 * ((X - codes @ components) ** 2).sum() + alpha * np.abs(codes).sum())


class _CodesMixin:
    """transform / inverse_transform shared by both estimators: codes of X at `components_` (rows), and back."""

    def transform(self, X: Any) -> np.ndarray:
        """Codes (n_samples, n_components) of X at `components_`."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return _encode(self._encoder, X, self.components_)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Signals: codes @ components_."""
        check_is_fitted(self)
        codes = np.asarray(X, dtype=np.float64)
        if codes.ndim != 2 or codes.shape[1] != self.n_components_:
            raise ValueError(f"codes must have shape (n_samples, {self.n_components_}), got {codes.shape}")
        return codes @ self.components_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags


class SparseEncoder(_CodesMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Sparse codes of X for a fixed `dictionary` (n_components, n_features) with any registered `encoder`.

    `alpha` is the Lasso penalty (scikit-learn's `transform_alpha`) for encoders that take `penalty`;
    `encoder_params` passes other hyperparameters (e.g. {"k": 5} for omp, {"nonneg": True}).
    """

    def __init__(
        self, dictionary: Any = None, encoder: str = "fista", alpha: float = 1.0, encoder_params: dict | None = None
    ) -> None:
        self.dictionary = dictionary
        self.encoder = encoder
        self.alpha = alpha
        self.encoder_params = encoder_params

    def fit(self, X: Any, y: Any = None) -> SparseEncoder:
        """Validate X against the dictionary; nothing is learned."""
        X = validate_data(self, X, dtype=np.float64)
        atoms = self._atoms(X.shape[1])
        self.components_ = atoms
        self.n_components_ = atoms.shape[0]
        self._encoder = _build_encoder(self.encoder, X.shape[1], atoms.shape[0], self.alpha, self.encoder_params)
        return self

    def _atoms(self, n_features: int) -> np.ndarray:
        if self.dictionary is None:  # the identity: a usable default (codes = soft-thresholded X)
            return np.eye(n_features)
        atoms = np.asarray(self.dictionary, dtype=np.float64)
        if atoms.ndim != 2 or atoms.shape[1] != n_features:
            raise ValueError(f"dictionary must have shape (n_components, {n_features}), got {atoms.shape}")
        return atoms


class DictionaryLearning(_CodesMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Learn `components_` (n_components, n_features; rows of norm <= 1) and sparse codes, as scikit-learn's
    `DictionaryLearning` does, with codes from any registered encoder (`fit_algorithm`, `transform_algorithm`)."""

    def __init__(
        self,
        n_components: int | None = None,
        alpha: float = 1.0,
        max_iter: int = 100,
        tol: float = 1e-6,
        fit_algorithm: str = "fista",
        transform_algorithm: str = "fista",
        transform_alpha: float | None = None,
        encoder_params: dict | None = None,
        positive_code: bool = False,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.fit_algorithm = fit_algorithm
        self.transform_algorithm = transform_algorithm
        self.transform_alpha = transform_alpha
        self.encoder_params = encoder_params
        self.positive_code = positive_code
        self.random_state = random_state

    def _params(self) -> dict[str, Any]:
        return (
            {"nonneg": True, **(self.encoder_params or {})} if self.positive_code else dict(self.encoder_params or {})
        )

    def fit(self, X: Any, y: Any = None) -> DictionaryLearning:
        """Alternate: codes by the solver, then each atom in closed form projected onto the unit ball."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return the codes of X at the learned dictionary."""
        X = validate_data(self, X, dtype=np.float64)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        rng = check_random_state(self.random_state)
        n_samples, n_features = X.shape
        n_comp = self.n_components or n_features
        components = self._init_components(X, n_comp, rng)
        encoder = _build_encoder(self.fit_algorithm, n_features, n_comp, self.alpha, self._params())
        errors: list[float] = []
        codes = np.zeros((n_samples, n_comp))
        for _ in range(self.max_iter):
            codes = _encode(encoder, X, components)
            components = self._update_components(X, codes, components, rng)
            errors.append(objective(X, codes, components, self.alpha))
            if len(errors) > 1 and errors[-2] - errors[-1] < self.tol * errors[-1]:
                break
        self.components_ = components
        self.n_components_ = n_comp
        self.error_ = np.asarray(errors)
        self.n_iter_ = len(errors)
        alpha = self.alpha if self.transform_alpha is None else self.transform_alpha
        self._encoder = _build_encoder(self.transform_algorithm, n_features, n_comp, alpha, self._params())
        return _encode(self._encoder, X, components)

    @staticmethod
    def _init_components(X: np.ndarray, n_comp: int, rng: np.random.RandomState) -> np.ndarray:
        """Leading right singular vectors of X, then random unit rows for any components beyond the rank."""
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        rows = [v for v, sv in zip(vt, s, strict=True) if sv > 1e-10 * max(s[0], 1e-300)][:n_comp]
        extra = rng.standard_normal((n_comp - len(rows), X.shape[1]))
        components = np.vstack([np.asarray(rows).reshape(-1, X.shape[1]), extra])
        return components / np.linalg.norm(components, axis=1, keepdims=True)

    @staticmethod
    def _update_components(
        X: np.ndarray, codes: np.ndarray, components: np.ndarray, rng: np.random.RandomState
    ) -> np.ndarray:
        """One block-coordinate pass: V_k <- argmin over ||v|| <= 1 of 0.5 ||X - U V||^2 with the other rows fixed.
        An unused atom (its codes all zero) is redrawn at random so no atom is zero."""
        V = components.copy()
        gram = codes.T @ codes  # A = U^T U
        cross = codes.T @ X  # U^T X
        for k in range(V.shape[0]):
            if gram[k, k] > 1e-12:
                V[k] += (cross[k] - gram[k] @ V) / gram[k, k]
            else:
                V[k] = rng.standard_normal(V.shape[1])
            norm = np.linalg.norm(V[k])
            if norm < 1e-12:
                V[k] = rng.standard_normal(V.shape[1])
                norm = np.linalg.norm(V[k])
            V[k] /= max(norm, 1.0) if gram[k, k] > 1e-12 else norm
        return V
