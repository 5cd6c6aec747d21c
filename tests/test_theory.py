"""The theory package against known answers and slow references: the Donoho-Tanner values at delta = 0.5, the
statistical dimension against numerical integration, basis pursuit's exactness, the tiny phase diagram's corners, and
the rank check (~0 when M >= N, far from 0 when M < N)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import norm

from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.errors import SparseInferError
from sparseinfer.theory import (
    basis_pursuit,
    boundary_rho,
    empirical_transition,
    is_above_boundary,
    probe_codes,
    rank_check,
    recovery_boundary,
    sparse_max_error,
    statistical_dimension,
    transition_crossings,
    transition_rho,
)
from sparseinfer.theory.phase_transition import agreement, exactly_recovered, gaussian_tail_moment


def test_transition_at_half_matches_donoho_tanner() -> None:
    assert transition_rho(0.5, signed=True) == pytest.approx(0.386, abs=0.01)
    assert transition_rho(0.5, signed=False) == pytest.approx(0.558, abs=0.01)


def test_tail_moment_matches_quadrature() -> None:
    for tau in (0.0, 0.3, 1.1, 2.5):
        slow, _ = quad(lambda u, t=tau: (u - t) ** 2 * norm.pdf(u), tau, np.inf)
        assert gaussian_tail_moment(tau) == pytest.approx(slow, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("signed", [True, False])
def test_statistical_dimension_matches_grid_minimum_of_the_integral(signed: bool) -> None:
    c = 2.0 if signed else 1.0
    taus = np.linspace(0.0, 6.0, 6001)
    for eps in np.random.default_rng(0).uniform(0.02, 0.9, 4):
        tails = np.array([quad(lambda u, t=t: (u - t) ** 2 * norm.pdf(u), t, np.inf)[0] for t in taus[::50]])
        slow = np.min(eps * (1 + taus[::50] ** 2) + c * (1 - eps) * tails)
        fast = statistical_dimension(float(eps), signed)
        assert fast <= slow + 1e-12  # the exact minimum is below any grid point
        assert fast == pytest.approx(slow, abs=2e-3)
    # and the transition solves psi(rho delta) = delta
    rho = transition_rho(0.3, signed)
    assert statistical_dimension(rho * 0.3, signed) == pytest.approx(0.3, abs=1e-9)


def test_theory_rejects_bad_input() -> None:
    with pytest.raises(SparseInferError, match="delta"):
        transition_rho(1.2)
    with pytest.raises(SparseInferError, match="delta"):
        transition_rho(0.0)
    with pytest.raises(SparseInferError, match="eps"):
        statistical_dimension(1.5)
    with pytest.raises(SparseInferError, match="exceeds"):
        recovery_boundary(3, 16)
    with pytest.raises(SparseInferError, match="k"):
        recovery_boundary(16, 0)
    with pytest.raises(SparseInferError, match="NaN"):
        basis_pursuit(np.eye(3), np.array([[np.nan, 0, 0]]))
    with pytest.raises(SparseInferError, match="shape"):
        basis_pursuit(np.eye(3), np.ones((2, 4)))


def test_recovery_boundary_formula_and_its_phase_coordinates() -> None:
    assert recovery_boundary(16, 3) == pytest.approx(6 * math.log(16 / 3))
    assert recovery_boundary(128, 15) == pytest.approx(30 * math.log(128 / 15))
    assert is_above_boundary(16, 32, 3) and not is_above_boundary(128, 16, 15)
    for delta in (0.1, 0.25, 0.5):
        rho = boundary_rho(delta)
        n = 1000.0
        m = delta * n
        assert recovery_boundary(n, rho * m) == pytest.approx(m, rel=1e-9)  # the same line
    assert math.isnan(boundary_rho(0.9))  # 2 rho ln(1/(rho delta)) never reaches 1 there


@pytest.mark.parametrize("nonneg", [True, False])
def test_basis_pursuit_recovers_an_easy_instance_and_is_minimal(nonneg: bool) -> None:
    data = make_synthetic(n_latents=20, dim=14, k=2, n_train=8, n_test=1, signed=not nonneg, dtype="float64")
    atoms, x, truth = data.dictionary.atoms.numpy(), data.train_x.numpy(), data.train_codes.numpy()
    codes = basis_pursuit(atoms, x, nonneg=nonneg)
    np.testing.assert_allclose(codes @ atoms, x, atol=1e-8)
    np.testing.assert_allclose(codes, truth, atol=1e-7)
    assert exactly_recovered(truth, codes).all()
    # a hard instance: still feasible, and never a larger L1 norm than the truth (the truth is feasible)
    hard = make_synthetic(n_latents=20, dim=5, k=4, n_train=6, n_test=1, signed=not nonneg, dtype="float64")
    codes = basis_pursuit(hard.dictionary.atoms.numpy(), hard.train_x.numpy(), nonneg=nonneg)
    np.testing.assert_allclose(codes @ hard.dictionary.atoms.numpy(), hard.train_x.numpy(), atol=1e-8)
    assert (np.abs(codes).sum(1) <= np.abs(hard.train_codes.numpy()).sum(1) + 1e-8).all()
    assert not exactly_recovered(hard.train_codes.numpy(), codes).all()
    if nonneg:
        assert (codes >= -1e-12).all()


def test_empirical_transition_corners() -> None:
    cells = empirical_transition([0.2, 0.8], [0.1, 0.9], n_latents=30, trials=6, signed=False, seed=1)
    by = {(r.delta, r.rho): r.success for r in cells.itertuples()}
    assert by[(0.8, 0.1)] == 1.0  # many measurements, very sparse: always recovered
    assert by[(0.2, 0.9)] == 0.0  # few measurements, dense: never
    assert agreement(cells) == 1.0


def test_crossing_is_linear_interpolation_at_half() -> None:
    cells = pd.DataFrame(
        {
            "signed": True,
            "delta": 0.5,
            "delta_actual": 0.5,
            "rho": [0.1, 0.3, 0.5],
            "rho_actual": [0.1, 0.3, 0.5],
            "success": [1.0, 0.8, 0.2],
        }
    )
    row = transition_crossings(cells).iloc[0]
    assert row["rho_empirical"] == pytest.approx(0.3 + 0.2 * (0.8 - 0.5) / 0.6)
    assert row["rho_theory"] == pytest.approx(transition_rho(0.5))


def test_probe_codes_are_all_one_and_two_sparse_codes() -> None:
    ones, twos = probe_codes(5, (1.0, 2.0))
    assert ones.shape == (10, 5) and twos.shape == (4 * 10, 5)
    assert ((ones > 0).sum(1) == 1).all() and ((twos > 0).sum(1) == 2).all()
    supports = {tuple(np.flatnonzero(r)) for r in twos.numpy()}
    assert supports == set(itertools.combinations(range(5), 2))
    with pytest.raises(SparseInferError, match="magnitudes"):
        probe_codes(5, (1.0, -1.0))


def test_sparse_max_error_known_values() -> None:
    atoms = torch.eye(4, dtype=torch.float64)
    codes = torch.cat(probe_codes(4))
    assert sparse_max_error(torch.eye(4), atoms, codes) == 0.0
    assert sparse_max_error(torch.zeros(4, 4), atoms, codes) == 1.0  # ReLU(0) misses every code entirely
    assert sparse_max_error(0.5 * torch.eye(4), atoms, codes) == pytest.approx(0.5)
    with pytest.raises(SparseInferError, match="rows"):
        sparse_max_error(torch.zeros(3, 4), atoms, codes)


def test_rank_check_zero_when_m_at_least_n_and_positive_below() -> None:
    for dim in (8, 12):  # M >= N = 8
        atoms = make_synthetic(n_latents=8, dim=dim, k=2, dtype="float64").dictionary.atoms
        assert rank_check(atoms, steps=50, restarts=0).max_error < 1e-9
    atoms = make_synthetic(n_latents=8, dim=4, k=2, dtype="float64").dictionary.atoms
    result = rank_check(atoms, steps=100, restarts=0)
    assert result.max_error > 0.2
    assert result.max_error <= result.initial["pinv"] + 1e-12  # optimisation never reports worse than its start
    assert rank_check(atoms, steps=100, restarts=0, bias=True).max_error > 0.2
