"""ista / fista / lca against scikit-learn's Lasso, the support refit against numpy's lstsq, FLOPs against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch.utils.flop_counter import FlopCounterMode

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders import create
from sparseinfer.encoders._proximal import lasso_objective
from sparseinfer.encoders._support import refit_on_support, refit_with_sizes
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import proximal as proximal_flops

SOLVERS = ["ista", "fista", "lca"]


def _problem(n_latents: int, dim: int, batch: int, seed: int) -> tuple[Dictionary, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return Dictionary.random(n_latents, dim, seed=seed + 1, dtype=torch.float64), x


def _sklearn_codes(x: torch.Tensor, atoms: torch.Tensor, penalty: float, nonneg: bool) -> torch.Tensor:
    """Per-sample Lasso with X = D^T: sklearn's 1/(2 n) scaling means alpha = penalty / dim."""
    design = atoms.T.numpy()
    model = Lasso(alpha=penalty / atoms.shape[1], fit_intercept=False, tol=1e-14, max_iter=1_000_000, positive=nonneg)
    return torch.tensor(np.stack([model.fit(design, row).coef_.copy() for row in x.numpy()]))


def _protocol_data(batch: int = 1024, n_latents: int = 16, dim: int = 8, k: int = 3, seed: int = 0):
    """The study's synthetic data: |Normal| codes on a uniform K-support, unit-norm Gaussian atoms, x = s D."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_latents, dim, generator=gen, dtype=torch.float64)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    support = torch.rand(batch, n_latents, generator=gen).argsort(dim=1)[:, :k]
    values = torch.randn(batch, k, generator=gen, dtype=torch.float64).abs()
    codes = torch.zeros(batch, n_latents, dtype=torch.float64).scatter_(1, support, values)
    return codes, Dictionary(atoms), codes @ atoms


def _mean_latent_correlation(true: torch.Tensor, inferred: torch.Tensor) -> float:
    a, b = true - true.mean(0), inferred - inferred.mean(0)
    return float(((a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))).mean())


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("penalty", [0.1, 0.3, 1.0])
def test_lasso_objective_matches_sklearn(penalty: float, nonneg: bool) -> None:
    dictionary, x = _problem(32, 16, batch=10, seed=3)
    atoms = dictionary.atoms.detach()
    reference = _sklearn_codes(x, atoms, penalty, nonneg)
    best = lasso_objective(x, atoms, reference, penalty)
    for name in SOLVERS:
        encoder = create(name, penalty=penalty, max_iter=60_000, tol=1e-12, nonneg=nonneg)
        codes = encoder(x, dictionary)
        gap = ((lasso_objective(x, atoms, codes, penalty) - best) / best).max().item()
        assert encoder.diagnostics.converged, (name, encoder.diagnostics)
        assert gap < 1e-6, (name, gap)
        assert torch.allclose(codes, reference, atol=1e-5), name
        if nonneg:
            assert (codes >= 0).all()


def test_compiled_fista_equals_eager_and_reaches_sklearn_optimum() -> None:
    """`compile=True` (torch.compile of the iteration, tensor threshold) against the eager loop and sklearn."""
    dictionary, x = _problem(24, 12, batch=16, seed=5)
    atoms = dictionary.atoms.detach()
    for nonneg in (False, True):
        kwargs = {"penalty": 0.2, "max_iter": 3000, "tol": 1e-10, "nonneg": nonneg}
        eager, compiled = create("fista", **kwargs), create("fista", compile=True, **kwargs)
        codes, fused = eager(x, dictionary), compiled(x, dictionary)
        assert compiled.diagnostics.iterations == eager.diagnostics.iterations
        assert (codes - fused).abs().max().item() < 1e-10
        best = lasso_objective(x, atoms, _sklearn_codes(x, atoms, 0.2, nonneg), 0.2)
        assert ((lasso_objective(x, atoms, fused, 0.2) - best) / best).max().item() < 1e-8
        assert compiled.flops(16, 12, 24) == eager.flops(16, 12, 24)


def test_factored_form_matches_sklearn() -> None:
    """N > 2M takes the factored gradient step (D then D^T) instead of the Gram matrix."""
    dictionary, x = _problem(48, 8, batch=8, seed=5)
    atoms = dictionary.atoms.detach()
    reference = _sklearn_codes(x, atoms, 0.2, nonneg=True)
    codes = create("fista", penalty=0.2, max_iter=20_000, tol=1e-12, nonneg=True)(x, dictionary)
    best = lasso_objective(x, atoms, reference, 0.2)
    assert ((lasso_objective(x, atoms, codes, 0.2) - best) / best).max().item() < 1e-6


def test_fista_recovers_protocol_codes() -> None:
    """Non-negative FISTA with the true dictionary: mean per-latent Pearson correlation (measured 0.9921)."""
    codes, dictionary, x = _protocol_data()
    encoder = create("fista", penalty=3e-3, nonneg=True, max_iter=5000, tol=1e-8)
    inferred = encoder(x, dictionary)
    assert encoder.diagnostics.converged
    assert _mean_latent_correlation(codes, inferred) > 0.98


def test_debias_is_exact_on_recovered_supports() -> None:
    """Where the Lasso finds the true support, the refit removes the L1 shrinkage: codes equal the truth."""
    codes, dictionary, x = _protocol_data(batch=256)
    inferred = create("fista", penalty=1e-2, nonneg=True, max_iter=5000, tol=1e-10, debias=True)(x, dictionary)
    recovered = ((inferred != 0) == (codes != 0)).all(1)
    assert recovered.float().mean() > 0.5  # measured 0.668: elsewhere the Lasso keeps extra small entries
    assert torch.allclose(inferred[recovered], codes[recovered], atol=1e-9)
    shrunk = create("fista", penalty=1e-2, nonneg=True, max_iter=5000, tol=1e-10)(x, dictionary)
    assert (shrunk[recovered] - codes[recovered]).abs().max() > 1e-3  # without the refit, codes are biased


def test_refit_matches_lstsq() -> None:
    dictionary, x = _problem(12, 5, batch=6, seed=7)
    atoms = dictionary.atoms.detach()
    gen = torch.Generator().manual_seed(8)
    codes = torch.zeros(6, 12, dtype=torch.float64)
    for row, size in enumerate([0, 1, 3, 5, 7, 12]):  # empty, ordinary, square, and more atoms than dimensions
        codes[row, torch.randperm(12, generator=gen)[:size]] = 1.0
    refitted = refit_on_support(x, atoms, codes, nonneg=False)
    for row in range(6):
        support = codes[row].nonzero().flatten().numpy()
        expected = np.zeros(12)
        if support.size:
            expected[support] = np.linalg.lstsq(atoms.numpy()[support].T, x[row].numpy(), rcond=None)[0]
        np.testing.assert_allclose(refitted[row].numpy(), expected, atol=1e-10)


def test_nonneg_refit_is_least_squares_on_its_final_support() -> None:
    dictionary, x = _problem(10, 6, batch=20, seed=9)
    atoms = dictionary.atoms.detach()
    codes = (torch.rand(20, 10, generator=torch.Generator().manual_seed(10)) < 0.4).double()
    refitted, sizes = refit_with_sizes(x, atoms, codes, nonneg=True)
    assert (refitted >= 0).all() and len(sizes) > 1  # some negative entries were dropped and refitted
    assert ((refitted != 0) <= (codes != 0)).all()
    for row in range(20):
        support = refitted[row].nonzero().flatten().numpy()
        if support.size:
            expected = np.linalg.lstsq(atoms.numpy()[support].T, x[row].numpy(), rcond=None)[0]
            np.testing.assert_allclose(refitted[row].numpy()[support], expected, atol=1e-10)


@pytest.mark.parametrize("name", SOLVERS)
def test_warm_start_from_solution_stops_at_first_check(name: str) -> None:
    dictionary, x = _problem(32, 16, batch=16, seed=11)
    solution = create("fista", penalty=0.3, max_iter=20_000, tol=1e-13)(x, dictionary)
    cold = create(name, penalty=0.3, max_iter=20_000, tol=1e-8)
    cold(x, dictionary)
    warm = create(name, penalty=0.3, max_iter=20_000, tol=1e-8)
    codes = warm(x, dictionary, init=solution)
    assert warm.diagnostics.iterations == 10 < cold.diagnostics.iterations
    assert torch.allclose(codes, solution, atol=1e-8)


@pytest.mark.parametrize("shape", [(16, 8), (64, 8), (8, 16)])  # Gram form, factored form, N < M
@pytest.mark.parametrize(
    "name, extra",
    [("ista", {}), ("ista", {"step_size": 0.2}), ("fista", {}), ("fista", {"restart": False}), ("lca", {})],
)
def test_matmul_flops_equal_flop_counter(shape: tuple[int, int], name: str, extra: dict) -> None:
    n_latents, dim = shape
    dictionary, x = _problem(n_latents, dim, batch=5, seed=12)
    encoder = create(name, penalty=0.1, tol=0.0, max_iter=7, check_every=3, **extra)
    before = encoder.flops(5, dim, n_latents)  # never called: counts max_iter iterations
    with FlopCounterMode(display=False) as counter:
        encoder(x, dictionary)
    assert encoder.diagnostics.iterations == 7
    assert encoder.flops(5, dim, n_latents).matmul == counter.get_total_flops()
    assert encoder.inference_flops(5, dim, n_latents) == before.total


def test_warm_lca_and_debias_flops_equal_flop_counter() -> None:
    dictionary, x = _problem(20, 6, batch=9, seed=13)
    encoder = create("lca", penalty=0.2, tol=0.0, max_iter=12, dt=0.1, tau=0.5, debias=True, nonneg=True)
    init = torch.rand(9, 20, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        encoder(x, dictionary, init=init)
    assert encoder.flops(9, 6, 20).matmul == counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        _, sizes = refit_with_sizes(x, dictionary.atoms.detach(), init, nonneg=True)
    assert proximal_flops.refit(9, 6, sizes, 20).matmul == counter.get_total_flops()


def test_diagnostics_report_unconverged_samples() -> None:
    dictionary, x = _problem(32, 16, batch=8, seed=14)
    encoder = create("ista", penalty=0.05, max_iter=25, tol=1e-10)
    encoder(x, dictionary)
    assert encoder.diagnostics.iterations == 25 and not encoder.diagnostics.converged
    assert encoder.diagnostics.n_unconverged > 0 and encoder.diagnostics.max_change > 1e-10


def test_float32_keeps_dtype_and_agrees_with_float64() -> None:
    dictionary, x = _problem(16, 8, batch=32, seed=15)
    exact = create("fista", penalty=0.1, max_iter=3000, tol=1e-12)(x, dictionary)
    low = Dictionary(dictionary.atoms.detach().float())
    codes = create("fista", penalty=0.1, max_iter=3000, tol=1e-6)(x.float(), low)
    assert codes.dtype == torch.float32
    assert torch.allclose(codes.double(), exact, atol=1e-4)


@pytest.mark.parametrize(
    "name, hparams, message",
    [
        ("ista", {"penalty": 0.0}, "penalty"),
        ("fista", {"penalty": -1.0}, "penalty"),
        ("lca", {"max_iter": 0}, "max_iter"),
        ("ista", {"max_iter": 2.5}, "max_iter"),
        ("fista", {"tol": -1e-3}, "tol"),
        ("ista", {"step_size": 0.0}, "step_size"),
        ("fista", {"step_size": -0.5}, "step_size"),
        ("lca", {"dt": 0.0}, "dt"),
        ("lca", {"tau": -1.0}, "tau"),
        ("fista", {"check_every": 0}, "check_every"),
        ("lca", {"step_size": 0.1}, "step_size"),
    ],
)
def test_bad_hyperparameters(name: str, hparams: dict, message: str) -> None:
    with pytest.raises(SparseInferError, match=message):
        create(name, **hparams)


@pytest.mark.parametrize("name", SOLVERS)
def test_bad_inputs(name: str) -> None:
    dictionary, x = _problem(16, 8, batch=4, seed=16)
    encoder = create(name)
    nan_x = x.clone()
    nan_x[1, 2] = float("nan")
    with pytest.raises(SparseInferError, match="NaN"):
        encoder(nan_x, dictionary)
    with pytest.raises(SparseInferError, match="columns"):
        encoder(x[:, :5], dictionary)
    with pytest.raises(SparseInferError, match="warm-start"):
        encoder(x, dictionary, init=torch.zeros(4, 15, dtype=torch.float64))
    with pytest.raises(SparseInferError, match="NaN"):
        encoder(x, dictionary, init=torch.full((4, 16), float("nan"), dtype=torch.float64))


def test_refit_rejects_mismatched_shapes() -> None:
    dictionary, x = _problem(16, 8, batch=4, seed=17)
    with pytest.raises(SparseInferError, match="codes"):
        refit_on_support(x, dictionary.atoms.detach(), torch.ones(4, 15, dtype=torch.float64))
    with pytest.raises(SparseInferError, match="rows"):
        refit_on_support(x, dictionary.atoms.detach(), torch.ones(3, 16, dtype=torch.float64))


def _default_problems() -> list[tuple[str, Dictionary, torch.Tensor, float, bool]]:
    """The fixed problems of issue 15: the study's non-negative (16, 8, K=3) data and a noisy signed one."""
    _, protocol, x = _protocol_data(batch=256)
    dictionary, noisy = _problem(48, 16, batch=64, seed=11)
    return [("nonneg (16, 8, 3)", protocol, x, 0.05, True), ("noisy signed", dictionary, noisy, 0.2, False)]


