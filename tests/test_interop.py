"""SAE files both ways against the real libraries: SAELens (`SAE.load_from_disk`, `save_model`) and EleutherAI
sparsify (`SparseCoder.load_from_disk`, `save_to_disk`). Each test builds an SAE with random weights, non-unit
decoder norms and non-zero biases, and compares codes and reconstructions on the same inputs; exports of ours are
also checked with a non-unit input scale (folded into the exported weights). Round trips of trained runs are in
test_sae_format."""

from __future__ import annotations

import json

import pytest
import torch

from sparseinfer import Dictionary, SparseInferError, create
from sparseinfer.io import load_sae, load_saelens, load_sparsify, save_native, save_saelens, save_sparsify

saelens = pytest.importorskip("sae_lens")
sparsify = pytest.importorskip("sparsify")

D_IN, D_SAE, K = 12, 40, 5
TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(seed: int = 0, n: int = 64) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def _randomise(params: dict[str, torch.Tensor], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            if name == "W_dec":  # decoder rows with norms far from 1
                p.mul_(torch.rand(p.shape[0], 1, generator=gen) * 3 + 0.2)
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5)


def _saelens_sae(arch: str, apply_b_dec: bool = True, rescale: bool = False, seed: int = 0):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    common = dict(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec)
    if arch == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif arch == "topk":
        sae = TopKSAE(TopKSAEConfig(k=K, rescale_acts_by_decoder_norm=rescale, **common))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    _randomise(dict(sae.named_parameters()), seed)
    return sae.eval()


def _sparsify_sae(seed: int = 0):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K))
    params = dict(sae.named_parameters())
    _randomise({"W_dec" if n == "W_dec" else n: p for n, p in params.items()}, seed)
    return sae.eval()


def _sparsify_codes(sae, x: torch.Tensor) -> torch.Tensor:
    out = sae.encode(x)
    return torch.zeros(x.shape[0], D_SAE).scatter(1, out.top_indices, out.top_acts)


@pytest.mark.parametrize(
    ("arch", "apply_b_dec", "rescale"),
    [
        ("standard", True, False),
        ("standard", False, False),
        ("topk", True, False),
        ("topk", True, True),
        ("jumprelu", True, False),
        ("jumprelu", False, False),
    ],
)
def test_saelens_to_ours_same_outputs(tmp_path, arch: str, apply_b_dec: bool, rescale: bool) -> None:
    sae = _saelens_sae(arch, apply_b_dec, rescale)
    sae.save_model(tmp_path)
    loaded = load_saelens(tmp_path)
    x = _inputs()
    with torch.no_grad():
        theirs_codes, theirs_recon = sae.encode(x), sae.decode(sae.encode(x))
    assert (theirs_codes != 0).float().sum(1).mean() > 1  # a non-trivial test: codes are active
    # by default codes equal SAELens' own (no folding), and so do reconstructions
    assert not loaded.folded
    torch.testing.assert_close(loaded.encode(x), theirs_codes, **TOL)
    torch.testing.assert_close(loaded.reconstruct(x), theirs_recon, **TOL)
    # fold=True: unit-norm atoms, codes times the decoder norms, the same reconstructions (TopK is never folded)
    folded = load_sae(tmp_path, fold=True)
    torch.testing.assert_close(folded.reconstruct(x), theirs_recon, **TOL)
    norms = sae.W_dec.detach().norm(dim=1)
    assert folded.folded == (arch != "topk")
    if arch != "topk":
        torch.testing.assert_close(folded.encode(x), theirs_codes * norms, **TOL)
        torch.testing.assert_close(folded.dictionary.atoms.norm(dim=1), torch.ones(D_SAE), **TOL)
    else:
        torch.testing.assert_close(folded.encode(x), theirs_codes, **TOL)


def test_topk_with_non_unit_norms_keeps_atoms(tmp_path) -> None:
    """TopK selection is not invariant to per-latent scaling, so such SAEs never fold, outputs exact."""
    sae = _saelens_sae("topk")
    sae.save_model(tmp_path)
    loaded = load_saelens(tmp_path, fold=True)
    assert not loaded.folded
    torch.testing.assert_close(loaded.dictionary.atoms, sae.W_dec.detach())


