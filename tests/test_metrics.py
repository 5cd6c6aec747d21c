"""Metrics against hand-computed answers and slow references (numpy corrcoef, brute-force matching, scikit-learn)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_squared_error, precision_recall_fscore_support, r2_score

from sparseinfer import Dictionary, SparseCodes, SparseInferError
from sparseinfer.metrics import (
    correlation_matrix,
    dead_latents,
    dense_latents,
    dictionary_matching,
    dictionary_mcc,
    explained_variance,
    fvu,
    l0,
    latent_frequencies,
    latent_matching,
    latent_mcc,
    latent_mcc_unmatched,
    match_matrix,
    mse,
    relative_code_error,
    support_recovery,
)


def sparse_codes(n: int = 500, p: int = 8, k: int = 3, seed: int = 0) -> np.ndarray:
    """Non-negative codes with k active latents per row (independent of the generator under test)."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((n, p))
    for i in range(n):
        codes[i, rng.choice(p, k, replace=False)] = np.abs(rng.standard_normal(k))
    return codes


# Centred, mutually orthogonal columns with equal norms: correlations of their combinations are exact.
H1 = np.array([1.0, -1, 1, -1])
H2 = np.array([1.0, 1, -1, -1])
H3 = np.array([1.0, -1, -1, 1])


# ---------------------------------------------------------------- correlation matrix


def test_correlation_matrix_matches_numpy_corrcoef() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 6)) + rng.standard_normal((50, 1))
    reference = np.abs(np.corrcoef(a.T, b.T)[:4, 4:])
    np.testing.assert_allclose(correlation_matrix(a, b), reference, atol=1e-12)
    np.testing.assert_allclose(correlation_matrix(torch.tensor(a, dtype=torch.float32), b), reference, atol=1e-6)


def test_zero_variance_columns_give_zero_not_nan() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((100, 3))
    a[:, 1] = 0.0
    a[:, 2] = 0.1  # constant but not exactly representable: centring leaves rounding residue
    b = np.column_stack([a[:, 0], np.full(100, 7.3), a[:, 0]])
    c = correlation_matrix(a, b)
    assert np.isfinite(c).all()
    np.testing.assert_allclose(c, [[1, 0, 1], [0, 0, 0], [0, 0, 0]], atol=1e-12)
    assert latent_mcc_unmatched(a, a) == pytest.approx(1 / 3)


def test_hand_computed_single_correlation() -> None:
    # centred t = [-1.5, -.5, .5, 1.5], u = [-1.5, .5, -.5, 1.5]: dot 4, both squared norms 5 -> r = 0.8
    t = np.array([[1.0], [2], [3], [4]])
    u = np.array([[1.0], [3], [2], [4]])
    assert correlation_matrix(t, u)[0, 0] == pytest.approx(0.8)
    assert latent_mcc(t, u) == pytest.approx(0.8)
    assert latent_mcc_unmatched(t, -u) == pytest.approx(0.8)


# ---------------------------------------------------------------- latent MCC


def test_identical_codes_give_one() -> None:
    s = sparse_codes()
    assert latent_mcc(s, s) == pytest.approx(1.0)
    assert latent_mcc_unmatched(s, s) == pytest.approx(1.0)


def test_permuted_columns_match_to_one_but_unmatched_is_lower() -> None:
    s = sparse_codes()
    perm = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    inferred = s[:, perm]
    assert latent_mcc(s, inferred) == pytest.approx(1.0)
    assert latent_mcc_unmatched(s, inferred) < 0.5
    m = latent_matching(s, inferred)
    np.testing.assert_array_equal(perm[m.assignment], np.arange(8))  # inferred column assignment[i] is true i
    np.testing.assert_allclose(m.correlations, 1.0)
    np.testing.assert_allclose(m.align(inferred), s)


def test_scaled_and_affine_transforms_give_one() -> None:
    s = sparse_codes()
    scales, shifts = np.linspace(0.1, 5, 8), np.linspace(-2, 3, 8)
    assert latent_mcc(s, s * scales + shifts) == pytest.approx(1.0)
    assert latent_mcc_unmatched(s, s * scales + shifts) == pytest.approx(1.0)
    assert latent_mcc_unmatched(s, -s) == pytest.approx(1.0)  # absolute correlation


