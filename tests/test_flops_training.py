"""FLOPs of one training step (flops/training.py): each piece, and whole real steps of the study's settings, against
torch's FlopCounterMode (the matmul parts must be equal; elementwise parts are checked by hand counts)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import sparseinfer
from sparseinfer import Dictionary, SparseCodes
from sparseinfer.codes import as_dense
from sparseinfer.flops import Flops, amortised
from sparseinfer.flops import training as tf

N, M, B, LAMBDA = 16, 8, 11, 0.01


def counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return (x - x_hat).pow(2).mean()


def l1(codes: torch.Tensor) -> torch.Tensor:
    return LAMBDA * codes.abs().mean()


def cosine(true: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    dot = (true * codes).sum(0)
    return -(dot / (true.norm(dim=0) * codes.norm(dim=0)).clamp_min(1e-8)).mean()


def signals(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes with K = 3 active |Normal| entries per sample, and x = codes @ atoms of a fixed dictionary."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randn(B, N, generator=gen).abs()
    mask = torch.zeros(B, N).scatter_(1, torch.rand(B, N, generator=gen).argsort(1)[:, :3], 1.0)
    codes = codes * mask
    return codes, codes @ Dictionary.random(N, M, seed=seed).atoms.detach()


@pytest.mark.parametrize("learn_dictionary", [False, True])
@pytest.mark.parametrize("codes_grad", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("k", [None, 1, 4])
def test_decoder_step_matches_counter(learn_dictionary: bool, codes_grad: bool, bias: bool, k: int | None) -> None:
    dic = Dictionary.random(N, M, seed=0, bias=bias)
    dic.requires_grad_(learn_dictionary)
    gen = torch.Generator().manual_seed(1)
    if k is None:
        codes = torch.rand(B, N, generator=gen).requires_grad_(codes_grad)
    else:
        values = torch.rand(B, k, generator=gen).requires_grad_(codes_grad)
        codes = SparseCodes(values, torch.rand(B, N, generator=gen).argsort(1)[:, :k], N)

    def step() -> None:
        x_hat = dic.decode(codes)
        if x_hat.requires_grad:
            x_hat.pow(2).sum().backward()

    flops = tf.decoder_step(B, N, M, learn_dictionary, codes_grad, k=k, bias=bias)
    assert counted(step) == flops.matmul
    stored = N if k is None else k
    products = 2 * B * stored * M * (1 + learn_dictionary + codes_grad)
    assert flops.matmul == (products if k is None else 0)  # sparse codes decode as an embedding bag
    if k is not None:
        assert flops.elementwise == products + (B * M * (1 + learn_dictionary) if bias else 0)


def test_losses_optimiser_and_renormalise_have_no_matrix_products() -> None:
    true, x = signals()
    codes = torch.rand(B, N, requires_grad=True)
    x_hat = torch.rand(B, M, requires_grad=True)
    assert counted(lambda: mse(x, x_hat).backward()) == tf.reconstruction_loss(B, M).matmul == 0
    assert counted(lambda: l1(codes).backward()) == tf.l1_penalty(B, N).matmul == 0
    assert counted(lambda: cosine(true, codes).backward()) == tf.cosine_loss(B, N).matmul == 0
    opt = torch.optim.Adam([codes], lr=1e-3)
    assert counted(opt.step) == tf.adam_update(B * N).matmul == 0
    dic = Dictionary.random(N, M, seed=0)
    assert counted(dic.renormalise_) == tf.renormalise(N, M).matmul == 0


def test_elementwise_hand_counts() -> None:
    assert tf.reconstruction_loss(2, 3) == Flops(0, 7 * 6 + 1)
    assert tf.l1_penalty(2, 3) == Flops(0, 4 * 6 + 2)
    assert tf.cosine_loss(2, 3) == Flops(0, 10 * 6 + 30)
    assert tf.adam_update(5) == Flops(0, 65)
    assert tf.renormalise(4, 3) == Flops(0, 3 * 12 + 8)
    assert tf.decoder_step(2, 4, 3, True, True, bias=True) == Flops(3 * 2 * 2 * 4 * 3, 2 * 2 * 3)


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("name", "hparams", "encoder_flops"),
    [
        ("relu", {"bias": False}, lambda e, g: amortised.relu_training(B, M, N, False, g)),
        ("mlp", {"hidden": [32]}, lambda e, g: amortised.mlp_training(B, M, N, [32], True, "relu", None, g)),
        ("topk", {"k": 3, "sparse_output": True}, lambda e, g: amortised.topk_training_fused(B, M, N, 3, True, g)),
        ("topk", {"k": 3, "fused_backward": False}, lambda e, g: amortised.topk_training(B, M, N, 3, True, g)),
        ("jumprelu", {}, lambda e, g: amortised.jumprelu_training(B, M, N, True, g)),
    ],
)
@pytest.mark.parametrize("setting", ["known_dictionary", "learn_both", "learn_both_with_bias"])
def test_real_unsupervised_step_adds_up(name: str, hparams: dict, encoder_flops, setting: str) -> None:  # type: ignore[no-untyped-def]
    """Settings 2 and 3: encode, decode, MSE + sparsity, backward, Adam, renormalise (setting 3)."""
    torch.manual_seed(0)
    _, x = signals()
    learn = setting != "known_dictionary"
    bias = setting == "learn_both_with_bias"
    dic = Dictionary.random(N, M, seed=3, bias=bias)
    dic.requires_grad_(learn)
    enc = sparseinfer.create(name, dim=M, n_latents=N, **hparams)
    opt = torch.optim.Adam([p for m in (enc, dic) for p in m.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        codes = enc(x, dic)
        penalty = enc.sparsity_penalty(codes) if isinstance(codes, torch.Tensor) else None
        sparsity = penalty if penalty is not None else l1(as_dense(codes))
        (mse(x, dic.decode(codes)) + sparsity).backward()
        opt.step()
        if learn:
            dic.renormalise_()

    k = hparams["k"] if hparams.get("sparse_output") else None
    total = (
        encoder_flops(enc, bias)  # the learned decoder bias, subtracted from x, needs x's gradient
        + tf.decoder_step(B, N, M, learn_dictionary=learn, codes_grad=True, k=k, bias=bias)
        + tf.reconstruction_loss(B, M)
        + (Flops() if name == "jumprelu" else tf.l1_penalty(B, N))
        + tf.adam_update(n_params(enc, dic))
        + (tf.renormalise(N, M) if learn else Flops())
    )
    assert counted(step) == total.matmul
    assert enc.training_flops(B, M, N, input_grad=bias) == encoder_flops(enc, bias).total


@pytest.mark.parametrize("hidden", [[32], [256]])
def test_real_supervised_step_adds_up(hidden: list[int]) -> None:
    """Setting 1: the encoder predicts the true codes; cosine loss; no decoder."""
    torch.manual_seed(0)
    true, x = signals()
    dic = Dictionary.random(N, M, seed=3)
    enc = sparseinfer.create("mlp", dim=M, n_latents=N, hidden=hidden)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        cosine(true, enc(x, dic)).backward()
        opt.step()

    total = amortised.mlp_training(B, M, N, hidden, True, "relu", None) + tf.cosine_loss(B, N)
    total += tf.adam_update(n_params(enc))
    assert counted(step) == total.matmul


def test_dictionary_learning_step_with_fixed_codes_adds_up() -> None:
    """Classic dictionary learning (codes from a solver, no gradient) and sparse coding (free exp-codes)."""
    _, x = signals()
    dic = Dictionary.random(N, M, seed=3)
    solver_codes = torch.rand(B, N)
    log_codes = torch.full((B, N), -10.0, requires_grad=True)
    opt = torch.optim.Adam([*dic.parameters(), log_codes], lr=1e-3)

    def fixed_codes_step() -> None:
        opt.zero_grad()
        (mse(x, dic.decode(solver_codes)) + l1(solver_codes)).backward()
        opt.step()
        dic.renormalise_()

    def free_codes_step() -> None:
        opt.zero_grad()
        codes = log_codes.exp()
        (mse(x, dic.decode(codes)) + l1(codes)).backward()
        opt.step()
        dic.renormalise_()

    fixed = tf.decoder_step(B, N, M, learn_dictionary=True, codes_grad=False) + tf.renormalise(N, M)
    free = tf.decoder_step(B, N, M, learn_dictionary=True, codes_grad=True) + tf.renormalise(N, M)
    assert counted(fixed_codes_step) == fixed.matmul == 2 * B * N * M * 2
    assert counted(free_codes_step) == free.matmul == 2 * B * N * M * 3