@pytest.mark.parametrize(("name", "params"), [("relu", {}), ("topk", {"k": K}), ("jumprelu", {"threshold_init": 0.2})])
@pytest.mark.parametrize("subtract_bias", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_ours_to_saelens_same_outputs(tmp_path, name: str, params: dict, subtract_bias: bool, scale: float) -> None:
    """SAELens, given raw inputs, gives our codes of scale * x and our reconstructions divided by the scale."""
    from sae_lens import SAE

    torch.manual_seed(1)
    dictionary = Dictionary.random(D_SAE, D_IN, seed=1, bias=True)
    with torch.no_grad():
        dictionary.bias.normal_()
    encoder = create(name, dim=D_IN, n_latents=D_SAE, subtract_bias=subtract_bias, **params).eval()
    with torch.no_grad():
        encoder.linear.bias.normal_(0.0, 0.3)
    save_saelens(encoder, dictionary, tmp_path, metadata={"hook_name": "resid_post.0"}, input_scale=scale)
    sae = SAE.load_from_disk(tmp_path)
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    x = _inputs(2)
    with torch.no_grad():
        ours = encoder(x * scale, dictionary)
        ours = ours if isinstance(ours, torch.Tensor) else ours.to_dense()
        torch.testing.assert_close(sae.encode(x), ours, **TOL)
        torch.testing.assert_close(sae(x), dictionary.decode(ours) / scale, **TOL)
    assert (ours != 0).float().sum(1).mean() > 1
    back = load_sae(tmp_path)
    torch.testing.assert_close(back.encode(x), ours, **TOL)
    torch.testing.assert_close(back.reconstruct(x), dictionary.decode(ours) / scale, **TOL)


def test_sparsify_to_ours_same_outputs(tmp_path) -> None:
    sae = _sparsify_sae()
    sae.save_to_disk(tmp_path / "layers.3")
    loaded = load_sae(tmp_path, hookpoint="layers.3")
    x = _inputs(3)
    with torch.no_grad():
        out = sae.encode(x)
        theirs_recon = sae.decode(out.top_acts, out.top_indices)
    assert loaded.source == "sparsify" and not loaded.folded
    assert loaded.hook_name == "resid_post.3"  # the hookpoint folder, read as our alias
    torch.testing.assert_close(loaded.encode(x), _sparsify_codes(sae, x), **TOL)
    torch.testing.assert_close(loaded.reconstruct(x), theirs_recon, **TOL)


def test_sparsify_unit_norm_decoder_is_folded(tmp_path) -> None:
    sae = _sparsify_sae(4)
    sae.set_decoder_norm_to_unit_norm()
    sae.save_to_disk(tmp_path)
    loaded = load_sparsify(tmp_path, fold=True)
    assert not loaded.folded  # unit norms: nothing to fold
    x = _inputs(4)
    with torch.no_grad():
        out = sae.encode(x)
        torch.testing.assert_close(loaded.reconstruct(x), sae.decode(out.top_acts, out.top_indices), **TOL)


@pytest.mark.parametrize("scale", [1.0, 2.7])
def test_ours_to_sparsify_same_outputs(tmp_path, scale: float) -> None:
    from sparsify import SparseCoder

    dictionary = Dictionary.random(D_SAE, D_IN, seed=5, bias=True)
    with torch.no_grad():
        dictionary.bias.normal_()
    encoder = create("topk", dim=D_IN, n_latents=D_SAE, k=K).eval()
    save_sparsify(encoder, dictionary, tmp_path, input_scale=scale)
    sae = SparseCoder.load_from_disk(tmp_path)
    x = _inputs(5)
    with torch.no_grad():
        ours = encoder(x * scale, dictionary)
        torch.testing.assert_close(_sparsify_codes(sae, x), ours, **TOL)
        out = sae.encode(x)
        recon = dictionary.decode(ours) / scale
        torch.testing.assert_close(sae.decode(out.top_acts, out.top_indices), recon, **TOL)
    back = load_sparsify(tmp_path)
    torch.testing.assert_close(back.encode(x), ours, **TOL)
    torch.testing.assert_close(back.reconstruct(x), recon, **TOL)


@pytest.mark.parametrize(
    ("name", "params"),
    [("relu", {"bias": False}), ("topk", {"k": 4}), ("jumprelu", {}), ("fista", {"penalty": 0.05}), ("omp", {"k": 3})],
)
def test_native_round_trip(tmp_path, name: str, params: dict) -> None:
    dictionary = Dictionary.random(D_SAE, D_IN, seed=6, bias=True)
    encoder = create(name, dim=D_IN, n_latents=D_SAE, **params).eval()
    save_native(encoder, dictionary, tmp_path)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    loaded = load_sae(tmp_path)
    assert type(loaded.encoder) is type(encoder)
    x = _inputs(6)
    with torch.no_grad():
        expected = encoder(x, dictionary)
        expected = expected if isinstance(expected, torch.Tensor) else expected.to_dense()
    torch.testing.assert_close(loaded.encode(x), expected)
    torch.testing.assert_close(loaded.dictionary.atoms, dictionary.atoms)


def _edit_cfg(folder, **changes) -> None:
    path = folder / "cfg.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"normalize_activations": "layer_norm"}, "normalize_activations"),
        ({"architecture": "gated"}, "unsupported SAELens architecture"),
        ({"k": 0}, "k"),
    ],
)
def test_saelens_unsupported_configs(tmp_path, changes: dict, message: str) -> None:
    _saelens_sae("topk").save_model(tmp_path)
    _edit_cfg(tmp_path, **changes)
    with pytest.raises(SparseInferError, match=message):
        load_saelens(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"activation": "groupmax"}, "groupmax"), ({"transcode": True}, "transcode"), ({"k": 999}, "k must be")],
)
def test_sparsify_unsupported_configs(tmp_path, changes: dict, message: str) -> None:
    _sparsify_sae().save_to_disk(tmp_path)
    _edit_cfg(tmp_path, **changes)
    with pytest.raises(SparseInferError, match=message):
        load_sparsify(tmp_path)


