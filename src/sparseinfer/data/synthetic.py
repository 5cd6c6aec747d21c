"""Ground-truth data: a random unit-norm dictionary, exactly-K-sparse codes, and signals x = s D (+ noise).

One seed draws everything, in this order: the dictionary, the supports, the magnitudes, the signs (only when
`signed`), the noise (only when `noise_std > 0`); so turning on noise or signs never changes the dictionary or
the supports. `n_train + n_test` samples are drawn as one batch: the first `n_train` train, the rest test.

Supports: every sample has exactly K active latents, drawn without replacement. Each latent gets a key
`log w_i + G_i` with `G_i` a standard Gumbel variable, and the K largest keys win (Gumbel-top-k). With uniform
weights this is a uniformly random K-subset; with Zipf weights `w_i ∝ 1 / i^zipf_exponent` it is exactly
sequential sampling without replacement with probabilities proportional to `w` (so the marginal frequencies are
decreasing in i, but flatter than `w` when K > 1).

Correlated supports (`support_correlation = rho > 0`) use a Gaussian copula: `G_i = -log(-log Phi(z_i))` where
`z` is standard normal with correlation `rho` between latents of the same block and 0 across blocks. Blocks are
runs of K consecutive latents (the last block may be shorter). Latents of one block then tend to be active
together. With exactly K active per sample the activities cannot all be positively correlated (their sum is
constant), which is why the correlation is confined to blocks. When K does not divide N the frequencies are
no longer exactly uniform (the short block behaves differently); with rho = 0 this is plain Gumbel-top-k.

Magnitudes: `half_normal` |z| with z ~ N(0, 1), `exponential` Exp(1), `uniform` U(0, 1), `constant` 1; with
`signed` each value gets an independent random sign. With `magnitude_by_frequency` the magnitude of latent i is
multiplied by `w_i / max(w)`: the most frequent latent keeps the base distribution, rarer ones are smaller
(no effect with uniform frequencies).

`source="study"` is the reference study's own generator instead (`make_study_data`, numpy's legacy Mersenne
Twister, seeds `STUDY_SEEDS`): same distributions as the defaults above, another stream of draws, so the same seed
gives another data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from sparseinfer.dictionary import Dictionary
from sparseinfer.errors import SparseInferError
from sparseinfer.memory import check_synthetic_memory

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
STUDY_SEEDS = {"known_codes": 20240625, "known_dictionary": 20240625, "learn_both": 20240926}
"""The reference study's data seeds (numpy legacy generator): one data set for settings 1 and 2, one for setting 3."""


