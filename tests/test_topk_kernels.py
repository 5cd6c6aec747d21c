"""The fused TopK encoder path (`topk_linear`, `fused_backward=True`) against the plain PyTorch one: same codes,
same gradients (float64 autograd reference and torch.autograd.gradcheck), and its FLOP formula against
FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import sparseinfer
from sparseinfer.codes import SparseCodes, as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders import _activations
from sparseinfer.encoders._activations import TopKLinearFunction, topk_linear
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import amortised
from sparseinfer.flops.amortised import topk_training_fused

B, M, N, K = 37, 12, 50, 5


def problem(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, M, generator=g, dtype=dtype)
    w = torch.randn(N, M, generator=g, dtype=dtype)
    b = torch.randn(N, generator=g, dtype=dtype)
    return x, w, b


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, k: int) -> torch.Tensor:
    """Dense codes by plain autograd ops: keep the k largest of x W^T + b per row, ReLU them, zero elsewhere."""
    pre = x @ w.T + (0 if b is None else b)
    values, indices = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, indices, values.relu())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [None, 3 * K * M])  # one chunk, and chunks of 3 rows in the weight gradient
def test_values_and_gradients_match_plain_autograd(bias: bool, chunk: int | None, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if chunk is not None:
        monkeypatch.setattr(_activations, "GRAD_CHUNK_ELEMENTS", chunk)
    x, w, b = problem()
    weights = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for fused in (True, False):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if bias else None
        if fused:
            codes = as_dense(topk_linear(xs, ws, bs, K, sparse=True))
        else:
            codes = reference(xs, ws, bs, K)
        (codes * weights).sum().backward()
        grads.append((codes.detach(), xs.grad, ws.grad, None if bs is None else bs.grad))
    for got, want in zip(grads[0], grads[1], strict=True):
        if want is None:
            assert got is None
            continue
        assert want.abs().max() > 0  # the check can fail
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gradcheck() -> None:
    x, w, b = problem()
    inputs = (x[:6].clone().requires_grad_(), w[:8].clone().requires_grad_(), b[:8].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: TopKLinearFunction.apply(*a, 3)[0], inputs)


def test_encoder_option_gives_the_same_training_step() -> None:
    """One Adam step through `fit`'s ingredients: fused and plain encoders end with the same parameters."""
    torch.manual_seed(0)
    x = torch.randn(64, M, dtype=torch.float64)
    states = []
    for fused in (True, False):
        dictionary = Dictionary.random(N, M, seed=2, bias=True, dtype=torch.float64)
        torch.manual_seed(3)
        enc = sparseinfer.create("topk", dim=M, n_latents=N, k=K, sparse_output=fused, fused_backward=fused).double()
        codes = enc(x, dictionary)
        assert isinstance(codes, SparseCodes) == fused
        loss = (dictionary.decode(codes) - x).pow(2).mean()
        loss.backward()
        states.append([p.grad.clone() for p in (*enc.parameters(), *dictionary.parameters())])
    for got, want in zip(*states, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("input_grad", [True, False])
def test_flops_formula_matches_the_counter(input_grad: bool) -> None:
    x, _, _ = problem(torch.float32)
    dictionary = Dictionary.random(N, M, seed=2, bias=True)
    dictionary.requires_grad_(False)
    enc = sparseinfer.create("topk", dim=M, n_latents=N, k=K, sparse_output=True, fused_backward=True)
    xs = x.clone().requires_grad_(input_grad)
    with FlopCounterMode(display=False) as counter:
        codes = enc(xs, dictionary)
        codes.values.sum().backward()
    formula = topk_training_fused(B, M, N, K, True, input_grad)
    assert counter.get_total_flops() == formula.matmul == amortised.topk(B, M, N, K, True).matmul
    assert enc.training_flops(B, M, N, input_grad) == formula.total
    assert formula.total < amortised.topk_training(B, M, N, K, True, input_grad).total


def test_bad_input_is_rejected() -> None:
    enc = sparseinfer.create("topk", dim=M, n_latents=N, k=K, fused_backward=True)
    dictionary = Dictionary.random(N, M, seed=0)
    with pytest.raises(SparseInferError):
        enc(torch.randn(4, M + 1), dictionary)
    with pytest.raises(SparseInferError):
        enc(torch.full((4, M), float("nan")), dictionary)
    with pytest.raises(SparseInferError):
        sparseinfer.create("topk", dim=M, n_latents=N, k=N + 1, fused_backward=True)
