"""The exact active-set Lasso (`fista` with `active_set=True`) against scikit-learn, and its FLOPs against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import sparse_encode
from sklearn.linear_model import Lasso
from torch.utils.flop_counter import FlopCounterMode

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders import _active_set, create
from sparseinfer.encoders._active_set import ActiveSetLasso
from sparseinfer.encoders._proximal import lasso_objective
from sparseinfer.errors import SparseInferError


@pytest.fixture(autouse=True)
def batched_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most tests here check the batched active-set method itself: the compiled homotopy is off unless a test
    turns it on (`compiled`)."""
    monkeypatch.setattr(_active_set, "COMPILED", False)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_active_set, "COMPILED", True)


def _problem(n_latents: int, dim: int, batch: int, seed: int, k: int | None = None) -> tuple[Dictionary, torch.Tensor]:
    """Random unit-norm atoms; Gaussian signals, or k-sparse codes times D plus noise when `k` is given."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = Dictionary.random(n_latents, dim, seed=seed + 1, dtype=torch.float64)
    if k is None:
        return dictionary, torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    codes = torch.zeros(batch, n_latents, dtype=torch.float64)
    support = torch.rand(batch, n_latents, generator=gen).argsort(1)[:, :k]
    codes.scatter_(1, support, torch.randn(batch, k, generator=gen, dtype=torch.float64))
    x = codes @ dictionary.atoms.detach() + 0.01 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return dictionary, x


def _sklearn_lasso(x: torch.Tensor, atoms: torch.Tensor, penalty: float, nonneg: bool) -> torch.Tensor:
    """Per-sample Lasso with X = D^T: sklearn's 1/(2 n) scaling means alpha = penalty / dim."""
    model = Lasso(alpha=penalty / atoms.shape[1], fit_intercept=False, tol=1e-14, max_iter=1_000_000, positive=nonneg)
    return torch.tensor(np.stack([model.fit(atoms.T.numpy(), row).coef_.copy() for row in x.numpy()]))


def _gap(x: torch.Tensor, atoms: torch.Tensor, codes: torch.Tensor, reference: torch.Tensor, penalty: float) -> float:
    """Worst per-sample relative objective gap of `codes` over `reference` (negative: ours is lower)."""
    ours, best = lasso_objective(x, atoms, codes, penalty), lasso_objective(x, atoms, reference, penalty)
    return float(((ours - best) / best).max())


def _encoder(penalty: float, **extra: object):  # type: ignore[no-untyped-def]
    return create("fista", penalty=penalty, active_set=True, tol=1e-12, **extra)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize(("shape", "penalty"), [((32, 16), 0.1), ((64, 24), 0.3), ((40, 20), 1.0), ((24, 30), 0.05)])
def test_matches_sklearn_lasso(shape: tuple[int, int], penalty: float, nonneg: bool) -> None:
    n_latents, dim = shape  # includes N < M (24 atoms in 30 dimensions)
    dictionary, x = _problem(n_latents, dim, batch=24, seed=n_latents)
    atoms = dictionary.atoms.detach()
    reference = _sklearn_lasso(x, atoms, penalty, nonneg)
    encoder = _encoder(penalty, nonneg=nonneg, working_set=4)
    codes = encoder(x, dictionary)
    assert encoder.diagnostics.converged, encoder.diagnostics
    assert _gap(x, atoms, codes, reference, penalty) < 1e-9  # measured <= 1e-15
    assert torch.allclose(codes, reference, atol=1e-7)
    if nonneg:
        assert (codes >= 0).all()


@pytest.mark.parametrize("nonneg", [False, True])
def test_matches_sparse_encode_lasso_lars_on_sparse_signals(nonneg: bool) -> None:
    dictionary, x = _problem(96, 32, batch=40, seed=3, k=5)
    atoms = dictionary.atoms.detach()
    reference = torch.tensor(
        sparse_encode(x.numpy(), atoms.numpy(), algorithm="lasso_lars", alpha=0.05, positive=nonneg, max_iter=10_000)
    )
    codes = _encoder(0.05, nonneg=nonneg)(x, dictionary)
    assert _gap(x, atoms, codes, reference, 0.05) < 1e-6
    assert torch.allclose(codes, reference, atol=1e-6)


def test_support_larger_than_working_set_grows_it() -> None:
    """Supports of up to dim atoms from a working set of 2: W doubles, and the result is still the optimum."""
    dictionary, x = _problem(48, 20, batch=16, seed=5)
    atoms = dictionary.atoms.detach()
    encoder = _encoder(0.02, working_set=2)
    codes = encoder(x, dictionary)
    sizes = [size for _, size in encoder._trace.solves]
    assert sizes[0] == 2 and max(sizes) >= 16
    assert int((codes != 0).sum(1).max()) > 8
    assert _gap(x, atoms, codes, _sklearn_lasso(x, atoms, 0.02, False), 0.02) < 1e-9


