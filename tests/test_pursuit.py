"""omp and matching_pursuit: against scikit-learn's orthogonal_mp, scipy's nnls and slow numpy loops; FLOPs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from sklearn.linear_model import orthogonal_mp
from torch.utils.flop_counter import FlopCounterMode

import sparseinfer as si
from sparseinfer.encoders import omp as omp_module
from sparseinfer.flops import pursuit


def _problem(n_latents: int, dim: int, batch: int, seed: int, sparse_k: int | None = None):
    dictionary = si.Dictionary.random(n_latents, dim, seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    if sparse_k is None:
        x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
        return dictionary, x, None
    codes = torch.zeros(batch, n_latents, dtype=torch.float64)
    for b in range(batch):
        idx = torch.randperm(n_latents, generator=gen)[:sparse_k]
        codes[b, idx] = torch.randn(sparse_k, generator=gen, dtype=torch.float64).abs() + 0.5
    return dictionary, codes @ dictionary.atoms.detach(), codes


def _sklearn_omp(dictionary: si.Dictionary, x: torch.Tensor, k: int | None, tol: float | None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        coef = orthogonal_mp(dictionary.atoms.detach().numpy().T, x.numpy().T, n_nonzero_coefs=k, tol=tol)
    return coef.T


@pytest.mark.parametrize(("n_latents", "dim", "k"), [(40, 16, 1), (40, 16, 5), (40, 16, 16), (12, 20, 12)])
def test_omp_matches_sklearn(n_latents: int, dim: int, k: int) -> None:
    dictionary, x, _ = _problem(n_latents, dim, 64, seed=k)
    codes = si.create("omp", k=k)(x, dictionary).numpy()
    ref = _sklearn_omp(dictionary, x, k, None)
    assert np.array_equal(codes != 0, ref != 0)
    np.testing.assert_allclose(codes, ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("tol", [0.5, 0.05, 1e-10])
def test_omp_with_tol_matches_sklearn(tol: float) -> None:
    dictionary, x, _ = _problem(30, 12, 64, seed=3)
    encoder = si.create("omp", k=30, tol=tol)
    codes = encoder(x, dictionary).numpy()
    ref = _sklearn_omp(dictionary, x, None, tol)
    assert np.array_equal(codes != 0, ref != 0)
    np.testing.assert_allclose(codes, ref, atol=1e-8, rtol=0)
    residual = x.numpy() - codes @ dictionary.atoms.detach().numpy()
    assert (residual**2).sum(1).max() <= tol
    assert encoder.diagnostics is not None and encoder.diagnostics.converged
    assert encoder.diagnostics.iterations == (ref != 0).sum(1).max()


def test_omp_recovers_sparse_codes_exactly() -> None:
    dictionary, x, truth = _problem(64, 32, 50, seed=5, sparse_k=3)
    codes = si.create("omp", k=3)(x, dictionary)
    assert torch.allclose(codes, truth, atol=1e-10)


def _nnls_omp_reference(atoms: np.ndarray, x: np.ndarray, k: int, tol: float) -> np.ndarray:
    out = np.zeros(atoms.shape[0])
    residual, support, coef = x.copy(), [], np.zeros(0)
    for _ in range(k):
        if residual @ residual <= tol:
            break
        corr = atoms @ residual
        corr[support] = -np.inf
        j = int(np.argmax(corr))
        if corr[j] <= 0:
            break
        support.append(j)
        coef, _ = nnls(atoms[support].T, x)
        residual = x - coef @ atoms[support]
    out[support] = coef
    return out


@pytest.mark.parametrize(("k", "tol"), [(4, 0.0), (10, 0.0), (12, 0.2)])
def test_omp_nonneg_matches_nnls_reference(k: int, tol: float) -> None:
    dictionary, x, _ = _problem(32, 12, 60, seed=11)
    encoder = si.create("omp", k=k, tol=tol, nonneg=True)
    codes = encoder(x, dictionary).numpy()
    atoms = dictionary.atoms.detach().numpy()
    ref = np.stack([_nnls_omp_reference(atoms, row, k, tol) for row in x.numpy()])
    assert (codes >= 0).all()
    np.testing.assert_allclose(codes, ref, atol=1e-8, rtol=0)
    # Each sample's coefficients are scipy's NNLS on its support.
    for row, sample in zip(codes, x.numpy(), strict=True):
        support = np.flatnonzero(row)
        if support.size:
            coef, _ = nnls(atoms[support].T, sample)
            np.testing.assert_allclose(row[support], coef, atol=1e-8)


def test_omp_warm_start_takes_init_support_first() -> None:
    dictionary, x, truth = _problem(40, 16, 20, seed=2, sparse_k=3)
    noisy = truth * 0.5  # right support, wrong values
    codes = si.create("omp", k=3)(x, dictionary, init=noisy)
    assert torch.allclose(codes, truth, atol=1e-10)
    # A wrong warm support of one atom: kept, then the greedy steps add atoms until k.
    _, dense_x, _ = _problem(40, 16, 20, seed=3)
    wrong = torch.zeros_like(truth)
    wrong[:, 0] = 1.0
    codes = si.create("omp", k=4)(dense_x, dictionary, init=wrong)
    assert bool((codes[:, 0] != 0).all()) and bool(((codes != 0).sum(1) == 4).all())
    # ... and the result is the least-squares fit on that support.
    for row, sample in zip(codes.numpy(), dense_x.numpy(), strict=True):
        support = np.flatnonzero(row)
        coef = np.linalg.lstsq(dictionary.atoms.detach().numpy()[support].T, sample, rcond=None)[0]
        np.testing.assert_allclose(row[support], coef, atol=1e-10)


def _mp_reference(atoms: np.ndarray, x: np.ndarray, steps: int, k: int | None, tol: float, nonneg: bool, init=None):
    codes = np.zeros(atoms.shape[0]) if init is None else init.copy()
    residual = x - codes @ atoms
    norms = np.linalg.norm(atoms, axis=1)
    for _ in range(steps):
        if residual @ residual <= tol:
            break
        corr = atoms @ residual
        score = corr / norms if nonneg else np.abs(corr) / norms
        j = int(np.argmax(score))
        if score[j] <= 0:
            break
        if k is not None and codes[j] == 0 and (codes != 0).sum() >= k:
            break
        coef = corr[j] / norms[j] ** 2
        codes[j] += coef
        residual = residual - coef * atoms[j]
    return codes


@pytest.mark.parametrize(
    ("steps", "k", "tol", "nonneg"), [(10, None, 0.0, False), (50, 5, 0.0, False), (40, None, 0.05, True)]
)
def test_matching_pursuit_matches_numpy_loop(steps: int, k: int | None, tol: float, nonneg: bool) -> None:
    dictionary, x, _ = _problem(24, 10, 40, seed=7)
    codes = si.create("matching_pursuit", max_iter=steps, k=k, tol=tol, nonneg=nonneg)(x, dictionary).numpy()
    atoms = dictionary.atoms.detach().numpy()
    ref = np.stack([_mp_reference(atoms, row, steps, k, tol, nonneg) for row in x.numpy()])
    np.testing.assert_allclose(codes, ref, atol=1e-10, rtol=0)
    if k is not None:
        assert ((codes != 0).sum(1) <= k).all()
    if nonneg:
        assert (codes >= 0).all()


def test_matching_pursuit_warm_start_matches_numpy_loop() -> None:
    dictionary, x, truth = _problem(24, 10, 30, seed=8, sparse_k=2)
    init = truth * 0.7
    codes = si.create("matching_pursuit", max_iter=15)(x, dictionary, init=init).numpy()
    atoms = dictionary.atoms.detach().numpy()
    ref = np.stack(
        [_mp_reference(atoms, r, 15, None, 0.0, False, i) for r, i in zip(x.numpy(), init.numpy(), strict=True)]
    )
    np.testing.assert_allclose(codes, ref, atol=1e-10, rtol=0)


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture
def batched_omp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run omp's batched torch path (the compiled kernel off), whose every product FlopCounterMode sees."""
    monkeypatch.setattr(omp_module, "COMPILED", False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("n_latents", "dim", "k", "tol"), [(40, 16, 6, 0.0), (30, 12, 30, 1e-10), (30, 12, 30, 0.05),
                                                          (200, 64, 10, 0.0), (64, 32, 12, 1e-3)])  # fmt: skip