class SyntheticConfig(BaseModel):
    """Sizes, seed and distributions of one synthetic data set (defaults: the reference study's protocol)."""

    model_config = ConfigDict(extra="forbid")

    n_latents: int = Field(16, ge=1, description="N, number of ground-truth latents (atoms)")
    dim: int = Field(8, ge=1, description="M, dimension of the signals")
    k: int = Field(3, ge=1, description="K, active latents per sample (exactly)")
    n_train: int = Field(1024, ge=1)
    n_test: int = Field(1024, ge=1)
    seed: int = 0
    frequency: Literal["uniform", "zipf"] = "uniform"
    zipf_exponent: float = Field(1.0, ge=0.0, description="Zipf weights w_i ∝ 1 / i^zipf_exponent")
    magnitude_by_frequency: bool = False
    values: Literal["half_normal", "exponential", "uniform", "constant"] = "half_normal"
    signed: bool = False
    noise_std: float = Field(0.0, ge=0.0, description="std of Gaussian observation noise added to x")
    support_correlation: float = Field(0.0, ge=0.0, lt=1.0, description="copula correlation within blocks of K")
    dtype: Literal["float32", "float64"] = "float32"
    source: Literal["sparseinfer", "study"] = Field(
        "sparseinfer", description="'study': the reference study's numpy generator (uniform half-normal codes only)"
    )

    @model_validator(mode="after")
    def _k_at_most_n(self) -> SyntheticConfig:
        if self.k > self.n_latents:
            raise ValueError(f"k={self.k} exceeds n_latents={self.n_latents}: at most N latents can be active")
        if self.source == "study":
            defaults = SyntheticConfig.model_fields
            changed = [name for name in _STUDY_FIXED if getattr(self, name) != defaults[name].default]
            if changed:
                raise ValueError(
                    f"source 'study' draws uniform supports of half-normal codes without noise: "
                    f"{', '.join(changed)} cannot be set with it"
                )
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the generated tensors."""
        return _DTYPES[self.dtype]


@dataclass
class SyntheticData:
    """A ground-truth data set: the true dictionary (no bias, frozen), codes and signals for train and test."""

    config: SyntheticConfig
    dictionary: Dictionary
    train_codes: Tensor
    test_codes: Tensor
    train_x: Tensor
    test_x: Tensor


def latent_weights(config: SyntheticConfig) -> Tensor:
    """Sampling weights of the latents (sum 1, float64): uniform, or Zipf w_i ∝ 1 / i^zipf_exponent, i = 1..N."""
    n = config.n_latents
    if config.frequency == "uniform":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    w = ranks.pow(-config.zipf_exponent)
    return w / w.sum()


_STUDY_FIXED = (
    "frequency",
    "zipf_exponent",
    "magnitude_by_frequency",
    "values",
    "signed",
    "noise_std",
    "support_correlation",
)


def make_synthetic(config: SyntheticConfig | None = None, **overrides: Any) -> SyntheticData:
    """Draw the dictionary and `n_train + n_test` samples from `config` (plus field overrides), deterministically."""
    config = _resolve(config, overrides)
    check_synthetic_memory(config.n_train + config.n_test, config.n_latents, config.dim, config.torch_dtype)
    if config.source == "study":
        return make_study_data(config)
    gen = torch.Generator().manual_seed(config.seed)
    n, dim, n_samples = config.n_latents, config.dim, config.n_train + config.n_test
    f64 = torch.float64

    atoms = torch.randn(n, dim, generator=gen, dtype=f64)
    atoms = (atoms / atoms.norm(dim=1, keepdim=True)).to(config.torch_dtype)
    dictionary = Dictionary(atoms).requires_grad_(False)  # the truth: never trained by accident

    weights = latent_weights(config)
    active = _draw_supports(config, weights, n_samples, gen)
    magnitudes = _draw_values(config.values, (n_samples, n), gen)
    if config.magnitude_by_frequency:
        magnitudes = magnitudes * (weights / weights.max())
    if config.signed:
        magnitudes = magnitudes * (torch.randint(0, 2, (n_samples, n), generator=gen, dtype=f64) * 2 - 1)
    codes = torch.where(active, magnitudes, torch.zeros((), dtype=f64))

    x = codes @ dictionary.atoms.detach().to(f64)
    if config.noise_std > 0:
        x = x + config.noise_std * torch.randn(n_samples, dim, generator=gen, dtype=f64)

    codes, x = codes.to(config.torch_dtype), x.to(config.torch_dtype)
    cut = config.n_train
    return SyntheticData(config, dictionary, codes[:cut], codes[cut:], x[:cut], x[cut:])


def make_study_data(config: SyntheticConfig) -> SyntheticData:
    """The reference study's data set, drawn as its protocol states, from `np.random.RandomState(config.seed)`.

    `RandomState(seed)` is the stream `np.random.seed(seed)` starts for the global legacy functions, held locally so
    that no global state changes. With S = n_train + n_test samples, N latents, M dimensions, in this order:

    1. magnitudes: `abs(randn(S, N))`, |z| with z ~ N(0, 1) for every latent of every sample (row-major);
    2. supports: for each sample in turn, `choice(N, K, replace=False)`, a uniformly random K-subset (legacy
       `choice` draws a full permutation of N per call); the magnitudes off the support are set to 0;
    3. dictionary: `randn(N, M)`, each row divided by its L2 norm (unit atoms);
    4. signals: x = codes @ atoms (no noise); the first n_train samples train, the rest test.

    Everything is computed in float64 and then cast to `config.dtype`. Seeds of the study: `STUDY_SEEDS`.
    """
    rng = np.random.RandomState(config.seed)
    n, dim, k, n_samples = config.n_latents, config.dim, config.k, config.n_train + config.n_test
    magnitudes = np.abs(rng.randn(n_samples, n))
    active = np.zeros((n_samples, n), dtype=bool)
    for i in range(n_samples):
        active[i, rng.choice(n, k, replace=False)] = True
    codes = np.where(active, magnitudes, 0.0)
    atoms = rng.randn(n, dim)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = codes @ atoms
    dtype = config.torch_dtype
    dictionary = Dictionary(torch.from_numpy(atoms).to(dtype), normalise=False).requires_grad_(False)
    codes_t, x_t = torch.from_numpy(codes).to(dtype), torch.from_numpy(x).to(dtype)
    cut = config.n_train
    return SyntheticData(config, dictionary, codes_t[:cut], codes_t[cut:], x_t[:cut], x_t[cut:])


def _resolve(config: SyntheticConfig | None, overrides: dict[str, Any]) -> SyntheticConfig:
    """Validate config + overrides into one SyntheticConfig; errors become a one-line SparseInferError."""
    base = config.model_dump() if config is not None else {}
    try:
        return SyntheticConfig.model_validate({**base, **overrides})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise SparseInferError(f"invalid synthetic data config: {problems}") from None


def _draw_supports(config: SyntheticConfig, weights: Tensor, n_samples: int, gen: torch.Generator) -> Tensor:
    """Boolean (n_samples, N) mask with exactly K True per row: Gumbel-top-k on (optionally copula-coupled) keys."""
    n, k, rho = config.n_latents, config.k, config.support_correlation
    z = torch.randn(n_samples, n, generator=gen, dtype=torch.float64)
    if rho > 0:
        blocks = torch.arange(n) // k
        shared = torch.randn(n_samples, int(blocks.max()) + 1, generator=gen, dtype=torch.float64)
        z = math.sqrt(rho) * shared[:, blocks] + math.sqrt(1.0 - rho) * z
    # Gumbel variable -log(-log Phi(z)); log_ndtr keeps precision in both tails.
    minus_log_u = (-torch.special.log_ndtr(z)).clamp_min(torch.finfo(torch.float64).tiny)
    keys = weights.log() - torch.log(minus_log_u)
    top = keys.topk(k, dim=1).indices
    return torch.zeros(n_samples, n, dtype=torch.bool).scatter_(1, top, True)


def _draw_values(kind: str, shape: tuple[int, int], gen: torch.Generator) -> Tensor:
    """Non-negative magnitudes of the chosen distribution (float64)."""
    if kind == "half_normal":
        return torch.randn(shape, generator=gen, dtype=torch.float64).abs()
    if kind == "exponential":
        return -torch.log1p(-torch.rand(shape, generator=gen, dtype=torch.float64))
    if kind == "uniform":
        return torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.ones(shape, dtype=torch.float64)
