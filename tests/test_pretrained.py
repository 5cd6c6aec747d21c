"""Refining a pretrained SAE's codes: matched L0, FVU no worse than the SAE's own on its support, the registered
`ito` encoder, calibration cost, downstream loss through a tiny random Llama, and the CLI path."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from sparseinfer import Dictionary, SparseInferError, create
from sparseinfer.cli import app
from sparseinfer.cli.tables import refine_table
from sparseinfer.evaluation.refine import DownstreamResult, build_method, refine, run_refine, score
from sparseinfer.io import load_sae, save_saelens, save_sparsify

N, M, K = 24, 10, 3
FAST = {"bisection_steps": 6, "calibration": 64}
ITO = {"max_iter": 40}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae")
    torch.manual_seed(0)
    dictionary = Dictionary.random(N, M, seed=0, bias=True)
    encoder = create("topk", dim=M, n_latents=N, k=K)
    with torch.no_grad():  # a rough encoder: the transposed dictionary plus noise
        encoder.linear.weight.copy_(dictionary.atoms + 0.3 * torch.randn(N, M))
    save_sparsify(encoder, dictionary, folder / "sparsify")
    save_saelens(encoder, dictionary, folder / "saelens")
    return folder


def _signals(n: int = 200) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    truth = Dictionary.random(N, M, seed=0)
    codes = torch.zeros(n, N).scatter(
        1, torch.randint(0, N, (n, K), generator=gen), torch.rand(n, K, generator=gen) + 0.5
    )
    return codes @ truth.atoms.detach()


def test_refiners_match_l0_and_improve_fvu(sae_folder) -> None:
    x = _signals(64)
    sae = load_sae(sae_folder / "sparsify")
    rows = {m: refine(sae, x, m, ITO if m == "ito" else None, **FAST)[1] for m in ("sae", "support-refit", "ito")}
    rows |= {m: refine(sae, x, m, **FAST)[1] for m in ("omp", "fista")}
    own = rows["sae"]
    assert 1 < own.l0 <= K
    refit = rows["support-refit"]
    assert refit.l0 <= own.l0 and refit.fvu <= own.fvu + 1e-9  # least squares on the same support
    assert rows["omp"].l0 <= round(own.l0)
    assert abs(rows["fista"].l0 - own.l0) <= 0.5  # bisection matched the mean L0
    assert abs(rows["ito"].l0 - own.l0) <= 0.5
    for name in ("support-refit", "ito", "omp", "fista"):
        assert rows[name].fvu < 0.5 * own.fvu and rows[name].extra_flops > 0, name


def test_support_refit_is_exact_nnls_on_support(sae_folder) -> None:
    """Reference: scipy's NNLS per sample on the SAE's own support."""
    from scipy.optimize import nnls

    x = _signals(20).double()
    sae = load_sae(sae_folder / "saelens")
    sae.encoder.double(), sae.dictionary.double()
    own = sae.encode(x)
    codes, _ = refine(sae, x, "support-refit")
    atoms, centred = sae.dictionary.atoms.detach().numpy(), sae.dictionary.centre(x).detach().numpy()
    for i in range(x.shape[0]):
        support = own[i].nonzero().flatten().numpy()
        ref, _ = nnls(atoms[support].T, centred[i])
        obj = np.sum((centred[i] - codes[i].numpy() @ atoms) ** 2)
        assert obj <= np.sum((centred[i] - ref @ atoms[support]) ** 2) + 1e-9
        assert set(codes[i].nonzero().flatten().tolist()) <= set(support.tolist())


def test_ito_is_the_registered_encoder_warm_started(sae_folder) -> None:
    """`ito` = sparseinfer.create('ito') around the SAE's encoder: same codes and FLOPs as building it by hand."""
    x = _signals(32)
    sae = load_sae(sae_folder / "saelens")
    refined = build_method(sae, x, "ito", {**ITO, "penalty": 0.2})
    codes, row = score(refined, x)
    lam = 0.2 * 2 * N / M  # the gradient encoder's (batch-mean) penalty for a Lasso lambda of 0.2
    hp = {"parameterisation": "relu", "lr": 0.05, "max_iter": 40, "debias": True, "penalty": lam}
    ito = create("ito", dim=M, n_latents=N, init=sae.encoder, refiner="gradient", refiner_kwargs=hp)
    torch.testing.assert_close(codes, ito(x, sae.dictionary))
    assert row.flops == ito.inference_flops(32, M, N)
    assert row.extra_flops == row.flops - sae.encoder.inference_flops(32, M, N) > 0
    assert row.calibration_flops == 0  # the penalty was given, no bisection ran