def test_compiled_omp_equals_batched_path(
    monkeypatch: pytest.MonkeyPatch, n_latents: int, dim: int, k: int, tol: float, dtype: torch.dtype
) -> None:
    """The compiled Batch-OMP kernel against the batched torch path (itself checked against sklearn above)."""
    assert omp_module.COMPILED
    gen = torch.Generator().manual_seed(n_latents + k)
    atoms = torch.randn(n_latents, dim, generator=gen, dtype=dtype)
    atoms /= atoms.norm(dim=1, keepdim=True)
    x = torch.randn(70, dim, generator=gen, dtype=dtype)
    compiled = si.create("omp", k=k, tol=tol)
    fast = compiled.solve(x, atoms, None)
    assert compiled._compiled_work is not None  # the kernel ran
    monkeypatch.setattr(omp_module, "COMPILED", False)
    batched = si.create("omp", k=k, tol=tol)
    slow = batched.solve(x, atoms, None)
    atol = 1e-10 if dtype == torch.float64 else 1e-3
    assert torch.equal(fast != 0, slow != 0)
    torch.testing.assert_close(fast, slow, atol=atol, rtol=0)
    assert str(compiled.diagnostics) == str(batched.diagnostics)


def test_set_up_products_split_over_threads_equal_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_compiled.products` in blocks on a thread pool (forced on a small problem) equals the plain products, also
    for a last block shorter than the others; a FLOP counter still sees both products (they then run unsplit)."""
    from sparseinfer.encoders import _compiled

    monkeypatch.setattr(_compiled, "SMALL_OP_FLOPS", 0)
    monkeypatch.setattr(_compiled, "ROWS", 7)
    gen = torch.Generator().manual_seed(0)
    atoms, x = torch.randn(30, 12, generator=gen), torch.randn(45, 12, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gram, b = _compiled.products(x, atoms)
        assert torch.get_num_threads() == 2
        torch.testing.assert_close(gram, atoms @ atoms.T, rtol=0, atol=1e-5)
        torch.testing.assert_close(b, x @ atoms.T, rtol=0, atol=1e-5)
        assert _counted(lambda: _compiled.products(x, atoms)) == 2 * 45 * 12 * 30 + 2 * 30 * 12 * 30
    finally:
        torch.set_num_threads(threads)


def test_others_running_sees_a_busy_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load probe counts a spinning process (real, Linux); its answer is reused for `PROBE_SECONDS`."""
    import subprocess
    import sys
    import time

    from sparseinfer.encoders import _compiled

    if _compiled._probe_running() is None:
        pytest.skip("no /proc/loadavg here")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        seen = [_compiled._probe_running() for _ in range(50)]
    finally:
        busy.kill()
        busy.wait()
    assert max(seen) >= 1 and min(seen) >= 0
    monkeypatch.setattr(_compiled, "_probe", [time.monotonic(), 7])  # restored after the test
    assert _compiled.others_running() == 7  # a fresh answer is reused
    monkeypatch.setattr(_compiled, "_probe", [time.monotonic() - _compiled.PROBE_SECONDS, 7])
    assert _compiled.others_running() != 7  # an old one is probed again


def test_small_kernels_take_one_thread_beside_a_busy_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kernel_threads`: small work runs on every free core, on one when another process holds a core; large work
    keeps its threads under load (there dynamic blocks win); tiny work always runs on one thread."""
    import os

    import numba

    from sparseinfer.encoders import _compiled

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    small, large = _compiled.BUSY_PROBE_FLOPS // 2, _compiled.BUSY_PROBE_FLOPS * 2
    monkeypatch.setattr(_compiled, "others_running", lambda: 0)
    assert _compiled.kernel_threads(small, 2) == 2
    assert _compiled.kernel_threads(_compiled.PARALLEL_FLOPS // 2, 2) == 1
    monkeypatch.setattr(_compiled, "others_running", lambda: 1)
    assert _compiled.kernel_threads(small, 2) == 1
    assert _compiled.kernel_threads(large, 2) == 2
    assert _compiled.kernel_threads(small, 1) == 1
    monkeypatch.setattr(_compiled, "others_running", lambda: None)  # no probe: the caller's count
    assert _compiled.kernel_threads(small, 2) == 2


def test_compiled_omp_flops_count_its_products() -> None:
    dictionary, x, _ = _problem(40, 16, 32, seed=4)
    encoder = si.create("omp", k=6)
    counted = _counted(lambda: encoder(x, dictionary))
    expected = pursuit.batch_omp(32, 16, 40, 6, encoder._compiled_work)
    assert counted == expected.matmul == 2 * 32 * 16 * 40 + 2 * 40 * 16 * 40  # b = x D^T and G = D D^T
    assert encoder.inference_flops(32, 16, 40) == expected.total > expected.matmul


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.usefixtures("batched_omp")
def test_omp_flops_match_counter(nonneg: bool) -> None:
    dictionary, x, _ = _problem(40, 16, 32, seed=4)
    encoder = si.create("omp", k=6, nonneg=nonneg)
    counted = _counted(lambda: encoder(x, dictionary))
    assert encoder.diagnostics is not None and encoder.diagnostics.iterations == 6
    assert str(encoder.diagnostics) == "6 iterations, no convergence test"  # tol = 0: k steps, no test
    assert counted == pursuit.omp(32, 16, 40, 6, nonneg).matmul
    assert encoder.inference_flops(32, 16, 40) >= counted


@pytest.mark.parametrize("warm", [False, True])
def test_matching_pursuit_flops_match_counter(warm: bool) -> None:
    dictionary, x, truth = _problem(40, 16, 32, seed=4, sparse_k=3)
    encoder = si.create("matching_pursuit", max_iter=9)
    init = truth * 0.5 if warm else None
    counted = _counted(lambda: encoder(x, dictionary, init=init))
    assert encoder.diagnostics is not None and encoder.diagnostics.iterations == 9
    assert counted == pursuit.matching_pursuit(32, 16, 40, 9, warm).matmul
    assert encoder.inference_flops(32, 16, 40) == pursuit.matching_pursuit(32, 16, 40, 9, warm).total


@pytest.mark.usefixtures("batched_omp")
def test_early_stop_counts_only_steps_run() -> None:
    dictionary, x, _ = _problem(64, 32, 16, seed=6, sparse_k=2)
    encoder = si.create("omp", k=10, tol=1e-12)
    counted = _counted(lambda: encoder(x, dictionary))
    assert encoder.diagnostics is not None and encoder.diagnostics.iterations == 2
    assert counted == pursuit.omp(16, 32, 64, 2).matmul


@pytest.mark.parametrize("name", ["omp", "matching_pursuit"])
def test_errors(name: str) -> None:
    dictionary, x, _ = _problem(8, 4, 3, seed=0)
    with pytest.raises(si.SparseInferError, match="exceeds the number of latents"):
        si.create(name, k=9)(x, dictionary)
    with pytest.raises(si.SparseInferError, match="positive integer"):
        si.create(name, k=0)
    with pytest.raises(si.SparseInferError, match="tol"):
        si.create(name, tol=-1.0)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(si.SparseInferError, match="NaN"):
        si.create(name, k=2)(bad, dictionary)
    if name == "matching_pursuit":
        with pytest.raises(si.SparseInferError, match="max_iter"):
            si.create(name, max_iter=0)


@pytest.mark.parametrize(("n_latents", "dim", "k"), [(64, 32, 4), (512, 128, 12)])
def test_compiled_omp_float32_matches_float64_reference(
    monkeypatch: pytest.MonkeyPatch, n_latents: int, dim: int, k: int
) -> None:
    """The float32 kernel (float32 scores and orthogonal rows, float64 Cholesky) against the batched float64 path:
    the same supports and codes to 1e-5 on K-sparse signals with noise."""
    gen = torch.Generator().manual_seed(n_latents)
    atoms = torch.randn(n_latents, dim, generator=gen, dtype=torch.float64)
    atoms /= atoms.norm(dim=1, keepdim=True)
    support = torch.rand(300, n_latents, generator=gen).argsort(1)[:, :k]
    values = (torch.rand(300, k, generator=gen, dtype=torch.float64) + 0.5) * torch.randn(300, k, generator=gen).sign()
    codes = torch.zeros(300, n_latents, dtype=torch.float64).scatter_(1, support, values)
    x = codes @ atoms + 0.01 * torch.randn(300, dim, generator=gen, dtype=torch.float64)
    fast = si.create("omp", k=k)
    got = fast.solve(x.float(), atoms.float(), None).double()
    assert fast._compiled_work is not None  # the kernel ran
    monkeypatch.setattr(omp_module, "COMPILED", False)
    ref = si.create("omp", k=k).solve(x, atoms, None)
    assert torch.equal(got != 0, ref != 0)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_argmax_abs_first_largest_magnitude(dtype: type) -> None:
    """The kernel's pick: the first index of the largest |score| (ties, signs, zeros, lengths around 128)."""
    from sparseinfer.encoders import _compiled

    rng = np.random.default_rng(0)
    mask = _compiled.abs_mask(np.dtype(dtype))
    for n in (1, 5, 127, 128, 129, 300, 1024):
        for trial in range(20):
            scores = rng.standard_normal(n).astype(dtype)
            if trial % 2:
                scores[rng.integers(n)] = -scores[np.argmax(np.abs(scores))]  # a tie of opposite sign
            index, bits = _compiled._argmax_abs(scores, mask)
            assert index == int(np.argmax(np.abs(scores)))
            assert np.array([bits], dtype=mask.dtype).view(dtype)[0] == np.abs(scores).max()
    assert _compiled._argmax_abs(np.zeros(200, dtype=dtype), mask)[1] == 0  # all zero: nothing to pick
