"""The rank argument, checked: no ReLU(x W^T + b) encoder inverts an overcomplete dictionary on sparse codes.

With x = s @ atoms (atoms (N, M)), the encoder's codes are ReLU(s A + b) with A = atoms @ W^T of rank <= M. Exact
recovery of every non-negative 1- and 2-sparse code (at two or more magnitudes) forces b = 0 on the support, A_ii = 1
and A_ij = 0, i.e. A = I_N: impossible when M < N. So the smallest achievable worst-case error on those codes is
bounded away from 0 when M < N, and 0 when M >= N (W^T = pinv(atoms) gives A = I_N).

`rank_check` estimates that smallest worst-case error by minimising it over W (and b) directly: Adam on a smooth
maximum (log-sum-exp, sharpened over the run) from several starting points (the pseudo-inverse, any given W such as a
trained SAE's, perturbed copies of it), keeping the best true maximum seen. A non-convex search gives an upper bound on
the infimum: that it stays large when M < N illustrates the proof (it does not replace it); where M >= N it reaches 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_count, check_finite, check_matrix, check_positive


def probe_codes(n_latents: int, magnitudes: Sequence[float] = (1.0, 2.0)) -> tuple[Tensor, Tensor]:
    """All 1-sparse and all 2-sparse non-negative codes with entries from `magnitudes` (float64), as two tensors."""
    check_count(n_latents, "n_latents")
    if not magnitudes or any(not m > 0 for m in magnitudes):
        raise SparseInferError(f"magnitudes must be positive numbers, got {list(magnitudes)}")
    eye = torch.eye(n_latents, dtype=torch.float64)
    ones = torch.cat([m * eye for m in magnitudes])
    pairs = list(itertools.combinations(range(n_latents), 2))
    twos = torch.zeros(len(pairs) * len(magnitudes) ** 2, n_latents, dtype=torch.float64)
    row = 0
    for i, j in pairs:
        for a, b in itertools.product(magnitudes, repeat=2):
            twos[row, i], twos[row, j] = a, b
            row += 1
    return ones, twos


def _errors(weight: Tensor, bias: Tensor | None, atoms: Tensor, codes: Tensor) -> Tensor:
    """|ReLU(x W^T + b) - s| / max(s) per code and latent, x = s @ atoms."""
    pre = (codes @ atoms) @ weight.T
    if bias is not None:
        pre = pre + bias
    return (torch.relu(pre) - codes).abs() / codes.amax(1, keepdim=True)


def sparse_max_error(weight: Tensor, atoms: Tensor, codes: Tensor, bias: Tensor | None = None) -> float:
    """max over codes of ||ReLU(x W^T + b) - s||_inf / ||s||_inf with x = s @ atoms; `weight` is (N, M) as in
    `nn.Linear(M, N)`. 0 means the encoder inverts the dictionary exactly on these codes."""
    atoms = check_finite(check_matrix(atoms.detach().double(), "atoms"), "atoms")
    weight = check_finite(check_matrix(weight.detach().double(), "weight", cols=atoms.shape[1]), "weight")
    if weight.shape[0] != atoms.shape[0]:
        raise SparseInferError(f"weight has {weight.shape[0]} rows but the dictionary has {atoms.shape[0]} atoms")
    with torch.no_grad():
        return float(_errors(weight, None if bias is None else bias.double(), atoms, codes.double()).max())


@dataclass
class RankCheck:
    """The best worst-case error found and where it came from; per-start errors; the rank bound min(M, N)."""

    n_latents: int
    dim: int
    max_error: float  # on 1- and 2-sparse codes together, at the best W found
    max_error_1sparse: float
    max_error_2sparse: float
    best_start: str
    by_start: dict[str, float] = field(default_factory=dict)  # best max error reached from each starting point
    initial: dict[str, float] = field(default_factory=dict)  # max error at each starting point before optimising
    rank_bound: int = 0


def _optimise(
    weight: Tensor, bias: Tensor | None, atoms: Tensor, codes: Tensor, steps: int, lr: float
) -> tuple[float, Tensor, Tensor | None]:
    """Adam on log-sum-exp(beta * errors) / beta, beta growing geometrically 10 -> 1e4; best true max kept."""
    weight = weight.clone().requires_grad_(True)
    params = [weight]
    if bias is not None:
        bias = bias.clone().requires_grad_(True)
        params.append(bias)
    optimiser = torch.optim.Adam(params, lr=lr)
    best = (float("inf"), weight.detach().clone(), None if bias is None else bias.detach().clone())
    for step in range(steps + 1):
        errors = _errors(weight, bias, atoms, codes).flatten()
        worst = float(errors.detach().max())
        if worst < best[0]:
            best = (worst, weight.detach().clone(), None if bias is None else bias.detach().clone())
        if step == steps or worst <= 1e-12:  # exact up to rounding: nothing left to gain
            break
        beta = 10.0 * 1000.0 ** (step / max(steps - 1, 1))
        loss = torch.logsumexp(beta * errors, 0) / beta
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return best


def rank_check(
    atoms: Tensor,
    starts: Mapping[str, Tensor] | None = None,
    restarts: int = 1,
    steps: int = 500,
    lr: float = 1e-2,
    bias: bool = False,
    magnitudes: Sequence[float] = (1.0, 2.0),
    seed: int = 0,
) -> RankCheck:
    """Smallest worst-case error of ReLU(x W^T (+ b)) on all 1- and 2-sparse codes that optimisation finds.

    Starting points: the pseudo-inverse W = pinv(atoms)^T, each W in `starts` (e.g. trained SAEs, by name) and
    `restarts` perturbed pseudo-inverses; each is optimised for `steps` Adam steps. Works in float64."""
    atoms = check_finite(check_matrix(atoms.detach().double(), "atoms"), "atoms")
    check_count(steps, "steps")
    check_positive(lr, "lr")
    n, m = atoms.shape
    ones, twos = probe_codes(n, magnitudes)
    codes = torch.cat([ones, twos])
    gen = torch.Generator().manual_seed(seed)
    candidates = {"pinv": torch.linalg.pinv(atoms).T.contiguous()}
    for name, w in (starts or {}).items():
        w = check_finite(check_matrix(w.detach().double(), f"start {name!r}", cols=m), f"start {name!r}")
        if w.shape[0] != n:
            raise SparseInferError(f"start {name!r} has {w.shape[0]} rows but the dictionary has {n} atoms")
        candidates[name] = w
    scale = float(candidates["pinv"].std())
    for r in range(restarts):  # pinv plus noise: a fully random W mostly starts with dead ReLUs and no gradient
        noise = torch.randn(n, m, generator=gen, dtype=torch.float64)
        candidates[f"pinv+noise{r}"] = candidates["pinv"] + 0.3 * scale * noise
    by_start, initial = {}, {}
    best: tuple[float, str, Tensor, Tensor | None] = (float("inf"), "", candidates["pinv"], None)
    for name, w in candidates.items():
        b0 = torch.zeros(n, dtype=torch.float64) if bias else None
        initial[name] = float(_errors(w, b0, atoms, codes).max())
        error, w_best, b_best = _optimise(w, b0, atoms, codes, steps, lr)
        by_start[name] = error
        if error < best[0]:
            best = (error, name, w_best, b_best)
    error, name, w_best, b_best = best
    with torch.no_grad():
        e1 = float(_errors(w_best, b_best, atoms, ones).max())
        e2 = float(_errors(w_best, b_best, atoms, twos).max())
    return RankCheck(n, m, error, e1, e2, name, by_start, initial, min(n, m))
