"""scikit-learn estimators: scikit-learn's own estimator checks (plus its feature-name and set_output checks, which
`check_estimator` does not run for third-party estimators), Pipeline/GridSearchCV use, agreement with scikit-learn's
SparseCoder / DictionaryLearning on the same objective, and learned encoders trained in `fit`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import DictionaryLearning as SkDictionaryLearning
from sklearn.decomposition import SparseCoder
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.errors import SparseInferError
from sparseinfer.sklearn import DictionaryLearning, SparseEncoder, objective

LEARNED_ENCODERS = {
    "relu": {},
    "topk": {"k": 3},
    "jumprelu": {},
    "lista": {},
    "mlp": {"hidden": [32]},
    "ito": {"refiner_kwargs": {"max_iter": 100}},
}


def _problem(seed: int = 0, n: int = 60, n_features: int = 10, n_comp: int = 15, k: int = 3):
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_comp, n_features))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, n_comp))
    for row in codes:
        row[rng.choice(n_comp, k, replace=False)] = rng.uniform(0.5, 2.0, k) * rng.choice([-1, 1], k)
    return codes @ atoms + 0.01 * rng.standard_normal((n, n_features)), atoms


ESTIMATORS = [
    DictionaryLearning(n_components=4, max_iter=5, random_state=0, encoder_params={"max_iter": 100}),
    SparseEncoder(alpha=0.1, encoder_params={"max_iter": 100}),
    SparseEncoder(encoder="relu", train_steps=20, random_state=0),
    DictionaryLearning(n_components=4, fit_algorithm="relu", transform_algorithm="relu", train_steps=20),
]
OUTPUT_CHECKS = [
    "check_transformer_get_feature_names_out",
    "check_transformer_get_feature_names_out_pandas",
    "check_get_feature_names_out_error",
    "check_set_output_transform",
    "check_set_output_transform_pandas",
    "check_global_output_transform_pandas",
]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: {})
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("check", OUTPUT_CHECKS)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda est: type(est).__name__)
def test_sklearn_feature_name_and_output_checks(estimator, check: str) -> None:
    """scikit-learn's own checks of get_feature_names_out and set_output (they once raised NotFittedError)."""
    getattr(estimator_checks, check)(type(estimator).__name__, estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS[:2], ids=lambda est: type(est).__name__)
def test_feature_names_out(estimator) -> None:
    """`<classname><i>` for every code, as scikit-learn's decompositions name theirs; input names are only checked."""
    X, _ = _problem(n_features=6)
    prefix = type(estimator).__name__.lower()
    n_out = estimator.fit(X).transform(X).shape[1]
    expected = np.array([f"{prefix}{i}" for i in range(n_out)], dtype=object)
    np.testing.assert_array_equal(estimator.get_feature_names_out(), expected)
    names = [f"x{i}" for i in range(6)]
    estimator.fit(pd.DataFrame(X, columns=names))
    np.testing.assert_array_equal(estimator.feature_names_in_, names)
    np.testing.assert_array_equal(estimator.get_feature_names_out(names), expected)
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        estimator.get_feature_names_out([f"y{i}" for i in range(6)])


def test_pandas_output_alone_and_in_pipeline() -> None:
    X, atoms = _problem(n_features=10, n_comp=15)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(10)], index=np.arange(100, 100 + len(X)))
    coder = SparseEncoder(atoms, alpha=0.05).set_output(transform="pandas")
    out = coder.fit(frame).transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == [f"sparseencoder{i}" for i in range(15)]
    assert out.index.equals(frame.index)
    np.testing.assert_allclose(out.to_numpy(), SparseEncoder(atoms, alpha=0.05).fit(X).transform(X))
    pipe = make_pipeline(StandardScaler(), DictionaryLearning(n_components=5, max_iter=3, random_state=0))
    codes = pipe.set_output(transform="pandas").fit_transform(frame)
    assert isinstance(codes, pd.DataFrame)
    assert list(codes.columns) == [f"dictionarylearning{i}" for i in range(5)]
    assert list(pipe.get_feature_names_out()) == list(codes.columns)
    assert isinstance(pipe.transform(frame), pd.DataFrame)