@pytest.mark.parametrize("name", SOLVERS)
def test_defaults_reach_their_tolerance_or_say_so(name: str) -> None:
    """At default tol/max_iter: within 1e-6 of sklearn's optimum (relative objective), or reported unconverged;
    fista must converge. The duality gap it reports bounds the true gap."""
    for label, dictionary, x, penalty, nonneg in _default_problems():
        atoms = dictionary.atoms.detach()
        best = lasso_objective(x, atoms, _sklearn_codes(x, atoms, penalty, nonneg), penalty)
        encoder = create(name, penalty=penalty, nonneg=nonneg)
        codes = encoder(x, dictionary)
        gap = (lasso_objective(x, atoms, codes, penalty) - best) / best
        diagnostics = encoder.diagnostics
        assert diagnostics is not None and diagnostics.measure == "max relative duality gap"
        assert gap.max().item() <= diagnostics.max_change * (1 + 1e-9) + 1e-12, (name, label)
        if name == "fista":
            assert diagnostics.converged, (label, diagnostics)
        if diagnostics.converged:
            assert gap.max().item() < 1e-6, (name, label, gap.max().item())
        else:
            assert diagnostics.n_unconverged > 0 and "not converged" in str(diagnostics)


def test_duality_gap_is_zero_at_the_optimum_and_bounds_the_error() -> None:
    from sparseinfer.encoders._proximal import relative_duality_gap

    dictionary, x = _problem(24, 10, batch=20, seed=5)
    atoms = dictionary.atoms.detach()
    for nonneg in (False, True):
        optimum = _sklearn_codes(x, atoms, 0.3, nonneg)
        assert relative_duality_gap(x, atoms, optimum, 0.3, nonneg).max().item() < 1e-10
        rough = optimum + 0.05 * torch.randn(optimum.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        rough = rough.clamp_min(0) if nonneg else rough
        error = (lasso_objective(x, atoms, rough, 0.3) - lasso_objective(x, atoms, optimum, 0.3)) / lasso_objective(
            x, atoms, rough, 0.3
        )
        bound = relative_duality_gap(x, atoms, rough, 0.3, nonneg)
        assert (bound >= error - 1e-12).all() and error.max().item() > 1e-4


@pytest.mark.parametrize("name", SOLVERS)
def test_tol_zero_reports_no_convergence_test(name: str) -> None:
    dictionary, x = _problem(24, 10, batch=8, seed=2)
    encoder = create(name, penalty=0.3, max_iter=30, tol=0.0)
    encoder(x, dictionary)
    assert encoder.diagnostics is not None and not encoder.diagnostics.tested
    assert not encoder.diagnostics.converged
    assert str(encoder.diagnostics) == "30 iterations, no convergence test"
    with FlopCounterMode(display=False) as counter:  # no gap checks counted either
        encoder(x, dictionary)
    assert encoder.flops(8, 10, 24).matmul == counter.get_total_flops()


def test_refit_by_normal_equations_matches_lstsq_and_its_flops() -> None:
    """Supports smaller than dim take the Cholesky path: float64 to 1e-10, float32 to float32 accuracy, FLOPs as
    counted by torch."""
    dictionary, x = _problem(64, 24, batch=40, seed=21)
    atoms = dictionary.atoms.detach()
    gen = torch.Generator().manual_seed(22)
    codes = torch.zeros(40, 64, dtype=torch.float64)
    for row in range(40):
        codes[row, torch.randperm(64, generator=gen)[: row % 13]] = 1.0  # 0 to 12 atoms, padded to 12 < dim
    with FlopCounterMode(display=False) as counter:
        refitted, sizes = refit_with_sizes(x, atoms, codes, nonneg=False)
    assert sizes == [12]
    assert proximal_flops.refit(40, 24, sizes, 64).matmul == counter.get_total_flops()
    single = refit_on_support(x.float(), atoms.float(), codes.float())
    for row in range(40):
        support = codes[row].nonzero().flatten().numpy()
        expected = np.zeros(64)
        if support.size:
            expected[support] = np.linalg.lstsq(atoms.numpy()[support].T, x[row].numpy(), rcond=None)[0]
        np.testing.assert_allclose(refitted[row].numpy(), expected, atol=1e-10)
        np.testing.assert_allclose(single[row].numpy(), expected, atol=2e-5)


def test_refit_with_dependent_atoms_gives_the_minimum_norm_fit() -> None:
    """Two equal atoms on one support (a singular Gram matrix): the ridge gives lstsq's minimum-norm split."""
    dictionary, x = _problem(8, 6, batch=1, seed=23)
    atoms = dictionary.atoms.detach().clone()
    atoms[1] = atoms[0]
    codes = torch.zeros(1, 8, dtype=torch.float64)
    codes[0, :3] = 1.0
    refitted = refit_on_support(x, atoms, codes)
    expected = np.linalg.lstsq(atoms.numpy()[:3].T, x[0].numpy(), rcond=None)[0]
    np.testing.assert_allclose(refitted[0, :3].numpy(), expected, atol=1e-5)
    assert torch.isfinite(refitted).all()
