"""scikit-learn estimators over sparseinfer's encoders.

- `SparseEncoder`: like `sklearn.decomposition.SparseCoder`: a fixed dictionary (rows), codes from any registered
  encoder (`fista`, `omp`, `lca`, ... or a learned one: `relu`, `topk`, `jumprelu`, `lista`, `mlp`, `ito`).
- `DictionaryLearning`: like `sklearn.decomposition.DictionaryLearning`: learns `components_` (rows). With an
  iterative `fit_algorithm` it alternates sparse coding (our solvers) with block-coordinate atom updates, minimising
  scikit-learn's objective 0.5 ||X - U V||_F^2 + alpha ||U||_{1,1} subject to ||V_k||_2 <= 1 (`alpha` has
  scikit-learn's meaning: the per-sample Lasso penalty, our encoders' `penalty`).

Learned encoders (any encoder with trainable parameters) are trained in `fit` by the project's one training loop,
`sparseinfer.training.fit`: regime `known_dictionary` against a fixed dictionary (`SparseEncoder`, or
`DictionaryLearning`'s transform encoder after an iterative fit), `learn_both` when `DictionaryLearning` learns the
dictionary with a learned `fit_algorithm`. The loss is the study's: mean (X - X_hat)^2 + `l1` * mean |code| (JumpReLU
uses its own L0 penalty), with Adam, full batch, `train_steps` steps at `learning_rate`. With the defaults (2,000
steps at 1e-2, l1 = 0.01, the protocol's lambda) a ReLU encoder on the protocol's problem (N=16, M=8, K=3, 1,024
training signals, seed 0) reaches a held-out FVU of 0.006 against the true dictionary and 0.002 when
`DictionaryLearning` learns both (an untrained one: 1.17). Training leaves the global torch RNG as it was;
`random_state` seeds the initial weights.

Both estimators name their outputs as scikit-learn's decompositions do (`sparseencoder0`, `dictionarylearning0`,
...), support `set_output(transform="pandas")`, work in `Pipeline` and `GridSearchCV` and pass
`sklearn.utils.estimator_checks.check_estimator`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from sparseinfer.codes import as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create, hyperparameters, needs_k
from sparseinfer.encoders.ito import ITOEncoder
from sparseinfer.errors import SparseInferError
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.fit import fit as train
from sparseinfer.training.regimes import get_regime


def _build_encoder(name: str, dim: int, n_latents: int, alpha: float, params: dict[str, Any] | None) -> Encoder:
    """A registered encoder with `penalty=alpha` (if it takes a penalty) and the user's params on top."""
    accepted = hyperparameters(name)
    hp: dict[str, Any] = {"penalty": alpha} if "penalty" in accepted else {}
    if needs_k(name):
        hp["k"] = min(max(1, dim // 10), n_latents)  # scikit-learn's default n_nonzero_coefs for OMP
    hp |= dict(params or {})
    return create(name, dim=dim, n_latents=n_latents, **hp).to(torch.float64).eval()


def _trained_part(encoder: Encoder) -> Encoder:
    """What gradient steps train: the encoder itself, or for ITO its warm-start encoder (the refiner only solves)."""
    return encoder.encoder if isinstance(encoder, ITOEncoder) else encoder


def is_learned(encoder: Encoder) -> bool:
    """Whether `fit` must train the encoder (it, or ITO's warm-start encoder, has trainable parameters)."""
    return _trained_part(encoder).trainable


def _seed(random_state: Any) -> int:
    """A torch seed from a scikit-learn `random_state` (None: fresh randomness, as scikit-learn means it)."""
    return int(check_random_state(random_state).randint(2**31 - 1))


def _train(
    encoder: Encoder, dictionary: Dictionary, X: np.ndarray, regime: str, config: TrainConfig, seed: int
) -> list[dict[str, float]]:
    """Train `encoder` (and the dictionary, in `learn_both`) on X through `sparseinfer.training.fit`."""
    x = torch.from_numpy(np.require(X, np.float64, ["C", "W"]))
    with torch.random.fork_rng(devices=[]):  # the user's global torch RNG is left as it was
        history = train(_trained_part(encoder), dictionary, x, get_regime(regime), config, seed=seed)
    encoder.eval()
    return history


def _encode(encoder: Encoder, X: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Codes (n_samples, n_components) of X against atoms (rows; any non-zero norms), in float64."""
    dictionary = Dictionary(torch.from_numpy(np.require(atoms, np.float64, ["C", "W"])), normalise=False)
    x = torch.from_numpy(np.require(X, np.float64, ["C", "W"]))
    with torch.no_grad():
        return as_dense(encoder(x, dictionary)).numpy()


def objective(X: np.ndarray, codes: np.ndarray, components: np.ndarray, alpha: float) -> float:
    """scikit-learn's dictionary-learning objective 0.5 ||X - U V||_F^2 + alpha ||U||_{1,1}."""
    return float(0.5 * ((X - codes @ components) ** 2).sum() + alpha * np.abs(codes).sum())


class _SparseCodesTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What both estimators share: codes of X at `components_` (rows) and back, output names `<classname><i>`,
    and the training settings of learned encoders."""

    def _train_config(self) -> TrainConfig:
        """The training loop's settings from the estimator's `train_steps`, `learning_rate` and `l1`; a one-line
        error naming the estimator's parameter if one is out of range."""
        names = {"steps": "train_steps", "lr": "learning_rate", "l1": "l1"}
        try:
            config = TrainConfig(steps=self.train_steps, lr=self.learning_rate, l1=self.l1)
        except ValidationError as err:
            detail = "; ".join(f"{names[str(e['loc'][0])]}={e['input']!r}: {e['msg']}" for e in err.errors())
            raise SparseInferError(f"{type(self).__name__}: bad training setting(s): {detail}") from None
        return config.model_copy(update={"eval_every": max(1, config.steps // 100)})

    def _fixed_dictionary_encoder(
        self, name: str, X: np.ndarray, atoms: np.ndarray, alpha: float, params: dict[str, Any], seed: int
    ) -> Encoder:
        """The encoder called `name` for the fixed `atoms`: built, and trained on X if it has parameters."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the encoder's initial weights
            encoder = _build_encoder(name, X.shape[1], atoms.shape[0], alpha, params)
        if is_learned(encoder):
            config = self._train_config()  # validated before the dictionary is built
            dictionary = Dictionary(torch.from_numpy(np.array(atoms, dtype=np.float64)), normalise=False)
            self.history_ = _train(encoder, dictionary, X, "known_dictionary", config, seed)
        return encoder

    @property
    def _n_features_out(self) -> int:
        """Number of output features (codes), what `get_feature_names_out` names."""
        return self.n_components_

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


class SparseEncoder(_SparseCodesTransformer):
    """Sparse codes of X for a fixed `dictionary` (n_components, n_features) with any registered `encoder`.

    `alpha` is the Lasso penalty (scikit-learn's `transform_alpha`) for encoders that take `penalty`;
    `encoder_params` passes other hyperparameters (e.g. {"k": 5} for omp, {"nonneg": True}). A learned encoder
    (relu, topk, jumprelu, lista, mlp, ito's warm start) is trained in `fit` on X against the fixed dictionary
    (regime `known_dictionary`): `train_steps` full-batch Adam steps at `learning_rate` on mean (X - X_hat)^2 +
    `l1` * mean |code|; `random_state` seeds its initial weights and training. Iterative encoders learn nothing.
    """

    def __init__(
        self,
        dictionary: Any = None,
        encoder: str = "fista",
        alpha: float = 1.0,
        encoder_params: dict | None = None,
        train_steps: int = 2000,
        learning_rate: float = 1e-2,
        l1: float = 0.01,
        random_state: Any = None,
    ) -> None:
        self.dictionary = dictionary
        self.encoder = encoder
        self.alpha = alpha
        self.encoder_params = encoder_params
        self.train_steps = train_steps
        self.learning_rate = learning_rate
        self.l1 = l1
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> SparseEncoder:
        """Validate X against the dictionary; train the encoder on X if it is a learned one."""
        X = validate_data(self, X, dtype=np.float64)
        atoms = self._atoms(X.shape[1])
        seed = _seed(self.random_state)
        self._encoder = self._fixed_dictionary_encoder(self.encoder, X, atoms, self.alpha, self.encoder_params, seed)
        self.components_ = atoms
        self.n_components_ = atoms.shape[0]
        return self

    def _atoms(self, n_features: int) -> np.ndarray:
        if self.dictionary is None:  # the identity: a usable default (codes = soft-thresholded X)
            return np.eye(n_features)
        atoms = np.asarray(self.dictionary, dtype=np.float64)
        if atoms.ndim != 2 or atoms.shape[1] != n_features:
            raise ValueError(f"dictionary must have shape (n_components, {n_features}), got {atoms.shape}")
        return atoms


class DictionaryLearning(_SparseCodesTransformer):
    """Learn `components_` (n_components, n_features; rows of norm <= 1) and sparse codes, as scikit-learn's
    `DictionaryLearning` does, with codes from any registered encoder (`fit_algorithm`, `transform_algorithm`).

    An iterative `fit_algorithm` alternates (at most `max_iter` times, stopping on a relative objective change
    below `tol`) sparse coding with closed-form atom updates; `error_` holds scikit-learn's objective per iteration.
    A learned `fit_algorithm` trains encoder and dictionary jointly (regime `learn_both`, unit-norm atoms) for
    `train_steps` Adam steps at `learning_rate` on mean (X - X_hat)^2 + `l1` * mean |code|; `error_` then holds that
    training loss at the recorded steps and `history_` the loop's rows. A learned `transform_algorithm` other than
    the trained `fit_algorithm` is trained afterwards against the learned dictionary (regime `known_dictionary`).
    """

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
        train_steps: int = 2000,
        learning_rate: float = 1e-2,
        l1: float = 0.01,
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
        self.train_steps = train_steps
        self.learning_rate = learning_rate
        self.l1 = l1
        self.random_state = random_state

    def _params(self, name: str) -> dict[str, Any]:
        """`encoder_params`, with `nonneg=True` under `positive_code` for encoders that take it (the ReLU-family
        encoders' codes are non-negative anyway)."""
        params = dict(self.encoder_params or {})
        if self.positive_code and "nonneg" in hyperparameters(name):
            params = {"nonneg": True, **params}
        return params

    def fit(self, X: Any, y: Any = None) -> DictionaryLearning:
        """Learn the dictionary (and a learned encoder) from X."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return the codes of X at the learned dictionary."""
        X = validate_data(self, X, dtype=np.float64)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        rng = check_random_state(self.random_state)
        n_comp = self.n_components or X.shape[1]
        components = self._init_components(X, n_comp, rng)
        seed = _seed(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a learned encoder's initial weights
            encoder = _build_encoder(
                self.fit_algorithm, X.shape[1], n_comp, self.alpha, self._params(self.fit_algorithm)
            )
        if is_learned(encoder):
            components = self._learn_both(X, encoder, components, seed)
        else:
            components = self._alternate(X, encoder, components, rng)
        self.components_ = components
        self.n_components_ = n_comp
        alpha = self.alpha if self.transform_alpha is None else self.transform_alpha
        if self.transform_algorithm == self.fit_algorithm and is_learned(encoder):
            self._encoder = encoder  # trained with the dictionary
        else:
            params = self._params(self.transform_algorithm)
            self._encoder = self._fixed_dictionary_encoder(self.transform_algorithm, X, components, alpha, params, seed)
        return _encode(self._encoder, X, components)

    def _alternate(
        self, X: np.ndarray, encoder: Encoder, components: np.ndarray, rng: np.random.RandomState
    ) -> np.ndarray:
        """Alternating minimisation of scikit-learn's objective: codes by the solver, then the atoms."""
        errors: list[float] = []
        for _ in range(self.max_iter):
            codes = _encode(encoder, X, components)
            components = self._update_components(X, codes, components, rng)
            errors.append(objective(X, codes, components, self.alpha))
            if len(errors) > 1 and errors[-2] - errors[-1] < self.tol * errors[-1]:
                break
        self.error_ = np.asarray(errors)
        self.n_iter_ = len(errors)
        return components

    def _learn_both(self, X: np.ndarray, encoder: Encoder, components: np.ndarray, seed: int) -> np.ndarray:
        """Encoder and unit-norm dictionary trained jointly by the training loop (regime `learn_both`)."""
        config = self._train_config()
        dictionary = Dictionary(torch.from_numpy(components.copy()))
        history = _train(encoder, dictionary, X, "learn_both", config, seed)
        self.history_ = history
        self.error_ = np.asarray([row["loss"] for row in history if row["step"] > 0])
        self.n_iter_ = config.steps
        return dictionary.atoms.detach().numpy().copy()

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