def test_sparse_encoder_matches_sklearn_sparse_coder() -> None:
    """Same dictionary, same alpha: our FISTA reaches scikit-learn's lasso_cd objective (convex, unique optimum)."""
    X, atoms = _problem()
    alpha = 0.1
    theirs = SparseCoder(atoms, transform_algorithm="lasso_cd", transform_alpha=alpha, transform_max_iter=5000)
    ref = theirs.fit_transform(X)
    ours = SparseEncoder(atoms, "fista", alpha, {"tol": 1e-10, "max_iter": 5000}).fit_transform(X)
    f_ref, f_ours = objective(X, ref, atoms, alpha), objective(X, ours, atoms, alpha)
    assert abs(f_ours - f_ref) / f_ref < 1e-5
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_sparse_encoder_omp_matches_sklearn() -> None:
    X, atoms = _problem(1)
    ref = SparseCoder(atoms, transform_algorithm="omp", transform_n_nonzero_coefs=3).fit_transform(X)
    ours = SparseEncoder(atoms, "omp", encoder_params={"k": 3}).fit_transform(X)
    np.testing.assert_allclose(ours, ref, atol=1e-8)
    np.testing.assert_allclose(SparseEncoder(atoms).fit(X).inverse_transform(ours), ours @ atoms)


def test_dictionary_learning_objective_close_to_sklearn() -> None:
    """Non-convex, so only close: our final objective is within 5% of scikit-learn's (or below it)."""
    X, _ = _problem(2, n=60)
    alpha = 0.2
    ref = SkDictionaryLearning(
        n_components=15,
        alpha=alpha,
        max_iter=30,
        tol=1e-8,
        fit_algorithm="cd",
        transform_algorithm="lasso_cd",
        transform_alpha=alpha,
        random_state=0,
    ).fit(X)
    ref_obj = objective(X, ref.transform(X), ref.components_, alpha)
    ours = DictionaryLearning(
        n_components=15,
        alpha=alpha,
        max_iter=30,
        random_state=0,
        tol=1e-8,
        encoder_params={"tol": 1e-7, "max_iter": 300},
    )
    codes = ours.fit_transform(X)
    our_obj = objective(X, codes, ours.components_, alpha)
    assert our_obj <= 1.05 * ref_obj, (our_obj, ref_obj)
    assert np.all(np.linalg.norm(ours.components_, axis=1) <= 1 + 1e-9)
    assert np.all(np.diff(ours.error_) <= 1e-8 * ours.error_[0])  # alternating minimisation never goes up
    np.testing.assert_allclose(ours.inverse_transform(codes), codes @ ours.components_)


def test_pipeline_and_grid_search() -> None:
    X, atoms = _problem(3, n=90)
    y = X @ np.arange(X.shape[1])
    pipe = make_pipeline(
        DictionaryLearning(n_components=12, max_iter=5, random_state=0, encoder_params={"max_iter": 200}),
        Ridge(alpha=1e-3),
    )
    search = GridSearchCV(pipe, {"dictionarylearning__alpha": [0.05, 0.5]}, cv=3).fit(X, y)
    assert search.best_params_["dictionarylearning__alpha"] == 0.05  # less shrinkage predicts a linear y better
    assert search.best_score_ > 0.9
    coder = make_pipeline(SparseEncoder(atoms, "fista", 0.05), Ridge()).fit(X, y)
    assert coder.score(X, y) > 0.9


def test_bad_input() -> None:
    X, atoms = _problem()
    with pytest.raises(ValueError, match="dictionary must have shape"):
        SparseEncoder(atoms[:, :5]).fit(X)
    with pytest.raises(ValueError, match="alpha must be positive"):
        DictionaryLearning(alpha=0.0).fit(X)
    with pytest.raises(ValueError, match="unknown encoder"):
        DictionaryLearning(fit_algorithm="nope", max_iter=1).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        SparseEncoder(atoms).fit(np.full_like(X, np.nan))