def test_independent_noise_gives_near_zero() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((10000, 16)), rng.standard_normal((10000, 16))
    # |r| of independent columns has std 1/sqrt(n) = 0.01; the best matching of 16 lifts the mean to ~0.02
    assert latent_mcc(a, b) < 0.04
    assert latent_mcc_unmatched(a, b) < 0.03


def test_unequal_widths_mean_is_over_true_latents() -> None:
    s = sparse_codes(p=4)
    rng = np.random.default_rng(4)
    wider = np.column_stack([rng.standard_normal((500, 3)), s[:, ::-1]])  # 7 columns, 4 of them the truth
    assert latent_mcc(s, wider) == pytest.approx(1.0)
    m = latent_matching(s, wider)
    np.testing.assert_array_equal(m.assignment, [6, 5, 4, 3])
    narrower = s[:, [2, 0]]  # only 2 of the 4 true latents found: 2 matched at 1, 2 count 0
    m = latent_matching(s, narrower)
    assert m.mcc == pytest.approx(0.5)
    np.testing.assert_array_equal(m.assignment, [1, -1, 0, -1])
    np.testing.assert_allclose(m.align(narrower)[:, [0, 2]], s[:, [0, 2]])
    np.testing.assert_allclose(m.align(narrower)[:, [1, 3]], 0.0)


def test_hand_computed_two_by_two() -> None:
    true = np.column_stack([H1, H2])
    inferred = np.column_stack([H1 + H2, H2])  # corr matrix [[1/√2, 0], [1/√2, 1]]
    np.testing.assert_allclose(correlation_matrix(true, inferred), [[1 / math.sqrt(2), 0], [1 / math.sqrt(2), 1]])
    assert latent_mcc(true, inferred) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert latent_mcc_unmatched(true, inferred) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


def greedy_case() -> tuple[np.ndarray, np.ndarray]:
    """Corr matrix [[2/√5, 1/√2], [1/√5, 0]]: greedy takes 2/√5 then 0; optimal takes 1/√2 + 1/√5."""
    true = np.column_stack([H1, H2])
    inferred = np.column_stack([H1 + 0.5 * H2, H1 + H3])
    return true, inferred


def test_greedy_is_worse_than_hungarian_on_constructed_case() -> None:
    true, inferred = greedy_case()
    np.testing.assert_allclose(correlation_matrix(true, inferred), [[2 / 5**0.5, 2**-0.5], [5**-0.5, 0]], atol=1e-12)
    greedy = latent_mcc(true, inferred, matching="greedy")
    optimal = latent_mcc(true, inferred)
    assert greedy == pytest.approx((2 / 5**0.5) / 2)
    assert optimal == pytest.approx((2**-0.5 + 5**-0.5) / 2)
    assert greedy < optimal - 0.1
    # the same numbers with atoms as rows and coordinates as samples
    assert dictionary_mcc(true.T, inferred.T, matching="greedy") == pytest.approx(greedy)
    assert dictionary_mcc(true.T, inferred.T) == pytest.approx(optimal)


