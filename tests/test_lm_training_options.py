"""Training on activations through the one `fit` loop: streaming data, schedule and hooks, bias inits (against
numpy/scipy), the study's loss and AuxK (against float64 references and torch's FLOP counter), presets, and the
matched-L0 comparison."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from _stores import clustered_store
from scipy.optimize import minimize
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

import sparseinfer as si
from sparseinfer.cli import app
from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.errors import SparseInferError
from sparseinfer.evaluation.matched import matched_l0
from sparseinfer.training import TrainConfig, fit, get_regime
from sparseinfer.training.activations import LMTrainConfig, load_run, resolve, train_from_store
from sparseinfer.training.activations.centre import centre_of, geometric_median
from sparseinfer.training.activations.initialise import build
from sparseinfer.training.activations.losses import AuxK, auxk_flops, study_loss
from sparseinfer.training.fit import FitHooks

DIM = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small store of random 'activations' (a few clusters plus noise); no model needed to train on it."""
    return clustered_store(tmp_path_factory.mktemp("store"), DIM, clusters=6, scale=3.0, noise=0.3, offset=2.0)


def test_fit_on_a_stream_equals_fit_on_the_tensor():
    data = make_synthetic(n_latents=12, dim=6, k=2, n_train=64, n_test=8, seed=0)
    runs = []
    for source in (data.train_x, (data.train_x for _ in range(1000))):
        dico = si.Dictionary.random(12, 6, seed=1, bias=True)
        torch.manual_seed(0)
        enc = si.create("relu", dim=6, n_latents=12)
        history = fit(enc, dico, source, get_regime("learn_both"), TrainConfig(steps=30, eval_every=10), seed=3)
        runs.append((history, dico.atoms.detach().clone()))
    assert runs[0][0][1:] == runs[1][0][1:] and len(runs[0][0]) == 4  # row 0's loss is NaN
    assert torch.equal(runs[0][1], runs[1][1])
    with pytest.raises(SparseInferError, match="ran out at step 3"):
        fit(enc, dico, iter([data.train_x] * 2), get_regime("learn_both"), TrainConfig(steps=5))


def test_fit_schedule_and_hooks_are_called_in_order():
    data = make_synthetic(n_latents=12, dim=6, k=2, n_train=64, n_test=8, seed=0)
    dico = si.Dictionary.random(12, 6, seed=1)
    enc = si.create("relu", dim=6, n_latents=12)
    calls: list[tuple] = []
    seen_lr: list[float] = []

    def schedule(step):
        calls.append(("schedule", step))
        return 0.5**step, 0.0

    def after_backward(d):
        seen_lr.append(opt.param_groups[0]["lr"])
        calls.append(("backward", d.atoms.grad is not None))

    def after_step(state, x, codes, x_hat):
        calls.append(("step", state.step, state.history[-1]["step"]))

    opt = torch.optim.Adam([*enc.parameters(), dico.atoms], lr=0.1)
    hooks = FitHooks(after_backward=after_backward, after_step=after_step, extra_flops=lambda: 1000)
    plain = fit(si.create("relu", dim=6, n_latents=12), si.Dictionary.random(12, 6, seed=1), data.train_x,
                get_regime("learn_both"), TrainConfig(steps=2, eval_every=1))  # fmt: skip
    history = fit(enc, dico, data.train_x, get_regime("learn_both"), TrainConfig(steps=2, lr=0.1, eval_every=1),
                  schedule=schedule, hooks=hooks, optimiser=opt)  # fmt: skip
    assert calls == [("schedule", 1), ("backward", True), ("step", 1, 1), ("schedule", 2), ("backward", True),
                     ("step", 2, 2)]  # fmt: skip
    assert seen_lr == pytest.approx([0.05, 0.025])
    assert [r["train_flops"] - p["train_flops"] for r, p in zip(history, plain, strict=True)] == [0, 1000, 2000]


