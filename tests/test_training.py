"""The training loop: regimes, losses, FLOP accumulation (checked against torch's counter) and learning."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import sparseinfer as si
from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.flops import amortised
from sparseinfer.flops import training as step_flops
from sparseinfer.training import TrainConfig, code_table_for, evaluate_synthetic, fit, get_regime
from sparseinfer.training.accounting import training_step_flops
from sparseinfer.training.regimes import cosine_loss


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_latents=16, dim=8, k=3, n_train=256, n_test=256, seed=0)


def test_cosine_loss_known_values():
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert cosine_loss(true, true).item() == pytest.approx(-1.0)
    assert cosine_loss(true, 3.0 * true).item() == pytest.approx(-1.0)
    swapped = true[:, [1, 0]]
    # column 0 = (1, 0, 1), column 1 = (0, 1, 1): cosine 1/2 for both
    assert cosine_loss(true, swapped).item() == pytest.approx(-0.5)


def test_unknown_regime_lists_known():
    with pytest.raises(si.SparseInferError, match="known_codes"):
        get_regime("supervised")
    assert get_regime("learn-both").learn_dictionary


def _one_step_counted(encoder, dictionary, x, regime, true_codes=None, l1=0.01):
    params = [p for p in encoder.parameters()] + ([dictionary.atoms] if regime.learn_dictionary else [])
    dictionary.atoms.requires_grad_(regime.learn_dictionary)
    with FlopCounterMode(display=False) as counter:
        codes = encoder(x, dictionary)
        x_hat = None if regime.supervised else dictionary.decode(codes)
        loss = regime.loss(x, codes, x_hat, l1, true_codes=true_codes)
        loss.backward()
    return counter.get_total_flops(), sum(p.numel() for p in params)


@pytest.mark.parametrize("setting", ["known_codes", "known_dictionary", "learn_both"])
def test_step_flops_matmul_part_matches_torch_counter(data, setting):
    regime = get_regime(setting)
    dico = si.Dictionary.random(16, 8, seed=1)
    enc = si.create("relu", dim=8, n_latents=16, bias=False)
    counted, n_params = _one_step_counted(enc, dico, data.train_x, regime, data.train_codes)
    batch = data.train_x.shape[0]
    ours = amortised.relu_training(batch, 8, 16, bias=False).matmul
    if not regime.supervised:
        ours += step_flops.decoder_step(batch, 16, 8, regime.learn_dictionary, True).matmul
    assert counted == ours
    total = training_step_flops(enc, dico, batch, regime, n_params, learn_encoder=True)
    assert total > ours  # elementwise work (activations, losses, Adam) is added on top


def test_fit_accumulates_exactly_the_accounting(data):
    regime = get_regime("learn_both")
    dico = si.Dictionary.random(16, 8, seed=1)
    enc = si.create("relu", dim=8, n_latents=16, bias=False)
    n_params = sum(p.numel() for p in enc.parameters()) + dico.atoms.numel()
    history = fit(enc, dico, data.train_x, regime, TrainConfig(steps=30, eval_every=10))
    per_step = training_step_flops(enc, dico, data.train_x.shape[0], regime, n_params, learn_encoder=True)
    assert [row["step"] for row in history] == [0, 10, 20, 30]
    assert history[-1]["train_flops"] == 30 * per_step
    assert torch.allclose(dico.atoms.norm(dim=1), torch.ones(16), atol=1e-5)  # renormalised every step


def test_minibatches_count_their_own_size(data):
    regime = get_regime("known_dictionary")
    dico = si.Dictionary.from_tensor(data.dictionary.atoms.detach().clone())
    enc = si.create("relu", dim=8, n_latents=16, bias=False)
    history = fit(enc, dico, data.train_x, regime, TrainConfig(steps=8, eval_every=8, batch_size=64))
    n_params = sum(p.numel() for p in enc.parameters())
    assert history[-1]["train_flops"] == 8 * training_step_flops(enc, dico, 64, regime, n_params, True)
    assert not dico.atoms.requires_grad  # the known dictionary stays frozen


def test_known_dictionary_training_improves_recovery(data):
    regime = get_regime("known_dictionary")
    dico = si.Dictionary.from_tensor(data.dictionary.atoms.detach().clone())
    torch.manual_seed(0)
    enc = si.create("relu", dim=8, n_latents=16, bias=False)
    before = evaluate_synthetic(enc, dico, data, regime)["latent_mcc"]
    history = fit(
        enc,
        dico,
        data.train_x,
        regime,
        TrainConfig(steps=600, lr=1e-2, eval_every=200),
        evaluate=lambda: evaluate_synthetic(enc, dico, data, regime),
    )
    after = history[-1]["latent_mcc"]
    assert after > before + 0.1
    assert history[-1]["loss"] < history[1]["loss"]
    assert torch.equal(dico.atoms, data.dictionary.atoms)


def test_supervised_training_reaches_high_unmatched_mcc(data):
    regime = get_regime("known_codes")
    dico = si.Dictionary.from_tensor(data.dictionary.atoms.detach().clone())
    enc = si.create("mlp", dim=8, n_latents=16, hidden=[64])
    history = fit(
        enc,
        dico,
        data.train_x,
        regime,
        TrainConfig(steps=400, lr=1e-2, eval_every=400),
        train_codes=data.train_codes,
        evaluate=lambda: evaluate_synthetic(enc, dico, data, regime),
    )
    assert history[-1]["latent_mcc"] > 0.8
    assert math.isnan(history[-1]["dict_mcc"])


def test_supervised_needs_codes(data):
    enc = si.create("relu", dim=8, n_latents=16)
    with pytest.raises(si.SparseInferError, match="true codes"):
        fit(enc, data.dictionary, data.train_x, get_regime("known_codes"), TrainConfig(steps=1))


def test_iterative_encoder_learn_both_is_dictionary_learning(data):
    regime = get_regime("learn_both")
    dico = si.Dictionary.random(16, 8, seed=3)
    start = dico.atoms.detach().clone()
    enc = si.create("fista", penalty=0.01, nonneg=True, max_iter=50)
    history = fit(enc, dico, data.train_x, regime, TrainConfig(steps=20, lr=1e-2, eval_every=10))
    assert not torch.allclose(start, dico.atoms)
    assert history[-1]["train_flops"] > 0


def test_code_table_is_sparse_coding(data):
    regime = get_regime("learn_both")
    dico = si.Dictionary.random(16, 8, seed=3)
    table = code_table_for(data.train_x, dico)
    history = fit(table, dico, data.train_x, regime, TrainConfig(steps=200, lr=5e-2, eval_every=200))
    assert history[-1]["loss"] < 0.5 * float(data.train_x.pow(2).mean())
    assert (table(data.train_x, dico) > 0).all()
    with pytest.raises(si.SparseInferError, match="inference-time optimisation"):
        table(data.test_x[:5], dico)


@pytest.mark.parametrize("name", si.available())
def test_every_encoder_trains_one_step_with_exact_accounting(name, data):
    """Any registered encoder goes through the one loop in learn_both (iterative ones: dictionary learning)."""
    params = {"k": 3} if si.encoders.base.needs_k(name) else {}
    enc = si.create(name, dim=8, n_latents=16, **params)
    dico = si.Dictionary.random(16, 8, seed=2, bias=True)
    history = fit(enc, dico, data.train_x, get_regime("learn_both"), TrainConfig(steps=2, eval_every=1))
    assert history[-1]["train_flops"] > 0 and math.isfinite(history[-1]["loss"])
    if enc.trainable:
        assert enc.training_flops(4, 8, 16, input_grad=True) > enc.training_flops(4, 8, 16)