def brute_force_best(scores: np.ndarray) -> float:
    p, q = scores.shape
    if p <= q:
        return max(sum(scores[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(q), p))
    return brute_force_best(scores.T)


def slow_greedy(scores: np.ndarray) -> set[tuple[int, int]]:
    s = scores.astype(float).copy()
    pairs = set()
    for _ in range(min(s.shape)):
        i, j = np.unravel_index(np.argmax(s), s.shape)
        pairs.add((int(i), int(j)))
        s[i, :], s[:, j] = -np.inf, -np.inf
    return pairs


@pytest.mark.parametrize("shape", [(5, 5), (4, 6), (6, 4), (1, 3)])
def test_matching_against_brute_force_and_slow_greedy(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        scores = rng.random(shape)
        rows, cols = match_matrix(scores)
        assert len(set(rows)) == len(set(cols)) == min(shape)
        assert scores[rows, cols].sum() == pytest.approx(brute_force_best(scores))
        g_rows, g_cols = match_matrix(scores, "greedy")
        assert set(zip(g_rows.tolist(), g_cols.tolist(), strict=True)) == slow_greedy(scores)
        assert scores[g_rows, g_cols].sum() <= scores[rows, cols].sum() + 1e-12


def test_unknown_matching_is_an_error() -> None:
    with pytest.raises(SparseInferError, match="unknown matching"):
        latent_mcc(np.eye(3), np.eye(3), matching="random")  # type: ignore[arg-type]


# ---------------------------------------------------------------- dictionary MCC


def test_dictionary_mcc_matches_slow_reference() -> None:
    rng = np.random.default_rng(5)
    true = rng.standard_normal((6, 10))
    learned = true[[2, 0, 1, 5, 3, 4]] * rng.uniform(-2, 2, (6, 1)) + 0.7 * rng.standard_normal((6, 10))

    def centred_cosine(u: np.ndarray, v: np.ndarray) -> float:
        u, v = u - u.mean(), v - v.mean()
        return abs(float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))))

    scores = np.array([[centred_cosine(t, lr) for lr in learned] for t in true])
    assert dictionary_mcc(true, learned) == pytest.approx(brute_force_best(scores) / 6)
    np.testing.assert_allclose(dictionary_matching(true, learned).matrix, scores, atol=1e-12)


def test_dictionary_mcc_invariances_and_dictionary_input() -> None:
    truth = Dictionary.random(16, 8, seed=0)
    atoms = truth.atoms.detach()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    signs = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)[:, None]
    learned = Dictionary.from_tensor(atoms[perm] * signs)
    assert dictionary_mcc(truth, learned) == pytest.approx(1.0)
    assert dictionary_mcc(atoms, atoms * 3.0) == pytest.approx(1.0)
    other = Dictionary.random(16, 8, seed=1)
    assert dictionary_mcc(truth, other) < 0.9
    with pytest.raises(SparseInferError, match="dim"):
        dictionary_mcc(truth, Dictionary.random(16, 9, seed=1))


# ---------------------------------------------------------------- input handling


def test_inputs_torch_numpy_and_sparse_codes_agree() -> None:
    s = sparse_codes(n=200, p=6, k=2)
    t = torch.tensor(s)
    values, indices = torch.sort(t, dim=1, descending=True)
    sparse = SparseCodes(values[:, :2], indices[:, :2], 6)
    noisy = s + 0.3 * np.random.default_rng(6).standard_normal(s.shape)
    expected = latent_mcc(s, noisy)
    assert latent_mcc(t, noisy) == pytest.approx(expected)
    assert latent_mcc(sparse, torch.tensor(noisy, dtype=torch.float32)) == pytest.approx(expected, abs=1e-6)
    assert l0(sparse) == pytest.approx(2.0)
    assert support_recovery(sparse, s).f1 == 1.0


@pytest.mark.parametrize(
    "fn",
    [latent_mcc, latent_mcc_unmatched, correlation_matrix, support_recovery, relative_code_error, fvu, mse],
)
def test_bad_inputs_raise(fn) -> None:  # type: ignore[no-untyped-def]
    a = np.random.default_rng(7).standard_normal((20, 4))
    with pytest.raises(SparseInferError, match="samples"):
        fn(a, a[:10])
    bad = a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(SparseInferError, match="NaN"):
        fn(a, bad)
    with pytest.raises(SparseInferError, match="2-D"):
        fn(a[:, 0], a[:, 0])


def test_same_width_required_where_latents_are_aligned() -> None:
    a = np.ones((5, 3))
    for fn in (latent_mcc_unmatched, support_recovery, relative_code_error, fvu):
        with pytest.raises(SparseInferError, match="columns"):
            fn(a, a[:, :2])


# ---------------------------------------------------------------- support recovery