def test_geometric_and_coordinate_median_against_scipy_numpy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(301, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 0.5, 1]) + 1
    x[:20] += 40  # outliers pull the mean, barely the medians
    gm = geometric_median(x, tol=1e-12, max_iter=2000)
    objective = lambda c: np.linalg.norm(x.numpy() - c, axis=1).sum()  # noqa: E731
    ref = minimize(objective, x.mean(0).numpy(), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12,
                                                                                 "maxiter": 20000}).x  # fmt: skip
    assert objective(gm.numpy()) <= objective(ref) + 1e-8
    assert np.abs(gm.numpy() - ref).max() < 1e-4
    assert torch.allclose(centre_of(x, "median"), torch.from_numpy(np.median(x.numpy(), axis=0)))
    assert torch.equal(centre_of(x, "mean"), x.mean(0)) and not centre_of(x, "zero").any()
    with pytest.raises(SparseInferError, match="bias init must be one of"):
        centre_of(x, "mode")
    with pytest.raises(SparseInferError, match="shape"):
        centre_of(x[:0], "median")
    sample = x.float()
    _, dico = build(LMTrainConfig(expansion=1, bias_init="geometric_median"), 5, sample)
    torch.testing.assert_close(dico.bias.detach(), geometric_median(sample))


def test_study_loss_against_float64_formula():
    gen = torch.Generator().manual_seed(1)
    x, x_hat, s = (
        torch.randn(20, 7, generator=gen),
        torch.randn(20, 7, generator=gen),
        torch.rand(20, 30, generator=gen),
    )
    got = study_loss(x, s, x_hat, 1e-2)
    xd = x.double().numpy()
    ref = ((xd - x_hat.double().numpy()) ** 2).mean() / xd.var(axis=0).mean() + 1e-2 * s.double().abs().mean().item()
    assert abs(got.item() - ref) < 1e-6 * ref


def _auxk_setup(dead_idx, batch=13, k_aux=3):
    gen = torch.Generator().manual_seed(2)
    n = 24
    enc = si.create("topk", dim=8, n_latents=n, k=2)
    dico = si.Dictionary.random(n, 8, seed=3, bias=True)
    x = torch.randn(batch, 8, generator=gen)
    dead = torch.zeros(n, dtype=torch.bool)
    dead[dead_idx] = True
    return enc, dico, x, dead, AuxK(enc, k_aux, coef=0.5)


def test_auxk_loss_against_a_slow_reference_and_gives_dead_latents_gradient():
    enc, dico, x, dead, aux = _auxk_setup([1, 4, 5, 9, 20])
    codes = enc(x, dico)
    x_hat = dico.decode(codes)
    loss = aux.loss(x, x_hat, dico, dead)
    pre = enc.pre_activation(x, dico).detach().double()
    e = (x - x_hat).detach().double()
    atoms = dico.atoms.detach().double()
    ref = 0.0
    for b in range(x.shape[0]):
        cand = sorted([j for j in range(24) if dead[j]], key=lambda j: -pre[b, j].item())[:3]
        e_hat = sum(max(pre[b, j].item(), 0.0) * atoms[j] for j in cand)
        ref += float(((e[b] - e_hat) ** 2).sum())
    ref = 0.5 * ref / e.numel()
    assert abs(loss.item() - ref) < 1e-5 * ref and aux.last_k == 3
    loss.backward()
    grad_rows = enc.linear.weight.grad.abs().sum(1) > 0
    assert grad_rows[dead].any() and not grad_rows[~dead].any()  # only dead latents learn from AuxK
    enc2, _, _, none_dead, aux2 = _auxk_setup([])
    enc2(x, dico)
    assert aux2.loss(x, x_hat, dico, none_dead) is None and aux2.last_k == 0
    aux.close()
    aux2.close()
    with pytest.raises(SparseInferError, match="linear pre-activation"):
        AuxK(si.create("fista", dim=8, n_latents=24), 3)


