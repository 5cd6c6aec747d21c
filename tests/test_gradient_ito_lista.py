"""gradient, ito and lista: against scikit-learn's Lasso, slow per-sample torch.optim loops, inline ISTA; FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch.utils.flop_counter import FlopCounterMode

import sparseinfer as si
from sparseinfer.encoders._proximal import lasso_objective
from sparseinfer.encoders.gradient import GradientEncoder, lasso_lambda, study_objective, study_penalty
from sparseinfer.encoders.ito import ITOEncoder
from sparseinfer.encoders.lista import LISTAEncoder
from sparseinfer.flops import amortised, optimisation


def _problem(n_latents: int = 16, dim: int = 8, batch: int = 6, seed: int = 0, sparse_k: int | None = None):
    dictionary = si.Dictionary.random(n_latents, dim, seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    if sparse_k is None:
        return dictionary, torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    codes = torch.zeros(batch, n_latents, dtype=torch.float64)
    for b in range(batch):
        codes[b, torch.randperm(n_latents, generator=gen)[:sparse_k]] = (
            torch.rand(sparse_k, generator=gen, dtype=torch.float64) + 0.5
        )
    return dictionary, codes @ dictionary.atoms.detach()


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------------------------------------- gradient


def test_study_loss_equals_scaled_lasso() -> None:
    """B M / 2 times the study's loss is the sum over samples of 1/2 ||x - sD||^2 + lasso_lambda ||s||_1."""
    dictionary, x = _problem(n_latents=20, dim=7, batch=5)
    codes = torch.randn(5, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    atoms, penalty = dictionary.atoms.detach(), 0.3
    lam = lasso_lambda(penalty, 7, 20)
    scaled = study_objective(x, codes, atoms, penalty) * 5 * 7 / 2
    assert torch.allclose(scaled, lasso_objective(x, atoms, codes, lam).sum(), rtol=1e-13)
    assert study_penalty(lam, 7, 20) == pytest.approx(penalty)


@pytest.mark.parametrize(("optimiser", "lr", "steps"), [("adam", 3e-2, 1000), ("sgd", None, 1000)])
def test_gradient_none_reaches_lasso_optimum(optimiser: str, lr: float | None, steps: int) -> None:
    """Plain codes (convex problem): the objective reaches scikit-learn's Lasso optimum within 1% of f(0)."""
    dictionary, x = _problem()
    atoms, penalty = dictionary.atoms.detach(), 0.05
    lam = lasso_lambda(penalty, 8, 16)
    ref = np.stack(
        [
            Lasso(alpha=lam / 8, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(atoms.numpy().T, row).coef_
            for row in x.numpy()
        ]
    )
    best = lasso_objective(x, atoms, torch.from_numpy(ref), lam)
    lr = lr if lr is not None else 6 * 8 / (2 * dictionary.lipschitz())  # step 1/L on the per-sample Lasso
    encoder = si.create(
        "gradient", optimiser=optimiser, lr=lr, max_iter=steps, penalty=penalty, parameterisation="none"
    )
    reached = lasso_objective(x, atoms, encoder(x, dictionary), lam)
    start = 0.5 * (x * x).sum(1)
    gap = (reached - best) / start
    assert float(gap.min()) > -1e-9  # nothing beats the optimum
    assert float(gap.max()) < 1e-2


def _slow_per_sample_adam(x, atoms, penalty, lr, steps, u0):
    """One torch.optim.Adam per sample, each on its share of the batch loss (the same per-element gradients)."""
    batch = x.shape[0]
    params = [torch.nn.Parameter(u0[b].clone()) for b in range(batch)]
    opts = [torch.optim.Adam([p], lr=lr) for p in params]
    for _ in range(steps):
        for b in range(batch):
            opts[b].zero_grad()
            s = params[b].exp()
            loss = ((x[b] - s @ atoms) ** 2).mean() / batch + penalty * s.abs().mean() / batch
            loss.backward()
            opts[b].step()
    return torch.stack([p.detach().exp() for p in params])


@pytest.mark.parametrize("warm", [False, True])
def test_gradient_exp_matches_per_sample_adam(warm: bool) -> None:
    dictionary, x = _problem(batch=4, sparse_k=3)
    atoms = dictionary.atoms.detach()
    init = torch.rand(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) if warm else None
    if warm:
        init[init < 0.5] = 0.0
    logged: list[tuple[int, float]] = []
    encoder = GradientEncoder(lr=5e-2, max_iter=300, penalty=0.01, log_every=50, eps=1e-6)
    encoder.on_step = lambda step, codes: logged.append((step, float(study_objective(x, codes, atoms, 0.01))))
    codes = encoder(x, dictionary, init=init)
    u0 = torch.full((4, 16), -10.0, dtype=torch.float64) if init is None else init.clamp_min(1e-6).log()
    ref = _slow_per_sample_adam(x, atoms, 0.01, 5e-2, 300, u0)
    assert torch.allclose(codes, ref, rtol=1e-10, atol=1e-13)
    assert [step for step, _ in logged] == [50, 100, 150, 200, 250, 300]
    start = float(study_objective(x, u0.exp(), atoms, 0.01))
    values = [value for _, value in logged]
    assert values[-1] < 0.2 * start and values[-1] < values[0]


def test_gradient_under_no_grad_keeps_dictionary_frozen() -> None:
    dictionary, x = _problem(sparse_k=2)
    encoder = si.create("gradient", lr=5e-2, max_iter=400, penalty=1e-3)
    with torch.no_grad():
        codes = encoder(x, dictionary)
        x_hat = dictionary.decode(codes)
    assert dictionary.atoms.grad is None and not codes.requires_grad
    fvu = float(((x - x_hat) ** 2).sum() / (x**2).sum())
    assert fvu < 0.05  # it optimised
    assert (codes > 0).all()  # exp parameterisation


def test_gradient_tol_stops_early_and_warm_start_mapping() -> None:
    dictionary, x = _problem()
    encoder = si.create("gradient", lr=1e-2, max_iter=5000, tol=5e-3)
    encoder(x, dictionary)
    assert encoder.diagnostics is not None and encoder.diagnostics.converged
    assert encoder.diagnostics.iterations < 5000 and encoder.diagnostics.max_change < 5e-3
    relu = si.create("gradient", parameterisation="relu", eps=1e-3)
    start = torch.tensor([[0.0, 2.0, -1.0]], dtype=torch.float64)
    assert torch.equal(relu.parameters_of(start, (1, 3), start), torch.tensor([[1e-3, 2.0, 1e-3]], dtype=torch.float64))
    exp = si.create("gradient", eps=1e-3)
    assert torch.allclose(exp.codes_of(exp.parameters_of(start, (1, 3), start)), relu.codes_of(start.clamp_min(1e-3)))


def test_gradient_debias_is_least_squares_on_support() -> None:
    dictionary, x = _problem(n_latents=24, dim=12, sparse_k=2)
    encoder = si.create("gradient", lr=5e-2, max_iter=300, penalty=0.05, debias=True, support_threshold=0.05)
    codes = encoder(x, dictionary).numpy()
    atoms = dictionary.atoms.detach().numpy()
    for row, sample in zip(codes, x.numpy(), strict=True):
        support = np.flatnonzero(row)
        assert 0 < support.size < 12
        coef = np.linalg.lstsq(atoms[support].T, sample, rcond=None)[0]
        np.testing.assert_allclose(row[support], coef, atol=1e-10)


@pytest.mark.parametrize(("optimiser", "parameterisation", "warm"), [("adam", "exp", False), ("sgd", "relu", True)])
def test_gradient_flops_match_counter(optimiser: str, parameterisation: str, warm: bool) -> None:
    dictionary, x = _problem(n_latents=24, dim=10, batch=7)
    encoder = si.create("gradient", optimiser=optimiser, parameterisation=parameterisation, max_iter=13)
    init = torch.rand(7, 24, dtype=torch.float64) if warm else None
    counted = _counted(lambda: encoder(x, dictionary, init=init))
    formula = optimisation.gradient(7, 10, 24, 13, optimiser, parameterisation, warm)
    assert counted == formula.matmul == 13 * 4 * 7 * 10 * 24
    assert encoder.inference_flops(7, 10, 24) == formula.total


def test_gradient_errors() -> None:
    dictionary, x = _problem()
    for bad in ({"lr": 0.0}, {"lr": -1.0}, {"max_iter": 0}, {"penalty": -0.1}, {"eps": 0.0}):
        with pytest.raises(si.SparseInferError, match=next(iter(bad))):
            si.create("gradient", **bad)
    with pytest.raises(si.SparseInferError, match="'optimiser': input should be 'adam' or 'sgd'; got 'lbfgs'"):
        si.create("gradient", optimiser="lbfgs")
    with pytest.raises(si.SparseInferError, match="parameterisation"):
        si.create("gradient", parameterisation="softplus")
    bad = x.clone()
    bad[1, 2] = float("inf")
    with pytest.raises(si.SparseInferError, match="NaN/Inf"):
        si.create("gradient")(bad, dictionary)


# ---------------------------------------------------------------------------------------------------------------- ito


def test_ito_from_plain_config_equals_manual_composition() -> None:
    dictionary, x = _problem(sparse_k=3)
    refine = {"lr": 1e-2, "max_iter": 50, "penalty": 0.01}
    torch.manual_seed(0)
    ito = si.create("ito", dim=8, n_latents=16, init="relu", refiner="gradient", init_kwargs={"bias": False},
                    refiner_kwargs=refine).double()  # fmt: skip
    codes = ito(x, dictionary)
    start = torch.relu(x @ ito.encoder.linear.weight.T)
    manual = si.create("gradient", **refine)(x, dictionary, init=start)
    assert torch.allclose(codes, manual, rtol=1e-12, atol=0)
    assert ito.diagnostics is not None and ito.diagnostics.iterations == 50
    # tol = 0 (the default): no convergence test ran, and the summary says so instead of claiming convergence
    assert not ito.diagnostics.tested and not ito.diagnostics.converged
    assert str(ito.diagnostics) == "50 iterations, no convergence test"
    # The two start modes differ; "cold" is gradient from u = -10, ignoring the encoder.
    cold = ITOEncoder.wrap(ito.encoder, si.create("gradient", **refine), start="cold")
    assert torch.allclose(cold(x, dictionary), si.create("gradient", **refine)(x, dictionary), rtol=1e-12, atol=0)
    assert not torch.allclose(cold(x, dictionary), codes)


@pytest.mark.parametrize("refiner", ["ista", "fista", "lca", "omp", "matching_pursuit", "gradient"])
def test_ito_refiners_accept_sparse_warm_starts(refiner: str) -> None:
    dictionary, x = _problem(n_latents=24, dim=12, batch=10, sparse_k=2)
    torch.manual_seed(1)
    encoder = si.create("topk", dim=12, n_latents=24, k=2, sparse_output=True).double()
    hparams = {"k": 2} if refiner == "omp" else {"max_iter": 20}
    ito = ITOEncoder.wrap(encoder, si.create(refiner, **hparams))
    codes = ito(x, dictionary)
    assert codes.shape == (10, 24) and torch.isfinite(codes).all()
    expected = encoder.inference_flops(10, 12, 24) + ito.refiner.inference_flops(10, 12, 24)
    assert ito.inference_flops(10, 12, 24) == expected


def test_ito_flops_match_counter() -> None:
    dictionary, x = _problem(n_latents=20, dim=8, batch=9)
    ito = si.create("ito", dim=8, n_latents=20, init_kwargs={"bias": False}, refiner_kwargs={"max_iter": 11}).double()
    counted = _counted(lambda: ito(x, dictionary))
    matmul = amortised.relu(9, 8, 20, False).matmul + optimisation.gradient(9, 8, 20, 11, warm_start=True).matmul
    assert counted == matmul
    total = amortised.relu(9, 8, 20, False).total + optimisation.gradient(9, 8, 20, 11, warm_start=True).total
    assert ito.inference_flops(9, 8, 20) == total
    cold = ITOEncoder.wrap(ito.encoder, ito.refiner, start="cold")
    assert _counted(lambda: cold(x, dictionary)) == optimisation.gradient(9, 8, 20, 11).matmul


def test_ito_errors() -> None:
    with pytest.raises(si.SparseInferError, match=r"unknown refiner 'adam'; known refiners: .*fista.*gradient.*omp"):
        si.create("ito", dim=8, n_latents=16, refiner="adam")
    with pytest.raises(si.SparseInferError, match="unknown refiner 'relu'"):
        si.create("ito", dim=8, n_latents=16, refiner="relu")  # not iterative
    with pytest.raises(si.SparseInferError, match="'start': input should be 'encoder' or 'cold'; got 'warm'"):
        si.create("ito", dim=8, n_latents=16, start="warm")
    with pytest.raises(si.SparseInferError, match="unknown encoder 'nope'"):
        si.create("ito", dim=8, n_latents=16, init="nope")
    with pytest.raises(si.SparseInferError, match="lr must be positive"):
        si.create("ito", dim=8, n_latents=16, refiner_kwargs={"lr": 0.0})
    dictionary, x = _problem()
    x[0, 0] = float("nan")
    with pytest.raises(si.SparseInferError, match="NaN"):
        si.create("ito", dim=8, n_latents=16).double()(x, dictionary)


# -------------------------------------------------------------------------------------------------------------- lista


def _ista(x, atoms, penalty, steps, nonneg):
    lip = float(torch.linalg.matrix_norm(atoms, ord=2) ** 2)
    s = torch.zeros(x.shape[0], atoms.shape[0], dtype=x.dtype)
    for _ in range(steps):
        v = s - (s @ atoms - x) @ atoms.T / lip
        s = torch.relu(v - penalty / lip) if nonneg else torch.sign(v) * torch.relu(v.abs() - penalty / lip)
    return s


@pytest.mark.parametrize(("n_layers", "nonneg", "tied"), [(1, False, True), (4, False, True), (6, True, False)])
def test_lista_from_dictionary_equals_ista(n_layers: int, nonneg: bool, tied: bool) -> None:
    dictionary, x = _problem(n_latents=20, dim=10, batch=12)
    lista = si.create("lista", dim=10, n_latents=20, n_layers=n_layers, nonneg=nonneg, tied=tied).double()
    lista.init_from_dictionary(dictionary, penalty=0.1)
    codes = lista(x, dictionary)
    ref = _ista(x, dictionary.atoms.detach(), 0.1, n_layers, nonneg)
    assert torch.allclose(codes, ref, rtol=0, atol=1e-12)
    ista = si.create("ista", penalty=0.1, max_iter=n_layers, tol=0.0, nonneg=nonneg)(x, dictionary)
    assert torch.allclose(codes, ista, rtol=0, atol=1e-12)
    assert float(codes.detach().abs().sum()) > 0


@pytest.mark.parametrize(("n_layers", "tied"), [(1, True), (3, True), (3, False)])
def test_lista_flops_match_counter(n_layers: int, tied: bool) -> None:
    dictionary, x = _problem(n_latents=20, dim=10, batch=5)
    lista = si.create("lista", dim=10, n_latents=20, n_layers=n_layers, tied=tied).double()
    lista.init_from_dictionary(dictionary, 0.05)
    with torch.no_grad():
        counted = _counted(lambda: lista(x, dictionary))
    assert counted == optimisation.lista_inference(5, 10, 20, n_layers, tied, False).matmul

    def step() -> None:
        codes = lista(x, dictionary)
        (codes**2).sum().backward()

    counted = _counted(step)
    assert counted == optimisation.lista_training(5, 10, 20, n_layers, tied, False).matmul
    assert lista.training_flops(5, 10, 20) == optimisation.lista_training(5, 10, 20, n_layers, tied, False).total
    assert all(p.grad is not None for p in lista.parameters() if p.numel())


def test_lista_trains_below_ista_init() -> None:
    dictionary, x = _problem(n_latents=16, dim=8, batch=64, sparse_k=2)
    lista = LISTAEncoder(8, 16, n_layers=2, nonneg=True).double().init_from_dictionary(dictionary, 0.01)
    opt = torch.optim.Adam(lista.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return ((x - dictionary.decode(lista(x, dictionary))) ** 2).mean()

    start = float(loss().detach())
    for _ in range(100):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.5 * start


def test_lista_errors() -> None:
    with pytest.raises(si.SparseInferError, match="n_layers"):
        si.create("lista", dim=8, n_latents=16, n_layers=0)
    lista = si.create("lista", dim=8, n_latents=16).double()
    dictionary, x = _problem(n_latents=12)
    with pytest.raises(si.SparseInferError, match="built for"):
        lista(x, dictionary)
    with pytest.raises(si.SparseInferError, match="penalty"):
        lista.init_from_dictionary(_problem()[0], penalty=0.0)
    dictionary, x = _problem()
    x[0, 0] = float("nan")
    with pytest.raises(si.SparseInferError, match="NaN"):
        lista(x, dictionary)