def _fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The protocol's planted problem (N=16, M=8, K=3), fewer samples: train, test, true atoms."""
    data = make_synthetic(n_latents=16, dim=8, k=3, n_train=512, n_test=512, dtype="float64")
    return data.train_x.numpy(), data.test_x.numpy(), data.dictionary.atoms.detach().numpy()


@pytest.mark.parametrize("name", sorted(LEARNED_ENCODERS))
def test_learned_encoder_is_trained_in_fit(name: str, planted) -> None:
    """A learned encoder against the true dictionary is trained by the training loop: held-out FVU far below the
    untrained encoder's (which is what the estimator used to return)."""
    X, X_test, atoms = planted
    kwargs = {"encoder_params": LEARNED_ENCODERS[name], "learning_rate": 3e-2, "random_state": 0}
    trained = SparseEncoder(atoms, name, train_steps=300, **kwargs).fit(X)
    untrained = SparseEncoder(atoms, name, train_steps=0, **kwargs).fit(X)
    fvu = _fvu(X_test, trained.inverse_transform(trained.transform(X_test)))
    assert fvu < 0.2, fvu
    assert _fvu(X_test, untrained.inverse_transform(untrained.transform(X_test))) > 2 * fvu + 0.2
    assert trained.history_[-1]["step"] == 300
    assert trained.history_[-1]["loss"] < 0.5 * trained.history_[1]["loss"]


def test_training_is_seeded_and_leaves_torch_rng_alone(planted) -> None:
    X, _, atoms = planted
    state = torch.get_rng_state()
    a = SparseEncoder(atoms, "relu", train_steps=30, random_state=3).fit(X).transform(X)
    b = SparseEncoder(atoms, "relu", train_steps=30, random_state=3).fit(X).transform(X)
    c = SparseEncoder(atoms, "relu", train_steps=30, random_state=4).fit(X).transform(X)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_dictionary_learning_with_learned_encoder(planted) -> None:
    """learn_both: encoder and unit-norm dictionary trained together reconstruct held-out signals."""
    X, X_test, _ = planted
    est = DictionaryLearning(16, fit_algorithm="relu", transform_algorithm="relu", train_steps=500, learning_rate=3e-2)
    codes = est.set_params(random_state=0).fit_transform(X)
    assert _fvu(X, est.inverse_transform(codes)) < 0.2
    assert _fvu(X_test, est.inverse_transform(est.transform(X_test))) < 0.2
    np.testing.assert_allclose(np.linalg.norm(est.components_, axis=1), 1.0, atol=1e-9)
    assert est.n_iter_ == 500 and est.error_[-1] < 0.5 * est.error_[0]
    assert (codes >= 0).all()


def test_dictionary_learning_iterative_fit_learned_transform(planted) -> None:
    """An iterative fit learns the dictionary; a learned transform encoder is then trained against it."""
    X, X_test, _ = planted
    est = DictionaryLearning(
        16, alpha=0.01, max_iter=4, transform_algorithm="relu", train_steps=300, learning_rate=3e-2, random_state=0
    ).fit(X)
    reference = DictionaryLearning(16, alpha=0.01, max_iter=4, random_state=0).fit(X)
    np.testing.assert_array_equal(est.components_, reference.components_)  # the fit itself is unchanged
    assert _fvu(X_test, est.inverse_transform(est.transform(X_test))) < 0.2
    assert est.history_[-1]["step"] == 300


def test_bad_training_settings() -> None:
    X, atoms = _problem()
    with pytest.raises(SparseInferError, match=r"learning_rate=-1: .*greater than 0"):
        SparseEncoder(atoms, "relu", learning_rate=-1).fit(X)
    with pytest.raises(SparseInferError, match="train_steps=-3"):
        DictionaryLearning(fit_algorithm="relu", train_steps=-3).fit(X)