@pytest.mark.parametrize(("dead_idx", "k_aux"), [([1, 4, 5, 9, 20], 3), ([7], 4), (list(range(10)), 10)])
def test_auxk_flops_matmul_part_matches_torch_counter(dead_idx, k_aux):
    enc, dico, x, dead, aux = _auxk_setup(dead_idx, k_aux=k_aux)
    codes = enc(x, dico)
    x_hat = dico.decode(codes)
    aux._pre = aux._pre.detach().requires_grad_()  # the encoder's own backward is counted by the encoder
    with FlopCounterMode(display=False) as counter:
        aux.loss(x, x_hat, dico, dead).backward()
    assert counter.get_total_flops() == auxk_flops(13, 8, 24, aux.last_k).matmul
    assert auxk_flops(13, 8, 24, 0).total == 0
    aux.close()


def test_presets_resolve_for_the_width_and_options_override():
    sae = resolve(LMTrainConfig(preset="study-sae"), 32)
    assert (sae.encoder, sae.expansion, sae.loss, sae.dead_latents) == ("relu", 22, "study", "resample")
    assert sae.l1 == pytest.approx(1e-4 * 22 * 32)  # 1e-4 on the mean over tokens of ||s||_1, per element
    mlp = resolve(LMTrainConfig(preset="study-mlp", steps=7), 768)
    assert mlp.hparams == {"hidden": [4224]} and mlp.steps == 7 and resolve(mlp, 768) == mlp
    assert resolve(LMTrainConfig(preset="study-mlp"), 32).hparams == {"hidden": [176]}
    lca = resolve(LMTrainConfig(preset="study-lca", l1=0.5), 32)
    assert lca.encoder == "lca" and lca.l1 == 0.5 and lca.hparams["penalty"] == pytest.approx(1e-4 * 32 / 2)
    assert resolve(LMTrainConfig(preset="study-sparse-coding"), 32).hparams["max_iter"] == 100
    with pytest.raises(SparseInferError, match="unknown preset"):
        resolve(LMTrainConfig(preset="study-xyz"), 32)


@pytest.mark.parametrize("preset", ["study-sae", "study-mlp", "study-sparse-coding", "study-lca"])
def test_every_preset_trains_on_a_store(store, tmp_path, preset):
    cfg = LMTrainConfig(preset=preset, steps=3, batch_size=32, eval_every=3, warmup_steps=0)
    info = train_from_store(cfg, store, tmp_path / preset, progress=False)
    assert info["n_latents"] == 22 * DIM and info["config"]["preset"] == preset
    last = info["history"][-1]
    assert last["step"] == 3 and math.isfinite(last["fvu"]) and info["train_flops"] > 0
    _, dictionary, _ = load_run(tmp_path / preset)
    torch.testing.assert_close(dictionary.atoms.norm(dim=1), torch.ones(22 * DIM))


def test_auxk_training_runs_and_counts_its_flops(store, tmp_path):
    base = dict(encoder="topk", hparams={"k": 2}, expansion=4, steps=30, batch_size=64, lr=3e-3, eval_every=10,
                dead_tokens=64, warmup_steps=0)  # fmt: skip
    aux = train_from_store(LMTrainConfig(**base, dead_latents="auxk", auxk_k=8), store, tmp_path / "a", progress=False)
    none = train_from_store(LMTrainConfig(**base, dead_latents="none"), store, tmp_path / "n", progress=False)
    assert aux["history"][-1]["dead_fraction"] > 0 and math.isfinite(aux["history"][-1]["fvu"])
    assert aux["train_flops"] > none["train_flops"]  # the AuxK terms are counted