def test_calibration_cost_is_counted(sae_folder) -> None:
    """Every bisection trial is counted: at least `steps` runs of the solver on the calibration slice."""
    x = _signals(64)
    sae = load_sae(sae_folder / "saelens")
    refined = build_method(sae, x, "fista", bisection_steps=5, calibration=32)
    one_iteration = create("fista", nonneg=True, max_iter=1).inference_flops(32, M, N)
    assert refined.calibration_samples == 32
    assert refined.calibration_flops >= 5 * one_iteration + sae.encoder.inference_flops(32, M, N)
    assert build_method(sae, x, "support-refit").calibration_flops == 0


def test_bad_refiner_and_inputs(sae_folder) -> None:
    sae = load_sae(sae_folder / "saelens")
    with pytest.raises(SparseInferError, match="unknown refiner"):
        refine(sae, _signals(5), "nope")
    with pytest.raises(SparseInferError, match="bisection_steps"):
        refine(sae, _signals(5), "fista", bisection_steps=0)
    with pytest.raises(SparseInferError, match="--signals"):
        run_refine(sae_folder / "saelens", None, "fista")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """The tiny Llama (width 16), briefly trained on a 20-document JSONL corpus (2 test documents) so that clean CE
    is below the zero-ablated one (loss recovered is then defined), plus a relu SAE at its width."""
    pytest.importorskip("transformers")
    from sparseinfer.lm import iter_documents, load_model, tokenise_contexts
    from sparseinfer.lm.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("lm")
    build_tiny_model(root / "model", hidden=16, layers=2)
    words = "the quick brown fox jumps over the lazy dog a stitch in time saves nine".split()
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": " ".join(rng.choice(words, 60))}) for _ in range(20)]
    (root / "docs.jsonl").write_text("\n".join(lines))
    model, tokenizer = load_model(str(root / "model"))
    ids = torch.stack(list(tokenise_contexts(iter_documents(str(root / "docs.jsonl")), tokenizer, 12)))
    model.requires_grad_(True).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(40):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    model.eval().save_pretrained(root / "model")
    dictionary = Dictionary.random(48, 16, seed=2, bias=True)
    encoder = create("relu", dim=16, n_latents=48)
    with torch.no_grad():
        encoder.linear.weight.copy_(dictionary.atoms)
        encoder.linear.bias.fill_(-0.3)
    save_saelens(encoder, dictionary, root / "sae")
    return root


