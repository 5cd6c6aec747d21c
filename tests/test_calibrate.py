"""Calibration to a target L0 (evaluation.calibrate): every method lands within 5% of two targets on a random
dictionary, budgeted methods get k = target, and a target out of reach is refused with a clear error."""

from __future__ import annotations

import itertools

import pytest
import torch

from sparseinfer.codes import as_dense
from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.encoders import create
from sparseinfer.errors import SparseInferError
from sparseinfer.evaluation.calibrate import PENALISED, bisect_penalty, calibrate, penalised_builder
from sparseinfer.metrics import l0

DIM, N = 16, 48
FAST = {"fista": {"max_iter": 200}, "ista": {"max_iter": 200}, "lca": {"max_iter": 200}}


@pytest.fixture(scope="module")
def problem():
    data = make_synthetic(n_latents=N, dim=DIM, k=4, n_train=1, n_test=256, seed=3)
    warm = create("relu", dim=DIM, n_latents=N)
    with torch.no_grad():  # a plausible trained encoder: the atoms as its weights
        warm.linear.weight.copy_(data.dictionary.atoms)
    return data.test_x, data.dictionary, warm


@pytest.mark.parametrize("method", PENALISED)
@pytest.mark.parametrize("target", [3.0, 8.0])
def test_penalised_methods_land_within_tolerance(problem, method, target) -> None:
    x, dico, warm = problem
    cal = calibrate(method, dico, x, target, FAST.get(method), warm=warm if method == "ito" else None)
    assert abs(cal.l0 - target) <= 0.05 * target
    assert cal.penalty is not None and cal.penalty > 0 and 1 <= cal.steps <= 30 and cal.flops > 0
    with torch.no_grad():  # the returned encoder reproduces the calibrated L0 on the same signals
        assert l0(as_dense(cal.encoder(x, dico))) == pytest.approx(cal.l0)


@pytest.mark.parametrize("method", ["omp", "matching_pursuit", "topk"])
def test_budgeted_methods_take_k_equal_to_target(problem, method) -> None:
    x, dico, _ = problem
    cal = calibrate(method, dico, x, 5)
    assert cal.k == 5 and cal.penalty is None
    assert cal.l0 <= 5 and cal.l0 > 4  # at most k per token (pursuit may stop early on an exact fit)


def test_topk_keeps_a_trained_encoders_weights(problem) -> None:
    x, dico, _ = problem
    trained = create("topk", dim=DIM, n_latents=N, k=2)
    cal = calibrate("topk", dico, x, 6, warm=trained)
    assert cal.encoder.k == 6 and trained.k == 2
    assert torch.equal(cal.encoder.linear.weight, trained.linear.weight)


def test_bisection_is_monotone_and_counts_every_trial(problem) -> None:
    x, dico, _ = problem
    found = bisect_penalty(penalised_builder("fista", dico, FAST["fista"]), x, dico, 6.0, tolerance=0.0, max_steps=8)
    assert found.steps == 8 and len(found.trials) == 8 and not found.within
    ordered = sorted(found.trials)  # larger penalty, sparser codes (trials 1% apart may differ by solver noise)
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(ordered) if b[0] > 1.1 * a[0])
    assert max(c for _, c in found.trials) > 6.0 > min(c for _, c in found.trials)  # it brackets the target


def test_interpolated_search_needs_fewer_trials_than_halving(problem) -> None:
    """Interpolating log L0 against log penalty lands within 5% in fewer trials than halving the bracket would
    need (halving: 7 on this problem's 14-unit log range; interpolation: 5)."""
    x, dico, _ = problem
    found = bisect_penalty(penalised_builder("fista", dico, FAST["fista"]), x, dico, 6.0)
    assert found.within and found.steps <= 6
    assert found.flops >= 8 * 2 * x.shape[0] * DIM * N  # at least one D^T x product per trial


def test_out_of_reach_target_is_refused(problem) -> None:
    x, dico, _warm = problem
    with pytest.raises(SparseInferError, match=r"cannot reach mean L0 40 within 5%.*densest code"):
        calibrate("fista", dico, x, 40, {"max_iter": 100}, max_steps=12)
    with pytest.raises(SparseInferError, match="target L0 must be in"):
        calibrate("omp", dico, x, N + 1)
    with pytest.raises(SparseInferError, match="warm-start"):
        calibrate("ito", dico, x, 4)
    with pytest.raises(SparseInferError, match="cannot calibrate"):
        calibrate("relu", dico, x, 4)
    with pytest.raises(SparseInferError, match="penalty is what calibration sets"):
        calibrate("fista", dico, x, 4, {"penalty": 0.1})