def test_matched_l0_interpolates_in_log_l0_and_falls_back_to_nearest():
    table = pd.DataFrame(
        {"encoder": ["a", "a", "b"], "l0": [4.0, 16.0, 10.0], "fvu": [0.4, 0.2, 0.25], "ce": [3.0, 2.0, 2.5]}
    )
    got = matched_l0(table, targets=[8.0, 16.0])
    a8 = got[(got.target_l0 == 8.0) & (got.encoder == "a")].iloc[0]
    assert a8["how"] == "interpolated" and a8["fvu"] == pytest.approx(0.3) and a8["ce"] == pytest.approx(2.5)
    b16 = got[(got.target_l0 == 16.0) & (got.encoder == "b")].iloc[0]
    assert b16["how"] == "nearest" and b16["l0"] == 10.0 and b16["fvu"] == 0.25
    assert got[(got.target_l0 == 16.0) & (got.encoder == "a")].iloc[0]["how"] == "exact"
    assert list(got["target_l0"]) == [8.0, 8.0, 16.0, 16.0] and list(got["encoder"][:2]) == ["b", "a"]  # by FVU
    assert sorted(set(matched_l0(table)["target_l0"])) == [4.0, 10.0, 16.0]


def test_cli_train_preset_and_bad_options(store, tmp_path):
    runner = CliRunner()
    args = ["train", str(tmp_path / "r"), "--store", str(store), "--preset", "study-sae", "--steps", "2",
            "--batch-size", "16", "--expansion", "2", "--dead-latents", "auxk", "--bias-init", "median"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    cfg = load_run(tmp_path / "r")[2]["config"]
    assert (cfg["loss"], cfg["expansion"], cfg["dead_latents"], cfg["bias_init"]) == ("study", 2, "auxk", "median")
    r = runner.invoke(app, ["train", str(tmp_path / "q"), "--store", str(store), "--dead-latents", "revive"])
    assert r.exit_code != 0 and "dead_latents" in str(r.exception or r.output)


def test_l0_controller_step_moves_the_log_weight_towards_the_target():
    from sparseinfer.training.activations.lm_config import l0_controller_step

    assert l0_controller_step(0.0, 16.0, 16.0, 0.05) == 0.0
    assert l0_controller_step(0.0, 32.0, 16.0, 0.05) == pytest.approx(0.05 * math.log(2))  # too dense: raise
    assert l0_controller_step(0.0, 1.0, 16.0, 0.05) == pytest.approx(-0.05)  # too sparse: lower, capped at 1
    assert l0_controller_step(0.0, 0.0, 16.0, 0.05) == pytest.approx(-0.05)


def test_target_l0_steers_the_l1_weight_and_is_inert_when_frozen(tmp_path):
    store = clustered_store(tmp_path / "s", DIM, clusters=64, scale=1.0, noise=1.0, offset=2.0, shards=8)
    common = dict(encoder="relu", expansion=8, steps=300, batch_size=64, eval_every=25, warmup_steps=10)
    runs = {}
    for target in (8, 24):
        cfg = LMTrainConfig(**common, l1_warmup_steps=20, target_l0=target, target_l0_rate=0.01)
        runs[target] = train_from_store(cfg, store, tmp_path / f"t{target}", progress=False, resume=False)
    assert runs[24]["l1_final"] < runs[8]["l1_final"]  # a denser target ends at a smaller weight
    last = {t: np.mean([r["l0"] for r in info["history"][-4:]]) for t, info in runs.items()}
    assert last[8] < last[24]
    # frozen (the decay starts before the L1 warm-up ends, so it never adapts): the same run as without a target
    frozen = {**common, "decay_fraction": 0.7, "l1_warmup_steps": 100}
    plain = train_from_store(LMTrainConfig(**frozen), store, tmp_path / "p", progress=False, resume=False)
    inert = LMTrainConfig(**frozen, target_l0=8)
    same = train_from_store(inert, store, tmp_path / "f", progress=False, resume=False)
    assert plain["l1_final"] == plain["l1"] and all(r["l1_scale"] == 1.0 for r in plain["history"])
    assert [r["loss"] for r in same["history"]] == [r["loss"] for r in plain["history"]]
    with pytest.raises(SparseInferError, match="fixes its L0 by k"):
        cfg = LMTrainConfig(encoder="topk", hparams={"k": 4}, steps=5, batch_size=64, target_l0=8)
        train_from_store(cfg, store, tmp_path / "k", progress=False, resume=False)
