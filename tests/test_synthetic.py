"""The synthetic generator: protocol invariants, reproducibility, and distributions against exact references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sparseinfer import SparseInferError
from sparseinfer.data import SyntheticConfig, latent_weights, make_synthetic


def all_codes(data) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.cat([data.train_codes, data.test_codes])


@pytest.mark.parametrize(
    "overrides",
    [{}, {"frequency": "zipf"}, {"support_correlation": 0.7}, {"n_latents": 5, "k": 5}, {"dtype": "float64"}],
)
def test_protocol_invariants(overrides: dict) -> None:
    data = make_synthetic(**overrides)
    cfg = data.config
    n, dim, k = cfg.n_latents, cfg.dim, cfg.k
    assert data.train_codes.shape == (1024, n) and data.test_codes.shape == (1024, n)
    assert data.train_x.shape == (1024, dim) and data.test_x.shape == (1024, dim)
    assert data.train_x.dtype == cfg.torch_dtype and data.dictionary.atoms.dtype == cfg.torch_dtype
    codes = all_codes(data)
    assert ((codes != 0).sum(dim=1) == k).all()  # exactly K active (half-normal values are never exactly 0)
    assert (codes >= 0).all()
    atoms = data.dictionary.atoms
    torch.testing.assert_close(atoms.norm(dim=1), torch.ones(n, dtype=atoms.dtype))
    assert data.dictionary.bias is None and not atoms.requires_grad
    tol = 1e-5 if cfg.dtype == "float32" else 1e-12
    torch.testing.assert_close(data.train_x, data.train_codes @ atoms, atol=tol, rtol=tol)
    torch.testing.assert_close(data.test_x, data.test_codes @ atoms, atol=tol, rtol=tol)


def test_defaults_are_the_protocol() -> None:
    cfg = SyntheticConfig()
    assert (cfg.n_latents, cfg.dim, cfg.k, cfg.n_train, cfg.n_test) == (16, 8, 3, 1024, 1024)
    assert (cfg.frequency, cfg.values, cfg.signed, cfg.noise_std) == ("uniform", "half_normal", False, 0.0)


def test_reproducible_by_seed_and_seeds_differ() -> None:
    a, b, c = make_synthetic(seed=3), make_synthetic(SyntheticConfig(seed=3)), make_synthetic(seed=4)
    for name in ("train_codes", "test_codes", "train_x", "test_x"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))
    assert torch.equal(a.dictionary.atoms, b.dictionary.atoms)
    assert not torch.equal(a.dictionary.atoms, c.dictionary.atoms)


def test_one_draw_split_into_train_then_test() -> None:
    a = make_synthetic(seed=1)
    b = make_synthetic(seed=1, n_train=2047, n_test=1)
    torch.testing.assert_close(all_codes(a), all_codes(b), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([a.train_x, a.test_x]), torch.cat([b.train_x, b.test_x]), rtol=0, atol=0)


def test_float32_and_float64_are_the_same_draw() -> None:
    a, b = make_synthetic(seed=2), make_synthetic(seed=2, dtype="float64")
    torch.testing.assert_close(a.train_codes, b.train_codes.float())
    torch.testing.assert_close(a.dictionary.atoms, b.dictionary.atoms.float())


def test_uniform_latent_frequencies_are_equal() -> None:
    data = make_synthetic(n_train=10000, seed=5)
    counts = (all_codes(data) != 0).sum(dim=0).double()
    expected = counts.sum() / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40  # 15 degrees of freedom: P(chi2 > 40) ~ 5e-4


def test_uniform_supports_are_uniform_subsets() -> None:
    data = make_synthetic(n_latents=5, k=2, dim=3, n_train=20000, seed=6)
    active = (all_codes(data) != 0).numpy()
    subsets = list(itertools.combinations(range(5), 2))
    counts = np.array([np.sum(active[:, i] & active[:, j]) for i, j in subsets])
    assert counts.sum() == active.shape[0]
    expected = active.shape[0] / len(subsets)
    assert ((counts - expected) ** 2 / expected).sum() < 30  # 9 degrees of freedom: P ~ 4e-4


def exact_inclusion(w: np.ndarray, k: int) -> np.ndarray:
    """P(latent i among K drawn one by one without replacement, each with probability ∝ w among the rest)."""
    incl = np.zeros(len(w))
    for seq in itertools.permutations(range(len(w)), k):
        prob, left = 1.0, 1.0
        for i in seq:
            prob *= w[i] / left
            left -= w[i]
        incl[list(seq)] += prob
    return incl


def test_zipf_frequencies_follow_weighted_sampling_without_replacement() -> None:
    data = make_synthetic(n_latents=7, dim=4, k=3, frequency="zipf", n_train=30000, seed=7)
    w = latent_weights(data.config).numpy()
    np.testing.assert_allclose(w, (1 / np.arange(1, 8)) / (1 / np.arange(1, 8)).sum())
    freq = (all_codes(data) != 0).double().mean(dim=0).numpy()
    expected = exact_inclusion(w, 3)
    assert expected.sum() == pytest.approx(3)
    n = all_codes(data).shape[0]
    assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected * (1 - expected) / n))
    assert np.all(np.diff(freq) < 0)


def test_zipf_exponent_sharpens() -> None:
    flat = latent_weights(SyntheticConfig(frequency="zipf", zipf_exponent=0.0))
    steep = latent_weights(SyntheticConfig(frequency="zipf", zipf_exponent=2.0))
    torch.testing.assert_close(flat, torch.full((16,), 1 / 16, dtype=torch.float64))
    assert steep[0] / steep[1] == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("values", "mean", "std"),
    [
        ("half_normal", math.sqrt(2 / math.pi), math.sqrt(1 - 2 / math.pi)),
        ("exponential", 1.0, 1.0),
        ("uniform", 0.5, math.sqrt(1 / 12)),
        ("constant", 1.0, 0.0),
    ],
)
def test_value_distributions(values: str, mean: float, std: float) -> None:
    codes = all_codes(make_synthetic(values=values, n_train=20000, seed=8, dtype="float64"))
    active = codes[codes != 0]
    assert active.numel() == 3 * codes.shape[0]
    assert float(active.mean()) == pytest.approx(mean, abs=5 * std / math.sqrt(active.numel()) + 1e-12)
    assert float(active.std()) == pytest.approx(std, abs=0.02)


def test_signed_codes_are_the_unsigned_ones_with_random_signs() -> None:
    plain, signed = make_synthetic(seed=9), make_synthetic(seed=9, signed=True)
    torch.testing.assert_close(signed.train_codes.abs(), plain.train_codes)
    active = signed.train_codes[signed.train_codes != 0]
    assert abs(float((active < 0).double().mean()) - 0.5) < 0.03  # 3072 signs: std 0.009
    torch.testing.assert_close(signed.train_x, signed.train_codes @ signed.dictionary.atoms, atol=1e-5, rtol=1e-5)


def test_magnitude_by_frequency_scales_by_relative_weight() -> None:
    data = make_synthetic(frequency="zipf", values="constant", magnitude_by_frequency=True, dtype="float64")
    codes = all_codes(data)
    expected = (1 / torch.arange(1, 17, dtype=torch.float64)).expand_as(codes)  # w_i / w_1 = 1 / i
    torch.testing.assert_close(codes[codes != 0], expected[codes != 0])
    uniform = make_synthetic(seed=0, magnitude_by_frequency=True)  # uniform frequencies: no effect
    torch.testing.assert_close(uniform.train_codes, make_synthetic(seed=0).train_codes)


def test_noise_has_the_requested_std_and_leaves_the_rest_unchanged() -> None:
    clean, noisy = make_synthetic(seed=10, n_train=20000), make_synthetic(seed=10, n_train=20000, noise_std=0.1)
    torch.testing.assert_close(noisy.train_codes, clean.train_codes, rtol=0, atol=0)
    torch.testing.assert_close(noisy.dictionary.atoms, clean.dictionary.atoms, rtol=0, atol=0)
    residual = (noisy.train_x - noisy.train_codes @ noisy.dictionary.atoms).double()
    assert float(residual.std()) == pytest.approx(0.1, rel=0.01)  # 160,000 draws: relative std error 0.2%
    assert abs(float(residual.mean())) < 0.002


def activity_correlations(rho: float) -> tuple[float, float]:
    """Mean correlation of activity indicators within blocks of K = 3 latents, and across blocks."""
    active = all_codes(make_synthetic(n_latents=12, k=3, n_train=20000, seed=11, support_correlation=rho)) != 0
    c = np.corrcoef(active.double().numpy().T)
    block = np.arange(12) // 3
    same = (block[:, None] == block[None, :]) & ~np.eye(12, dtype=bool)
    return float(c[same].mean()), float(c[block[:, None] != block[None, :]].mean())


def test_correlated_supports_cooccur_within_blocks() -> None:
    within, across = activity_correlations(0.8)
    assert within > 0.2 and across < 0
    within0, across0 = activity_correlations(0.0)
    # exactly K active forces the negative correlation -(K(N-K)/N) / ((N-1) K(N-K)/N) = -1/(N-1) everywhere
    assert within0 == pytest.approx(-1 / 11, abs=0.02) and across0 == pytest.approx(-1 / 11, abs=0.02)


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="k=20 exceeds n_latents=16"):
        SyntheticConfig(k=20)
    with pytest.raises(SparseInferError, match="k=20 exceeds n_latents=16"):
        make_synthetic(k=20)
    with pytest.raises(SparseInferError, match="colour"):
        make_synthetic(colour="red")
    with pytest.raises(ValidationError, match="Extra inputs"):
        SyntheticConfig(colour="red")
    for bad in ({"k": 0}, {"n_latents": 0}, {"dim": 0}, {"n_train": 0}, {"n_test": 0}, {"noise_std": -1.0}):
        with pytest.raises(SparseInferError, match=next(iter(bad))):
            make_synthetic(**bad)
    for rho in (1.0, -0.1):
        with pytest.raises(SparseInferError, match="support_correlation"):
            make_synthetic(support_correlation=rho)
    with pytest.raises(SparseInferError, match="frequency"):
        make_synthetic(frequency="pareto")


def test_overrides_apply_to_a_given_config_without_changing_it() -> None:
    cfg = SyntheticConfig(n_latents=32, seed=1)
    data = make_synthetic(cfg, seed=2, k=4)
    assert (data.config.n_latents, data.config.seed, data.config.k) == (32, 2, 4)
    assert cfg.seed == 1 and cfg.k == 3


# --- source="study": the reference study's own generator (numpy legacy Mersenne Twister) ---

STUDY_PINS = {  # computed once from make_study_data (float64); any change in the order of draws moves them
    20240625: {
        "train0": ([4, 6, 8], [1.218925279342006, 0.22307002716621235, 0.6195801078405266]),
        "test_last": ([9, 10, 11], [0.24801177605312918, 0.4753361731028946, 0.535538364149388]),
        "atom0": [-0.09007611784347878, 0.14273843513506979, -0.5313373029508421],
        "test_x_last": [-0.46994233057327056, 0.42422122516780153],
    },
    20240926: {
        "train0": ([6, 10, 14], [1.117661812388195, 0.8641277571844309, 0.35232398369441276]),
        "test_last": ([0, 1, 4], [1.38653958695129, 0.7721249978725366, 0.8578864552893202]),
        "atom0": [0.6134131192368026, 0.10087567809694044, -0.14977426241527822],
        "test_x_last": [0.041033595088409286, -0.08422627568294715],
    },
}


@pytest.mark.parametrize("seed", sorted(STUDY_PINS))
def test_study_generator_pinned_values(seed: int) -> None:
    from sparseinfer.data.synthetic import STUDY_SEEDS

    assert seed in STUDY_SEEDS.values()
    data = make_synthetic(source="study", seed=seed, dtype="float64")
    pins = STUDY_PINS[seed]
    for name, codes in (("train0", data.train_codes[0]), ("test_last", data.test_codes[-1])):
        support, values = pins[name]
        assert torch.nonzero(codes).flatten().tolist() == support
        np.testing.assert_allclose(codes[support].numpy(), values, rtol=1e-12)
    np.testing.assert_allclose(data.dictionary.atoms[0, :3].numpy(), pins["atom0"], rtol=1e-12)
    np.testing.assert_allclose(data.test_x[-1, :2].numpy(), pins["test_x_last"], rtol=1e-12)


def test_study_generator_follows_the_protocol_with_the_global_legacy_generator() -> None:
    """Rebuilt with np.random.seed and the global functions, step by step as the protocol states."""
    seed, n, dim, k = 20240625, 16, 8, 3
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        magnitudes = np.abs(np.random.normal(0.0, 1.0, size=(2048, n)))
        mask = np.zeros((2048, n))
        for row in mask:
            row[np.random.choice(n, k, replace=False)] = 1.0
        atoms = np.random.normal(size=(n, dim))
    finally:
        np.random.set_state(state)
    codes = magnitudes * mask
    atoms = atoms / np.sqrt((atoms**2).sum(axis=1))[:, None]
    data = make_synthetic(source="study", seed=seed, dtype="float64")
    np.testing.assert_array_equal(torch.cat([data.train_codes, data.test_codes]).numpy(), codes)
    np.testing.assert_allclose(data.dictionary.atoms.numpy(), atoms, rtol=1e-14)
    np.testing.assert_allclose(data.test_x.numpy(), codes[1024:] @ atoms, rtol=1e-12, atol=1e-14)


def test_study_generator_structure_and_determinism() -> None:
    a = make_synthetic(source="study", seed=20240926)
    b = make_synthetic(source="study", seed=20240926)
    c = make_synthetic(source="study", seed=20240625)
    codes = all_codes(a)
    assert ((codes != 0).sum(dim=1) == 3).all() and (codes >= 0).all()
    torch.testing.assert_close(a.dictionary.atoms.norm(dim=1), torch.ones(16))
    assert a.dictionary.bias is None and not a.dictionary.atoms.requires_grad
    torch.testing.assert_close(a.train_x, a.train_codes @ a.dictionary.atoms, atol=1e-5, rtol=1e-5)
    for name in ("train_codes", "test_codes", "train_x", "test_x"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))
    frequencies = (codes != 0).double().mean(dim=0)  # uniform supports: every latent active with p = K/N
    assert (frequencies - 3 / 16).abs().max() < 0.03
    assert not torch.equal(make_synthetic(seed=20240926).train_codes, a.train_codes)  # another generator


def test_study_generator_refuses_options_it_does_not_have() -> None:
    with pytest.raises(SparseInferError, match="noise_std, support_correlation"):
        make_synthetic(source="study", noise_std=0.1, support_correlation=0.5)
    with pytest.raises(SparseInferError, match="source"):
        make_synthetic(source="numpy")