def test_support_as_large_as_dim_takes_null_steps() -> None:
    """A tiny penalty gives supports of dim atoms; an extra atom then lies in their span (singular Gram)."""
    dictionary, x = _problem(32, 12, batch=12, seed=6)
    atoms = dictionary.atoms.detach()
    encoder = _encoder(1e-3, working_set=4)
    codes = encoder(x, dictionary)
    assert encoder.diagnostics.converged and encoder._trace.null_steps
    assert int((codes != 0).sum(1).max()) == 12
    assert _gap(x, atoms, codes, _sklearn_lasso(x, atoms, 1e-3, False), 1e-3) < 1e-9


def test_zero_solution_and_mixed_batch() -> None:
    dictionary, x = _problem(20, 10, batch=6, seed=7)
    atoms = dictionary.atoms.detach()
    big = float((x @ atoms.T).abs().max()) * 1.01
    encoder = _encoder(big)
    assert torch.equal(encoder(x, dictionary), torch.zeros(6, 20, dtype=torch.float64))
    assert encoder.diagnostics.converged
    mixed = torch.cat([x * 1e-3, x])  # the first half is below the penalty's zero threshold, the second not
    penalty = big * 1e-2
    codes = _encoder(penalty)(mixed, dictionary)
    assert (codes[:6] == 0).all() and (codes[6:] != 0).any(1).all()
    assert _gap(mixed[6:], atoms, codes[6:], _sklearn_lasso(mixed[6:], atoms, penalty, False), penalty) < 1e-9
    assert _encoder(penalty)(x[:0], dictionary).shape == (0, 20)


def test_without_full_gram_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Big dictionaries compute each working set's Gram block from its atoms instead of gathering from D D^T."""
    dictionary, x = _problem(40, 16, batch=10, seed=8)
    expected = _encoder(0.1, working_set=3)(x, dictionary)
    monkeypatch.setattr(ActiveSetLasso, "GRAM_ENTRIES", 0)
    encoder = _encoder(0.1, working_set=3)
    codes = encoder(x, dictionary)
    assert not encoder._trace.full_gram and encoder._trace.gram_blocks
    assert torch.allclose(codes, expected, atol=1e-12)


def test_warm_start_and_float32() -> None:
    dictionary, x = _problem(64, 32, batch=50, seed=9, k=4)
    atoms = dictionary.atoms.detach()
    exact = _encoder(0.1)(x, dictionary)
    warm = _encoder(0.1)
    assert torch.allclose(warm(x, dictionary, init=exact), exact, atol=1e-12)
    assert warm._trace.kkt_checks[0][0] == 50 and len(warm._trace.solves) == 1  # starts on the optimal support
    low = create("fista", penalty=0.1, active_set=True, tol=1e-5)(x.float(), Dictionary(atoms.float()))
    assert low.dtype == torch.float32
    assert _gap(x, atoms, low.double(), exact, 0.1) < 1e-5


@pytest.mark.parametrize("nonneg", [False, True])
def test_warm_start_larger_than_the_working_set(nonneg: bool) -> None:
    """A warm support wider than `working_set` whose largest code is no violator alone (found on row 18 here: the
    solver retried that atom forever and returned codes 2.8 off the optimum, objective +5.4)."""
    dictionary = Dictionary.random(40, 12, seed=5, dtype=torch.float64)
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    encoder = _encoder(0.1, nonneg=nonneg, working_set=4)
    exact = encoder(x, dictionary)
    assert int((exact != 0).sum(1).max()) > 4
    warm = encoder(x, dictionary, init=exact)
    assert encoder.diagnostics is not None and encoder.diagnostics.converged
    assert torch.allclose(warm, exact, atol=1e-10)


def test_debias_refits_the_exact_support() -> None:
    dictionary, x = _problem(30, 15, batch=8, seed=10, k=3)
    codes = _encoder(0.05, debias=True)(x, dictionary)
    support = _encoder(0.05)(x, dictionary) != 0
    assert torch.equal(codes != 0, support)
    atoms = dictionary.atoms.detach().numpy()
    for row in range(8):
        chosen = support[row].nonzero().flatten().numpy()
        expected = np.linalg.lstsq(atoms[chosen].T, x[row].numpy(), rcond=None)[0]
        np.testing.assert_allclose(codes[row, chosen].numpy(), expected, atol=1e-10)