def test_downstream_loss_through_tiny_llama(tiny_lm) -> None:
    """Reference CE: a hand-written hook replacing block 1's input (all positions but BOS) by the reconstruction."""
    from sparseinfer.evaluation.downstream import LMContext

    ctx = LMContext.load(str(tiny_lm / "model"), "resid_pre.1", str(tiny_lm / "docs.jsonl"), 3, 12, dim=16)
    sae = load_sae(tiny_lm / "sae")
    x = ctx.activations()
    assert x.shape == (3 * 11, 16)
    rows = {}
    for m in ("sae", "support-refit"):
        refined = build_method(sae, x, m)
        rows[m] = DownstreamResult(**asdict(score(refined, x)[1]), **ctx.downstream(refined, sae.dictionary))

    def ce_with(replace) -> float:
        def hook(_module, args, kwargs):
            hidden = kwargs["hidden_states"] if not args else args[0]
            new = hidden.clone()
            new[:, 1:] = replace(hidden[:, 1:])
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        handle = ctx.model.model.layers[1].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = ctx.model(input_ids=ctx.token_ids).logits[:, :-1]
        finally:
            handle.remove()
        return float(
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ctx.token_ids[:, 1:].flatten())
        )

    own = rows["sae"]
    assert own.ce == pytest.approx(ce_with(lambda h: sae.reconstruct(h.reshape(-1, 16)).reshape(h.shape)), rel=1e-5)
    assert own.ce_zero == pytest.approx(ce_with(torch.zeros_like), rel=1e-5)
    assert own.ce_clean == pytest.approx(ce_with(lambda h: h), rel=1e-5)
    for r in rows.values():
        assert r.loss_recovered == pytest.approx((r.ce_zero - r.ce) / (r.ce_zero - r.ce_clean))
        assert r.kl > 0 and r.ce_clean == own.ce_clean
    assert rows["support-refit"].fvu < own.fvu and rows["support-refit"].kl < own.kl

    rows, title = run_refine(
        tiny_lm / "sae", None, "support-refit", model=str(tiny_lm / "model"), hook="resid_pre.1",
        text=str(tiny_lm / "docs.jsonl"), contexts=3, context_length=12,
    )  # fmt: skip
    headers = [c.header for c in refine_table(rows, title).columns]
    assert {"ce", "loss_recovered", "kl"} <= set(headers)
    with pytest.raises(SparseInferError, match="width 16"):
        LMContext.load(str(tiny_lm / "model"), "resid_pre.1", str(tiny_lm / "docs.jsonl"), 1, 12, dim=10)


def test_cli_infer_with_sae(sae_folder, tmp_path) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    save_file({"x": _signals(50)}, str(tmp_path / "acts.safetensors"))
    args = ["infer", "--sae", str(sae_folder / "saelens"), "--signals", str(tmp_path / "acts.safetensors")]
    result = CliRunner().invoke(app, [*args, "--encoder", "support-refit"])
    assert result.exit_code == 0, result.output
    assert "support-refit" in result.output and "FVU" in result.output
    bad = CliRunner().invoke(app, [*args, "--encoder", "relu"])
    assert isinstance(bad.exception, SparseInferError)


def test_infer_model_uses_the_saes_own_hook(tiny_lm, tmp_path) -> None:
    """`infer --sae --model` without --hook takes the SAE's hook_name (a SAELens name here), which equals giving our
    alias; unexpressible SAELens hooks are refused. A native SAE with an input scale splices decode(enc(s x)) / s."""
    from sparseinfer.io import save_sae

    sae = load_sae(tiny_lm / "sae")
    common = dict(model=str(tiny_lm / "model"), text=str(tiny_lm / "docs.jsonl"), contexts=2, context_length=12)
    save_saelens(sae, tmp_path / "hooked", metadata={"hook_name": "blocks.1.hook_resid_pre"})
    own, _ = run_refine(tmp_path / "hooked", None, "support-refit", **common)
    alias, _ = run_refine(tiny_lm / "sae", None, "support-refit", hook="resid_pre.1", **common)
    named, _ = run_refine(tiny_lm / "sae", None, "support-refit", hook="blocks.1.hook_resid_pre", **common)
    assert [asdict(r) for r in own] == [asdict(r) for r in alias] == [asdict(r) for r in named]
    with pytest.raises(SparseInferError, match="has no hook point here"):
        run_refine(tiny_lm / "sae", None, "support-refit", hook="blocks.1.attn.hook_z", **common)
    scaled = save_sae(sae.encoder, sae.dictionary, tmp_path / "scaled", input_scale=3.0,
                      provenance={"hook_name": "model.layers.1:input"})  # fmt: skip
    rows, _ = run_refine(scaled, None, "support-refit", **common)
    loaded = load_sae(scaled)
    from sparseinfer.evaluation.downstream import LMContext

    ctx = LMContext.load(common["model"], "resid_pre.1", common["text"], 2, 12, dim=16)
    x = ctx.activations()
    assert rows[0].fvu == pytest.approx(float(((x - loaded.reconstruct(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()))
    assert rows[0].fvu != pytest.approx(alias[0].fvu)  # the scale changed what the SAE sees
