"""scikit-learn estimators: scikit-learn's own estimator checks, Pipeline/GridSearchCV use, and agreement with
scikit-learn's SparseCoder / DictionaryLearning on the same objective."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import DictionaryLearning as SkDictionaryLearning
from sklearn.decomposition import SparseCoder
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparseinfer.sklearn import DictionaryLearning, SparseEncoder, objective


def _problem(seed: int = 0, n: int = 60, n_features: int = 10, n_comp: int = 15, k: int = 3):
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_comp, n_features))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, n_comp))
    for row in codes:
        row[rng.choice(n_comp, k, replace=False)] = rng.uniform(0.5, 2.0, k) * rng.choice([-1, 1], k)
    return codes @ atoms + 0.01 * rng.standard_normal((n, n_features)), atoms


@parametrize_with_checks(
    [
        DictionaryLearning(n_components=4, max_iter=5, random_state=0, encoder_params={"max_iter": 100}),
        SparseEncoder(alpha=0.1, encoder_params={"max_iter": 100}),
    ],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


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