def test_support_recovery_hand_case() -> None:
    true = np.array([[1.0, 0, 2], [0, 3, 0]])
    inferred = np.array([[0.5, 0.1, 0], [0, 2, 0.05]])
    r = support_recovery(true, inferred)  # tp (0,0),(1,1); fp (0,1),(1,2); fn (0,2)
    assert (r.true_positives, r.false_positives, r.false_negatives) == (2, 2, 1)
    assert (r.precision, r.recall, r.f1) == pytest.approx((0.5, 2 / 3, 4 / 7))
    r = support_recovery(true, inferred, threshold=0.2)
    assert (r.precision, r.recall, r.f1) == pytest.approx((1.0, 2 / 3, 0.8))
    assert support_recovery(true, -true) == support_recovery(true, true)  # |value| decides activity


def test_support_recovery_matches_sklearn_micro() -> None:
    s = sparse_codes(n=300, p=10, k=3, seed=8)
    noisy = np.maximum(s + 0.4 * np.random.default_rng(8).standard_normal(s.shape), 0)
    r = support_recovery(s, noisy, threshold=0.1)
    p, rec, f, _ = precision_recall_fscore_support(
        (s != 0).ravel(), (np.abs(noisy) > 0.1).ravel(), average="binary", zero_division=0
    )
    assert (r.precision, r.recall, r.f1) == pytest.approx((p, rec, f))


def test_support_recovery_edge_cases() -> None:
    zeros = np.zeros((4, 4))
    r = support_recovery(zeros, zeros)
    assert (r.precision, r.recall, r.f1) == (1.0, 1.0, 1.0)
    r = support_recovery(np.eye(4), zeros)
    assert (r.precision, r.recall, r.f1) == (0.0, 0.0, 0.0)
    with pytest.raises(SparseInferError, match="threshold"):
        support_recovery(np.eye(4), np.eye(4), threshold=-1.0)


def test_relative_code_error() -> None:
    assert relative_code_error([[3.0, 4.0]], [[0.0, 0.0]]) == pytest.approx(1.0)
    assert relative_code_error([[3.0, 4.0]], [[3.0, 0.0]]) == pytest.approx(0.8)
    rng = np.random.default_rng(9)
    s, s_hat = torch.tensor(rng.random((40, 7))), torch.tensor(rng.random((40, 7)))
    expected = float(torch.linalg.norm(s - s_hat) / torch.linalg.norm(s))
    assert relative_code_error(s, s_hat) == pytest.approx(expected)
    with pytest.raises(SparseInferError, match="all zero"):
        relative_code_error(np.zeros((2, 2)), np.ones((2, 2)))


# ---------------------------------------------------------------- reconstruction


def test_fvu_known_values() -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((64, 5)) * [1, 2, 3, 4, 5] + 10
    assert fvu(x, x) == 0.0
    assert fvu(x, np.broadcast_to(x.mean(axis=0), x.shape)) == pytest.approx(1.0)
    # mean [1, 2]; total variance 1 + 1 + 4 + 4 = 10; squared error 1 + 4 = 5
    assert fvu([[0.0, 0.0], [2.0, 4.0]], [[1.0, 0.0], [2.0, 2.0]]) == pytest.approx(0.5)
    assert explained_variance([[0.0, 0.0], [2.0, 4.0]], [[1.0, 0.0], [2.0, 2.0]]) == pytest.approx(0.5)


def test_fvu_and_mse_match_sklearn() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((100, 6)) * np.arange(1, 7)
    x_hat = x + 0.5 * rng.standard_normal(x.shape)
    # variance_weighted R^2 = 1 - total squared error / total variance: the same single formula
    assert fvu(torch.tensor(x), x_hat) == pytest.approx(1 - r2_score(x, x_hat, multioutput="variance_weighted"))
    assert explained_variance(x, x_hat) == pytest.approx(r2_score(x, x_hat, multioutput="variance_weighted"))
    assert mse(x, x_hat) == pytest.approx(mean_squared_error(x, x_hat))
    with pytest.raises(SparseInferError, match="zero variance"):
        fvu(np.ones((4, 2)), np.zeros((4, 2)))