def test_bad_files_and_encoders(tmp_path) -> None:
    dictionary = Dictionary.random(D_SAE, D_IN, seed=0)
    with pytest.raises(SparseInferError, match="only SAE encoders"):
        save_saelens(create("fista"), dictionary, tmp_path / "a")
    with pytest.raises(SparseInferError, match="TopK"):
        save_sparsify(create("relu", dim=D_IN, n_latents=D_SAE), dictionary, tmp_path / "b")
    with pytest.raises(SparseInferError, match="dim=5"):
        save_saelens(create("relu", dim=5, n_latents=D_SAE), dictionary, tmp_path / "c")
    with pytest.raises(SparseInferError, match="no known SAE layout"):
        load_sae(tmp_path)
    sae = _saelens_sae("jumprelu")
    sae.save_model(tmp_path / "j")
    (tmp_path / "j" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SparseInferError, match="corrupt weights"):
        load_sae(tmp_path / "j")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "sae.safetensors").write_bytes(b"")
    (tmp_path / "k" / "cfg.json").write_text("{not json")
    with pytest.raises(SparseInferError, match="corrupt config"):
        load_sae(tmp_path / "k")


def test_export_has_what_saebench_reads(tmp_path) -> None:
    """SAEBench's loader (`load_and_format_sae` on an `SAE.load_from_disk` object) needs model, hook name and layer,
    context size and the other metadata fields; with sae-bench installed its own code is run, else its checks."""
    from sae_lens import SAE

    dictionary = Dictionary.random(D_SAE, D_IN, seed=1, bias=True)
    encoder = create("relu", dim=D_IN, n_latents=D_SAE).eval()
    meta = {"model_name": "smollm2-135m", "hook_name": "resid_pre.9", "context_size": 128, "dataset_path": "store"}
    save_saelens(encoder, dictionary, tmp_path, metadata=meta)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert {"dtype", "device", "normalize_activations", "apply_b_dec_to_input", "d_in", "d_sae"} <= set(cfg)
    sae = SAE.load_from_disk(tmp_path)
    m = sae.cfg.metadata
    assert m.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct" and m.hook_name == "blocks.9.hook_resid_pre"
    assert m.hook_layer == 9 and m.context_size == 128 and m.prepend_bos is True and m.dataset_path == "store"
    assert m.exclude_special_tokens is False and m.model_from_pretrained_kwargs == {}
    assert load_sae(tmp_path).provenance["model_name"] == "smollm2-135m"  # our name back on reading
    try:
        from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    except ImportError:
        return
    _, loaded, _ = load_and_format_sae("custom", sae, "cpu")
    assert loaded.cfg.hook_layer == 9 and loaded.cfg.model_name == m.model_name


def test_export_without_provenance_still_loads(tmp_path) -> None:
    from sae_lens import SAE

    save_saelens(create("relu", dim=D_IN, n_latents=D_SAE), Dictionary.random(D_SAE, D_IN, seed=0), tmp_path)
    sae = SAE.load_from_disk(tmp_path)
    assert sae.cfg.metadata.model_name is None and sae.cfg.metadata.hook_layer is None
