"""Amortised encoders (relu, topk, batch_topk, jumprelu, mlp): known answers against float64 numpy references,
errors on bad input, registry creation, and FLOP formulas against torch's FlopCounterMode."""

from __future__ import annotations

import copy
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import sparseinfer
from sparseinfer import Dictionary, SparseCodes, SparseInferError
from sparseinfer.codes import as_dense
from sparseinfer.encoders._activations import JumpReLUFunction
from sparseinfer.encoders.batch_topk import BatchTopKEncoder
from sparseinfer.encoders.jumprelu import JumpReLUEncoder
from sparseinfer.encoders.mlp import MLPEncoder
from sparseinfer.encoders.relu import ReLUEncoder
from sparseinfer.encoders.topk import TopKEncoder
from sparseinfer.flops import amortised

N, M, B = 16, 8, 7


def make(name: str, seed: int = 0, **hparams: object) -> sparseinfer.Encoder:
    torch.manual_seed(seed)
    return sparseinfer.create(name, dim=M, n_latents=N, **hparams).double()


@pytest.fixture
def dictionary() -> Dictionary:
    return Dictionary.random(N, M, seed=1, dtype=torch.float64)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(B, M, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def linear_ref(layer: torch.nn.Linear, inputs: np.ndarray) -> np.ndarray:
    """x W^T + b in numpy float64."""
    out = inputs @ layer.weight.detach().numpy().T
    return out if layer.bias is None else out + layer.bias.detach().numpy()


# ----------------------------------------------------------------------------------------------- relu / topk


def test_relu_matches_reference_and_subtracts_dictionary_bias(x: torch.Tensor) -> None:
    dic = Dictionary(Dictionary.random(N, M, seed=1, dtype=torch.float64).atoms.detach(), bias=torch.randn(M).double())
    enc = make("relu")
    ref = np.maximum(linear_ref(enc.linear, (x - dic.bias).detach().numpy()), 0)
    np.testing.assert_allclose(enc(x, dic).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    raw = make("relu", subtract_bias=False)
    np.testing.assert_allclose(
        raw(x, dic).detach().numpy(), np.maximum(linear_ref(raw.linear, x.numpy()), 0), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("k", [1, 3, 5, 16])
def test_topk_keeps_the_k_largest_per_row(k: int, dictionary: Dictionary, x: torch.Tensor) -> None:
    enc = make("topk", k=k)
    pre = linear_ref(enc.linear, x.numpy())
    ref = np.zeros_like(pre)
    for row in range(B):
        top = np.argsort(-pre[row])[:k]
        ref[row, top] = np.maximum(pre[row, top], 0)
    codes = enc(x, dictionary).detach().numpy()
    np.testing.assert_allclose(codes, ref, rtol=1e-12, atol=1e-12)
    n_positive = np.minimum((pre > 0).sum(1), k)  # exactly k non-zeros wherever k pre-activations are positive
    np.testing.assert_array_equal((codes != 0).sum(1), n_positive)
    if k <= 3:
        assert (n_positive == k).all()  # this seed has >= 3 positive pre-activations per row: the check bites


@pytest.mark.parametrize(
    ("name", "hparams"), [("topk", {"k": 4}), ("relu", {}), ("mlp", {"activation": "topk", "k": 2})]
)
def test_sparse_output_decodes_like_dense(
    name: str, hparams: dict[str, object], dictionary: Dictionary, x: torch.Tensor
) -> None:
    dense = make(name, **hparams)(x, dictionary)
    sparse = make(name, sparse_output=True, **hparams)(x, dictionary)
    assert isinstance(sparse, SparseCodes) and not isinstance(dense, SparseCodes)
    assert sparse.n_latents == N
    np.testing.assert_allclose(sparse.to_dense().detach().numpy(), dense.detach().numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(
        dictionary.decode(sparse).detach().numpy(), dictionary.decode(dense).detach().numpy(), rtol=1e-12, atol=1e-12
    )
    if name != "relu":
        assert sparse.values.shape == (B, hparams["k"])


def test_relu_sparse_output_width_is_densest_row(dictionary: Dictionary, x: torch.Tensor) -> None:
    enc = make("relu", sparse_output=True)
    codes = enc(x, dictionary)
    dense = make("relu")(x, dictionary)
    assert codes.values.shape[1] == int((dense > 0).sum(1).max())


# ----------------------------------------------------------------------------------------------- batch_topk


def test_batch_topk_keeps_k_times_batch_over_the_batch(dictionary: Dictionary, x: torch.Tensor) -> None:
    k = 3
    enc = make("batch_topk", k=k, momentum=0.25)
    assert enc.training and not enc.has_threshold
    pre = linear_ref(enc.linear, x.numpy())
    act = np.maximum(pre, 0).ravel()
    keep = np.argsort(-act)[: k * B]
    ref = np.zeros_like(act)
    ref[keep] = act[keep]
    codes = enc(x, dictionary).detach().numpy()
    np.testing.assert_allclose(codes, ref.reshape(B, N), rtol=1e-12, atol=1e-12)
    assert (codes != 0).sum() == k * B
    assert (codes != 0).sum(1).std() > 0  # the budget is shared: rows differ in their number of codes
    first = act[keep].min()
    assert float(enc.threshold) == pytest.approx(first, rel=1e-6)

    x2 = torch.randn(B, M, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    act2 = np.maximum(linear_ref(enc.linear, x2.numpy()), 0).ravel()
    second = np.sort(act2)[::-1][k * B - 1]
    enc(x2, dictionary)
    assert float(enc.threshold) == pytest.approx(0.75 * first + 0.25 * second, rel=1e-6)

    enc.eval()
    thr = float(enc.threshold)
    eval_codes = enc(x, dictionary).detach().numpy()
    np.testing.assert_allclose(eval_codes, np.where(pre > thr, pre, 0.0), rtol=1e-12, atol=1e-12)
    # eval mode is per sample: one row alone gets the same codes
    np.testing.assert_allclose(enc(x[:1], dictionary).detach().numpy(), eval_codes[:1], rtol=1e-12, atol=1e-12)
    assert float(enc.threshold) == thr  # eval does not move the threshold
    eval_flops = amortised.batch_topk(B, M, N, k, True, batch_mode=False)
    assert enc.inference_flops(B, M, N) == eval_flops.total
    assert counted(lambda: enc(x, dictionary)) == eval_flops.matmul


def test_batch_topk_eval_without_threshold_falls_back_to_batch_selection(
    dictionary: Dictionary, x: torch.Tensor
) -> None:
    enc = make("batch_topk", k=2).eval()
    codes = enc(x, dictionary)
    assert int((codes != 0).sum()) == 2 * B
    assert not enc.has_threshold
    state = enc.state_dict()
    assert "threshold" in state  # saved with the weights


# ----------------------------------------------------------------------------------------------- jumprelu


def test_jumprelu_function_known_gradients() -> None:
    pre = torch.tensor([[0.5, 1.0005, 2.0], [0.9995, 0.2, 1.0]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    out = JumpReLUFunction.apply(pre, theta, 0.002)
    np.testing.assert_array_equal(out.detach().numpy(), [[0, 1.0005, 2.0], [0, 0, 0]])
    out.sum().backward()
    # d/dtheta = -theta / eps on every pre within eps/2 of theta: (0, 1) at 1.0005 and (1, 0) at 0.9995, (1, 2) at 1.0
    np.testing.assert_allclose(theta.grad.numpy(), [-500.0, -500.0, -500.0])
    np.testing.assert_array_equal(pre.grad.numpy(), [[0, 1, 1], [0, 0, 0]])


def test_jumprelu_zeroes_below_threshold_and_threshold_learns(dictionary: Dictionary, x: torch.Tensor) -> None:
    theta0, eps, coef = 0.3, 0.5, 0.1
    enc = make("jumprelu", threshold_init=theta0, bandwidth=eps, l0_coefficient=coef)
    np.testing.assert_allclose(enc.threshold.detach().numpy(), theta0, rtol=1e-6)
    theta0 = enc.threshold.detach().numpy()  # the float32 log of 0.3, exponentiated in float64
    pre = linear_ref(enc.linear, x.numpy())
    codes = enc(x, dictionary)
    np.testing.assert_allclose(codes.detach().numpy(), np.where(pre > theta0, pre, 0.0), rtol=1e-12, atol=1e-12)
    assert 0 < (pre > theta0).sum() < pre.size and (pre[pre <= theta0] > 0).any()  # some positive codes cut

    window = (np.abs(pre - theta0) < eps / 2).sum(0)
    assert window.sum() > 0
    codes.sum().backward()
    # chain rule through exp: d/dlog(theta) = theta * (-theta / eps) * (number of pre-activations in the window)
    np.testing.assert_allclose(enc.log_threshold.grad.numpy(), -(theta0**2) / eps * window, rtol=1e-9)
    np.testing.assert_allclose(
        enc.linear.weight.grad.numpy(), (pre > theta0).T.astype(float) @ x.numpy(), rtol=1e-9, atol=1e-12
    )

    enc.zero_grad()
    codes = enc(x, dictionary)
    penalty = enc.sparsity_penalty(codes)
    assert float(penalty.detach()) == pytest.approx(coef * (pre > theta0).mean(), rel=1e-12)
    penalty.backward()
    expected = coef * theta0 * (-1 / eps) * window / pre.size  # mean over all elements
    np.testing.assert_allclose(enc.log_threshold.grad.numpy(), expected, rtol=1e-9)
    assert enc.linear.weight.grad is None or not enc.linear.weight.grad.any()  # L0 trains only the thresholds


def test_jumprelu_penalty_lowers_l0_when_trained(dictionary: Dictionary, x: torch.Tensor) -> None:
    enc = make("jumprelu", threshold_init=0.05, bandwidth=0.5, l0_coefficient=1.0)
    opt = torch.optim.Adam([enc.log_threshold], lr=0.05)
    l0_before = float((enc(x, dictionary) != 0).double().mean())
    for _ in range(50):
        opt.zero_grad()
        codes = enc(x, dictionary)
        enc.sparsity_penalty(codes).backward()
        opt.step()
    l0_after = float((enc(x, dictionary) != 0).double().mean())
    assert l0_after < 0.5 * l0_before
    assert (enc.threshold > 0.05).all()


def test_jumprelu_penalty_needs_its_own_codes(dictionary: Dictionary, x: torch.Tensor) -> None:
    enc = make("jumprelu")
    with pytest.raises(SparseInferError, match="last call"):
        enc.sparsity_penalty(torch.zeros(B, N))
    enc(x, dictionary)
    with pytest.raises(SparseInferError, match="last call"):
        enc.sparsity_penalty(torch.zeros(B, N))


# ----------------------------------------------------------------------------------------------- mlp


@pytest.mark.parametrize("hidden", [[32], [256], [32, 5]])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_widths_and_reference(hidden: list[int], bias: bool, dictionary: Dictionary, x: torch.Tensor) -> None:
    enc = make("mlp", hidden=hidden, bias=bias)
    linears = [m for m in enc.net if isinstance(m, torch.nn.Linear)]
    widths = [M, *hidden, N]
    assert [(lin.in_features, lin.out_features) for lin in linears] == list(pairwise(widths))
    assert all((lin.bias is not None) == bias for lin in linears)
    h = x.numpy()
    for lin in linears:
        h = np.maximum(linear_ref(lin, h), 0)  # linear, ReLU, ..., linear, ReLU (the study's MLP)
    np.testing.assert_allclose(enc(x, dictionary).detach().numpy(), h, rtol=1e-10, atol=1e-12)


def test_mlp_topk_output(dictionary: Dictionary, x: torch.Tensor) -> None:
    enc = make("mlp", hidden=[32], activation="topk", k=2)
    codes = enc(x, dictionary).detach().numpy()
    dense = make("mlp", hidden=[32])  # same seed, same weights, ReLU output
    relu_codes = dense(x, dictionary).detach().numpy()
    for row in range(B):
        top = np.argsort(-relu_codes[row])[:2]
        np.testing.assert_allclose(codes[row, top], relu_codes[row, top], rtol=1e-12)
        assert (codes[row] != 0).sum() == min(2, (relu_codes[row] > 0).sum())


# ----------------------------------------------------------------------------------------------- errors, registry


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("topk", {"k": N + 1}, "exceeds"),
        ("topk", {"k": 0}, "positive integer"),
        ("batch_topk", {"k": N + 1}, "exceeds"),
        ("batch_topk", {"momentum": 0.0}, "momentum"),
        ("mlp", {"activation": "topk", "k": N + 1}, "exceeds"),
        ("mlp", {"activation": "topk"}, "positive integer"),
        ("mlp", {"activation": "gelu"}, "activation"),
        ("mlp", {"k": 3}, "only with"),
        ("mlp", {"hidden": [32, 0]}, "hidden"),
        ("jumprelu", {"bandwidth": -1.0}, "bandwidth"),
        ("jumprelu", {"threshold_init": 0.0}, "threshold_init"),
        ("relu", {"nope": 1}, "no hyperparameter"),
    ],
)
def test_bad_hyperparameters(name: str, hparams: dict[str, object], match: str) -> None:
    with pytest.raises(SparseInferError, match=match):
        sparseinfer.create(name, dim=M, n_latents=N, **hparams)


ALL = [
    ("relu", {}),
    ("topk", {"k": 3}),
    ("batch_topk", {"k": 3}),
    ("jumprelu", {}),
    ("mlp", {"hidden": [32]}),
]


@pytest.mark.parametrize(("name", "hparams"), ALL)
def test_bad_input(name: str, hparams: dict[str, object], dictionary: Dictionary, x: torch.Tensor) -> None:
    enc = make(name, **hparams)
    with pytest.raises(SparseInferError, match="columns"):
        enc(x[:, :-1], dictionary)
    bad = x.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(SparseInferError, match="NaN"):
        enc(bad, dictionary)
    bad[2, 3] = float("inf")
    with pytest.raises(SparseInferError, match="NaN/Inf"):
        enc(bad, dictionary)
    with pytest.raises(SparseInferError, match="2-D"):
        enc(x[0], dictionary)
    other = Dictionary.random(N + 1, M, seed=0, dtype=torch.float64)
    with pytest.raises(SparseInferError, match="n_latents"):
        enc(x, other)


@pytest.mark.parametrize(("name", "hparams"), ALL)
def test_deepcopy_after_a_training_step(
    name: str, hparams: dict[str, object], dictionary: Dictionary, x: torch.Tensor
) -> None:
    """A loop keeping the best encoder so far deep-copies it mid-training; the copy encodes identically."""
    enc = make(name, **hparams)
    codes = enc(x, dictionary)
    penalty = enc.sparsity_penalty(codes)
    (codes.pow(2).sum() + (0 if penalty is None else penalty)).backward()
    best = copy.deepcopy(enc).eval()
    enc.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(best(x, dictionary).numpy(), enc(x, dictionary).numpy())


@pytest.mark.parametrize(
    ("name", "cls"),
    [("relu", ReLUEncoder), ("topk", TopKEncoder), ("batch_topk", BatchTopKEncoder), ("jumprelu", JumpReLUEncoder)],
)
def test_registry_creates_each_encoder(name: str, cls: type) -> None:
    assert name in sparseinfer.available()
    enc = sparseinfer.create(name, dim=M, n_latents=N)
    assert type(enc) is cls and enc.trainable and enc.kind == "amortised"
    assert sparseinfer.get(name) is cls


def test_registry_passes_hyperparameters() -> None:
    enc = sparseinfer.create("mlp", dim=M, n_latents=N, hidden=[32, 4], activation="topk", k=5, bias=False)
    assert isinstance(enc, MLPEncoder) and enc.hidden == [32, 4] and enc.k == 5
    assert sum(p.numel() for p in enc.parameters()) == M * 32 + 32 * 4 + 4 * N
    assert sparseinfer.create("topk", dim=M, n_latents=N, k=7).k == 7
    with pytest.raises(SparseInferError, match="needs dim"):
        sparseinfer.create("topk", n_latents=N)


# ----------------------------------------------------------------------------------------------- FLOPs

FLOP_CASES = [
    ("relu", {}, lambda b, h: amortised.relu(b, M, N, h["bias"])),
    ("relu", {"bias": False}, lambda b, h: amortised.relu(b, M, N, h["bias"])),
    ("relu", {"sparse_output": True}, lambda b, h: amortised.relu(b, M, N, h["bias"], sparse=True)),
    ("topk", {"k": 3}, lambda b, h: amortised.topk(b, M, N, 3, h["bias"])),
    ("topk", {"k": 3, "sparse_output": True}, lambda b, h: amortised.topk(b, M, N, 3, h["bias"])),
    ("topk", {"k": 3, "fused_backward": False}, lambda b, h: amortised.topk(b, M, N, 3, h["bias"])),
    ("batch_topk", {"k": 2}, lambda b, h: amortised.batch_topk(b, M, N, 2, h["bias"], batch_mode=True)),
    ("jumprelu", {"bias": False}, lambda b, h: amortised.jumprelu(b, M, N, h["bias"])),
    ("mlp", {"hidden": [32]}, lambda b, h: amortised.mlp(b, M, N, [32], h["bias"], "relu", None)),
    ("mlp", {"hidden": [32, 5], "bias": False}, lambda b, h: amortised.mlp(b, M, N, [32, 5], False, "relu", None)),
    (
        "mlp",
        {"hidden": [9], "activation": "topk", "k": 4, "sparse_output": True},
        lambda b, h: amortised.mlp(b, M, N, [9], True, "topk", 4),
    ),
]

TRAIN = {
    "relu": lambda b, e, g: amortised.relu_training(b, M, N, e.has_bias, g, e.sparse_output),
    "topk": lambda b, e, g: (amortised.topk_training_fused if e.fused_backward else amortised.topk_training)(
        b, M, N, e.k, e.has_bias, g
    ),
    "batch_topk": lambda b, e, g: amortised.batch_topk_training(b, M, N, e.k, e.has_bias, g),
    "jumprelu": lambda b, e, g: amortised.jumprelu_training(b, M, N, e.has_bias, g),
    "mlp": lambda b, e, g: amortised.mlp_training(b, M, N, e.hidden, e.has_bias, e.activation, e.k, g),
}


def counted(fn) -> int:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(("name", "hparams", "formula"), FLOP_CASES)
def test_inference_flops_match_counter(name: str, hparams: dict, formula, dictionary: Dictionary) -> None:  # type: ignore[no-untyped-def]
    enc = make(name, **hparams)
    hp = {"bias": True, **hparams}
    for batch in (1, 7, 33):
        xb = torch.randn(batch, M, dtype=torch.float64)
        flops = formula(batch, hp)
        with torch.no_grad():
            assert counted(lambda xb=xb: enc(xb, dictionary)) == flops.matmul
        assert enc.inference_flops(batch, M, N) == flops.total
        assert flops.elementwise > 0


@pytest.mark.parametrize(("name", "hparams", "formula"), FLOP_CASES)
@pytest.mark.parametrize("input_grad", [False, True])
def test_training_flops_match_counter(name: str, hparams: dict, formula, input_grad: bool) -> None:  # type: ignore[no-untyped-def]
    enc = make(name, **hparams)
    atoms = Dictionary.random(N, M, seed=1, dtype=torch.float64).atoms.detach()
    # a learned dictionary bias subtracted from x makes the encoder's input need a gradient
    dic = Dictionary(atoms, bias=torch.full((M,), 0.1, dtype=torch.float64) if input_grad else None)
    dic.atoms.requires_grad_(False)
    subtracts = enc.subtract_bias
    for batch in (1, 7):
        xb = torch.randn(batch, M, dtype=torch.float64)

        def step(xb: torch.Tensor = xb) -> None:
            codes = enc(xb, dic)
            loss = as_dense(codes).pow(2).sum()  # no matrix product outside the encoder
            penalty = enc.sparsity_penalty(codes) if isinstance(codes, torch.Tensor) else None
            (loss if penalty is None else loss + penalty).backward()

        flops = TRAIN[name](batch, enc, input_grad and subtracts)
        assert counted(step) == flops.matmul
        assert enc.training_flops(batch, M, N, input_grad=input_grad and subtracts) == flops.total
        assert flops.elementwise > 0
        enc.zero_grad()


def test_training_flops_without_input_gradient_are_smaller() -> None:
    with_grad = amortised.relu_training(7, M, N, True, input_grad=True)
    without = amortised.relu_training(7, M, N, True)
    assert with_grad.matmul - without.matmul == 2 * 7 * N * M


def test_flops_hand_counts() -> None:
    # relu, batch 2, dim 3, 4 latents, bias: 2*2*3*4 matmul, + 8 bias adds + 8 ReLUs
    assert amortised.relu(2, 3, 4, True) == (48, 16)
    # training: forward 48 + 16, backward weight grad 48 (no input grad), bias grad 8, ReLU mask 8
    assert amortised.relu_training(2, 3, 4, True) == (96, 32)
    # mlp 3 -> 5 -> 4 without bias: forward 2*2*3*5 + 2*2*5*4 = 140, hidden ReLU 10, output ReLU 8
    assert amortised.mlp(2, 3, 4, [5], False, "relu", None) == (140, 18)
    # backward: layer 2 weights + input (80 + 80), layer 1 weights only (60); masks 8 + 10
    assert amortised.mlp_training(2, 3, 4, [5], False, "relu", None) == (140 + 220, 18 + 18)
    assert math.isclose(amortised.topk(2, 3, 4, 1, False).elementwise, 2 * 4 + 2 * 1)