# ---------------------------------------------------------------- activity


def test_activity_hand_case() -> None:
    codes = np.array([[0.0, 1, 2, 0], [0, 0, 3, 0], [0, 5, 1, 0], [0, 0, 2, -1]])
    assert l0(codes) == pytest.approx(7 / 4)
    np.testing.assert_allclose(latent_frequencies(codes), [0, 0.5, 1, 0.25])
    np.testing.assert_array_equal(dead_latents(codes), [True, False, False, False])
    np.testing.assert_array_equal(dense_latents(codes), [False, False, True, False])
    np.testing.assert_array_equal(dense_latents(codes, threshold=0.4), [False, True, True, False])
    with pytest.raises(SparseInferError, match="threshold"):
        dense_latents(codes, threshold=2.0)


def test_activity_matches_torch_counts() -> None:
    s = torch.tensor(sparse_codes(n=300, p=12, k=4, seed=12))
    s[:, 5] = 0
    assert l0(s) == pytest.approx(float(torch.count_nonzero(s, dim=1).double().mean()))
    np.testing.assert_allclose(latent_frequencies(s), (s != 0).double().mean(0).numpy())
    assert dead_latents(s).tolist() == [i == 5 for i in range(12)]


def test_fidelity_known_values() -> None:
    from sparseinfer.metrics import cosine_similarity, kl_score, row_cosines, shrinkage

    x = np.array([[3.0, 4.0], [1.0, 0.0]])
    x_hat = np.array([[1.5, 2.0], [0.0, 2.0]])  # row 0: half the signal; row 1: orthogonal, twice as long
    assert np.allclose(row_cosines(x, x_hat), [1.0, 0.0])
    assert cosine_similarity(x, x_hat) == pytest.approx(0.5)
    assert shrinkage(x, x_hat) == pytest.approx((0.5 + 2.0) / 2)
    assert cosine_similarity(x, np.zeros_like(x)) == 0.0
    assert kl_score(0.25, 1.0) == pytest.approx(0.75)
    assert kl_score(0.0, 2.0) == 1.0 and kl_score(2.0, 2.0) == 0.0
    with pytest.raises(SparseInferError, match="undefined"):
        kl_score(0.1, 0.0)
    with pytest.raises(SparseInferError, match="all zero"):
        shrinkage(np.zeros((2, 2)), x_hat)


def test_fidelity_matches_torch() -> None:
    from sparseinfer.metrics import cosine_similarity, shrinkage

    gen = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(50, 7, generator=gen), torch.randn(50, 7, generator=gen)
    ref = torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=1).mean()
    assert cosine_similarity(x, x_hat) == pytest.approx(float(ref))
    assert shrinkage(x, x_hat) == pytest.approx(float((x_hat.double().norm(dim=1) / x.double().norm(dim=1)).mean()))


def test_firing_statistics_hand_case_and_streaming() -> None:
    from sparseinfer.metrics import FiringStatistics, latent_statistics

    codes = np.array([[0.0, 2.0, 0.0], [1.0, 4.0, 0.0], [0.0, -3.0, 0.0], [3.0, 0.0, 0.0]])
    table = latent_statistics(codes)
    assert table["frequency"].tolist() == [0.5, 0.75, 0.0]
    assert table["count"].tolist() == [2, 3, 0]
    assert table["mean_when_active"].iloc[0] == 2.0 and table["mean_when_active"].iloc[1] == pytest.approx(1.0)
    assert math.isnan(table["mean_when_active"].iloc[2])
    assert table["max_abs"].tolist() == [3.0, 4.0, 0.0]
    assert table["mean"].tolist() == [1.0, 0.75, 0.0]
    stream = FiringStatistics(3)
    stream.update(codes[:1])
    stream.update(torch.tensor(codes[1:]))
    assert stream.table().equals(table)
    with pytest.raises(SparseInferError, match="latents"):
        stream.update(np.zeros((1, 4)))
    with pytest.raises(SparseInferError, match="empty"):
        FiringStatistics(3).table()