@pytest.mark.parametrize(
    ("shape", "penalty", "extra", "no_gram"),
    [
        ((32, 16), 0.1, {}, False),
        ((48, 20), 0.02, {"working_set": 2, "nonneg": True}, False),
        ((32, 12), 1e-3, {"working_set": 4}, False),  # null steps
        ((40, 16), 0.1, {"working_set": 3}, True),  # Gram blocks by products
        ((30, 15), 0.05, {"debias": True}, False),
    ],
)
def test_matmul_flops_equal_flop_counter(
    shape: tuple[int, int], penalty: float, extra: dict, no_gram: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if no_gram:
        monkeypatch.setattr(ActiveSetLasso, "GRAM_ENTRIES", 0)
    n_latents, dim = shape
    dictionary, x = _problem(n_latents, dim, batch=11, seed=12)
    encoder = _encoder(penalty, **extra)
    before = encoder.flops(11, dim, n_latents)
    assert before.matmul > 0 and before.elementwise > 0
    with FlopCounterMode(display=False) as counter:
        encoder(x, dictionary)
    after = encoder.flops(11, dim, n_latents)
    assert after.matmul == counter.get_total_flops()
    assert encoder.inference_flops(11, dim, n_latents) == after.total > after.matmul


def test_bad_input() -> None:
    dictionary, x = _problem(16, 8, batch=4, seed=13)
    for hparams, message in [({"working_set": 0}, "working_set"), ({"working_set": 2.5}, "working_set")]:
        with pytest.raises(SparseInferError, match=message):
            create("fista", active_set=True, **hparams)
    with pytest.raises(SparseInferError, match="penalty"):
        create("fista", active_set=True, penalty=0.0)
    encoder = _encoder(0.1)
    nan_x = x.clone()
    nan_x[0, 3] = float("inf")
    with pytest.raises(SparseInferError, match="NaN"):
        encoder(nan_x, dictionary)
    with pytest.raises(SparseInferError, match="columns"):
        encoder(x[:, :7], dictionary)
    with pytest.raises(SparseInferError, match="dtype"):
        encoder(x.float(), dictionary)
    with pytest.raises(SparseInferError, match="warm-start"):
        encoder(x, dictionary, init=torch.zeros(4, 15, dtype=torch.float64))
    with pytest.raises(SparseInferError, match="NaN"):
        encoder(x, dictionary, init=torch.full((4, 16), float("nan"), dtype=torch.float64))


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize(
    ("shape", "penalty", "k"),
    [((32, 16), 0.1, None), ((64, 24), 0.3, None), ((24, 30), 0.05, None), ((96, 32), 0.05, 4), ((48, 20), 2e-3, None)],
)
def test_compiled_homotopy_matches_sklearn_and_batched(
    shape: tuple[int, int], penalty: float, k: int | None, nonneg: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled LARS kernel (with the batched fallback for what it cannot finish) reaches sklearn's optimum
    and the batched path's codes; the last shape's supports fill the dimension, so rows fall back."""
    n_latents, dim = shape
    dictionary, x = _problem(n_latents, dim, batch=40, seed=n_latents + dim, k=k)
    atoms = dictionary.atoms.detach()
    encoder = _encoder(penalty, nonneg=nonneg)
    codes = encoder(x, dictionary)
    assert encoder._trace.path_segments > 0 and encoder.diagnostics.converged
    reference = _sklearn_lasso(x, atoms, penalty, nonneg)
    assert _gap(x, atoms, codes, reference, penalty) < 1e-10
    monkeypatch.setattr(_active_set, "COMPILED", False)
    batched = _encoder(penalty, nonneg=nonneg)(x, dictionary)
    torch.testing.assert_close(codes, batched, atol=1e-8, rtol=0)
    single = _encoder(penalty, nonneg=nonneg)(x.float(), Dictionary(atoms.float()))
    assert _gap(x, atoms, single.double(), reference, penalty) < 1e-5


@pytest.mark.usefixtures("compiled")
def test_compiled_fallback_rows_and_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows the kernel gives up on (here: more segments than allowed) are finished by the batched method; the
    products FlopCounterMode sees are the set-up's plus the fallback's, as counted."""
    dictionary, x = _problem(40, 16, batch=30, seed=21)
    encoder = _encoder(0.05)
    with FlopCounterMode(display=False) as counter:
        codes = encoder(x, dictionary)
    assert encoder._trace.solves == [] and encoder.flops(30, 16, 40).matmul == counter.get_total_flops()
    reference = _sklearn_lasso(x, dictionary.atoms.detach(), 0.05, False)
    monkeypatch.setattr(ActiveSetLasso, "solve_segments", 2)
    limited = _encoder(0.05)
    with FlopCounterMode(display=False) as counter:
        again = limited(x, dictionary)
    assert limited._trace.solves and limited.diagnostics.converged  # the batched method ran on the given-up rows
    assert limited.flops(30, 16, 40).matmul == counter.get_total_flops()
    for result in (codes, again):
        assert _gap(x, dictionary.atoms.detach(), result, reference, 0.05) < 1e-10
