"""One on-disk format for every trained pair (`io.save_sae` / `io.load_sae`): LM training runs, synthetic sweep runs
and their older layouts, exports to SAELens and sparsify that fold the input scale (checked with the real
`SAE.load_from_disk` and `SparseCoder.load_from_disk`), and `sparseinfer infer --sae` on every kind of folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _stores import clustered_store
from safetensors.torch import save_file
from typer.testing import CliRunner

from sparseinfer import Dictionary, SparseInferError, create
from sparseinfer.cli import app
from sparseinfer.data.store import ActivationStore
from sparseinfer.io import load_sae, save_sae, save_saelens, save_sparsify
from sparseinfer.lm.hooks import from_saelens_hook, to_saelens_hook
from sparseinfer.metrics import fvu
from sparseinfer.training.activations import LMTrainConfig, load_run, train_from_store

DIM = 8
TOL = dict(rtol=1e-5, atol=1e-5)
TRAIN = dict(expansion=4, steps=20, batch_size=32, lr=3e-3, eval_every=10, warmup_steps=0, dead_latents="none")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Clustered 'activations' far from unit scale, so the trained runs have an input scale well away from 1."""
    return clustered_store(tmp_path_factory.mktemp("store"), DIM, clusters=6, scale=3.0, noise=0.3, offset=2.0)


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    """Two `sparseinfer train` runs on the store: TopK (k=3) and ReLU."""
    root = tmp_path_factory.mktemp("runs")
    configs = {"topk": LMTrainConfig(encoder="topk", hparams={"k": 3}, **TRAIN), "relu": LMTrainConfig(**TRAIN)}
    for name, cfg in configs.items():
        train_from_store(cfg, store, root / name, progress=False)
    return root


@pytest.fixture(scope="module")
def acts(store):
    """Raw activations from the store (not scaled)."""
    return ActivationStore.open(store).sample(128, seed=5).float()


def _codes_by_hand(run, x):
    """What training meant: the encoder on scale * x, reconstructions divided by the scale (from run.json)."""
    encoder, dictionary, info = load_run(run)
    with torch.no_grad():
        codes = encoder(x * info["scale"], dictionary)
        codes = codes if isinstance(codes, torch.Tensor) else codes.to_dense()
        return codes, dictionary.decode(codes) / info["scale"], info


@pytest.mark.parametrize("name", ["topk", "relu"])
def test_train_run_is_one_sae_folder(runs, store, acts, name) -> None:
    run = runs / name
    cfg = json.loads((run / "cfg.json").read_text())
    assert cfg["format"] == "sparseinfer" and cfg["format_version"] == 2 and cfg["encoder"] == name
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (DIM, 4 * DIM, "float32")
    info = json.loads((run / "run.json").read_text())
    assert cfg["input_scale"] == info["scale"] and abs(info["scale"] - 1) > 0.2
    assert cfg["normalize_activations"] == "constant_scale"
    meta = cfg["metadata"]
    assert (meta["model_name"], meta["hook_name"], meta["dataset_path"]) == ("none", "h", str(store))
    assert (meta["context_size"], meta["prepend_bos"]) == (9, True)
    assert {"sparseinfer_version", "torch_version"} <= set(meta)
    assert not (run / "dictionary").exists() and (run / "dictionary.safetensors").exists()
    sae = load_sae(run)
    assert sae.input_scale == info["scale"] and sae.hook_name == "h" and not sae.folded
    codes, recon, _ = _codes_by_hand(run, acts)
    torch.testing.assert_close(sae.encode(acts), codes)
    torch.testing.assert_close(sae.reconstruct(acts), recon)
    assert fvu(acts, sae.reconstruct(acts)) < 0.9  # a trained SAE on raw activations


@pytest.mark.parametrize("name", ["topk", "relu"])
def test_ours_to_saelens_to_ours(runs, acts, tmp_path, name) -> None:
    """The exported SAE takes raw activations: SAELens' codes and reconstructions equal ours, and so do ours again."""
    from sae_lens import SAE

    ours = load_sae(runs / name)
    out = save_saelens(ours, tmp_path / "sl")
    theirs = SAE.load_from_disk(out)
    assert theirs.cfg.metadata.model_name == "none" and theirs.cfg.metadata.hook_name == "h"
    assert theirs.cfg.metadata.dataset_path == ours.provenance["dataset_path"]
    with torch.no_grad():
        codes = theirs.encode(acts)
        torch.testing.assert_close(codes, ours.encode(acts), **TOL)
        torch.testing.assert_close(theirs.decode(codes), ours.reconstruct(acts), **TOL)
    back = load_sae(out)
    assert back.source == "saelens" and back.input_scale == 1.0  # the scale now lives in the weights
    torch.testing.assert_close(back.encode(acts), ours.encode(acts), **TOL)
    torch.testing.assert_close(back.reconstruct(acts), ours.reconstruct(acts), **TOL)
    assert (codes != 0).float().sum(1).mean() > 1


def test_ours_to_sparsify_to_ours(runs, acts, tmp_path) -> None:
    from sparsify import SparseCoder

    ours = load_sae(runs / "topk")
    out = save_sparsify(ours, tmp_path / "sp", hookpoint="layers.1")
    assert out == tmp_path / "sp" / "layers.1"
    theirs = SparseCoder.load_from_disk(out)
    with torch.no_grad():
        enc = theirs.encode(acts)
        dense = torch.zeros(acts.shape[0], ours.dictionary.n_latents).scatter(1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(dense, ours.encode(acts), **TOL)
        torch.testing.assert_close(theirs.decode(enc.top_acts, enc.top_indices), ours.reconstruct(acts), **TOL)
    back = load_sae(tmp_path / "sp", hookpoint="layers.1")
    assert back.hook_name == "resid_post.1" and back.provenance["hookpoint"] == "layers.1"
    torch.testing.assert_close(back.encode(acts), ours.encode(acts), **TOL)
    torch.testing.assert_close(back.reconstruct(acts), ours.reconstruct(acts), **TOL)


def test_export_hook_metadata(tmp_path) -> None:
    """Our hook labels become TransformerLens names in SAELens files and sparsify hookpoint folders."""
    dictionary = Dictionary.random(12, 4, seed=0, bias=True)
    encoder = create("topk", dim=4, n_latents=12, k=2)
    save_sae(encoder, dictionary, tmp_path / "ours", provenance={"model_name": "m", "hook_name": "model.layers.2"})
    sae = load_sae(tmp_path / "ours")
    meta = json.loads((save_saelens(sae, tmp_path / "sl") / "cfg.json").read_text())["metadata"]
    assert (meta["model_name"], meta["hook_name"], meta["sparseinfer_hook"]) == (
        "m",
        "blocks.2.hook_resid_post",
        "model.layers.2",
    )
    assert "hook_head_index" in meta and meta["hook_layer"] == 2
    assert save_sparsify(sae, tmp_path / "sp") == tmp_path / "sp" / "layers.2"
    over = json.loads((save_saelens(sae, tmp_path / "o", metadata={"model_name": "x"}) / "cfg.json").read_text())
    assert over["metadata"]["model_name"] == "x"
    with pytest.raises(SparseInferError, match="input scale"):
        save_saelens(encoder, dictionary, tmp_path / "bad", input_scale=0.0)
    with pytest.raises(SparseInferError, match="without a dictionary"):
        save_saelens(sae, dictionary, tmp_path / "bad")


def test_hook_name_translation() -> None:
    assert from_saelens_hook("blocks.3.hook_resid_pre") == "resid_pre.3"
    assert from_saelens_hook("blocks.0.hook_resid_post") == "resid_post.0"
    assert from_saelens_hook("blocks.2.hook_mlp_out") == "mlp_out.2"
    assert from_saelens_hook("blocks.2.hook_attn_out") == "attn_out.2"
    assert from_saelens_hook("model.layers.2") is None and from_saelens_hook("blocks.3.mlp") is None
    for bad in ("blocks.1.attn.hook_z", "blocks.1.hook_resid_mid", "blocks.0.mlp.hook_post"):
        with pytest.raises(SparseInferError, match="has no hook point here"):
            from_saelens_hook(bad)
    assert to_saelens_hook("resid_pre.3") == to_saelens_hook("model.layers.3:input") == "blocks.3.hook_resid_pre"
    assert to_saelens_hook("transformer.h.1") == "blocks.1.hook_resid_post"
    assert to_saelens_hook("model.layers.1.mlp") == "blocks.1.hook_mlp_out"
    assert to_saelens_hook("model.layers.1.self_attn") == "blocks.1.hook_attn_out"
    assert to_saelens_hook("h") is None and to_saelens_hook("model.layers.1.mlp:input") is None


def test_save_sae_round_trip_and_errors(tmp_path) -> None:
    dictionary = Dictionary.random(12, 4, seed=1, bias=True)
    encoder = create("jumprelu", dim=4, n_latents=12).eval()
    save_sae(encoder, dictionary, tmp_path / "a", input_scale=2.5, provenance={"model_name": "m"})
    sae = load_sae(tmp_path / "a")
    x = torch.randn(16, 4)
    with torch.no_grad():
        expected = encoder(x * 2.5, dictionary)
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.reconstruct(x), dictionary.decode(expected) / 2.5)
    assert sae.provenance["model_name"] == "m" and sae.input_scale == 2.5
    with pytest.raises(SparseInferError, match="input scale"):
        save_sae(encoder, dictionary, tmp_path / "b", input_scale=-1.0)
    with pytest.raises(SparseInferError, match="JSON"):
        save_sae(encoder, dictionary, tmp_path / "c", provenance={"bad": object()})
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    v1 = {k: v for k, v in cfg.items() if k not in ("format_version", "input_scale", "metadata")}
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**v1, "version": "0.1"}))  # the first layout: no scale
    old = load_sae(tmp_path / "a")
    assert old.input_scale == 1.0 and old.provenance == {"sparseinfer_version": "0.1"}
    torch.testing.assert_close(old.encode(x * 2.5), expected)
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(SparseInferError, match="format_version 99"):
        load_sae(tmp_path / "a")
    save_sae(None, dictionary, tmp_path / "d")
    with pytest.raises(SparseInferError, match="without an encoder"):
        load_sae(tmp_path / "d")


def test_old_lm_run_layout_still_loads(runs, acts, tmp_path) -> None:
    """run.json + encoder.safetensors + dictionary/ (the layout before the one format)."""
    encoder, dictionary, info = load_run(runs / "relu")
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(old / "encoder.safetensors"))
    dictionary.save(old / "dictionary")
    (old / "run.json").write_text(json.dumps(info))
    sae = load_sae(old)
    assert sae.input_scale == info["scale"] and sae.provenance["hook_name"] == "h"
    torch.testing.assert_close(sae.reconstruct(acts), load_sae(runs / "relu").reconstruct(acts))
    torch.testing.assert_close(load_run(old)[1].atoms, dictionary.atoms)


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """Synthetic sweep runs written by `experiments.execute`: a ReLU SAE and a sparse-coding run (no encoder)."""
    from sparseinfer.experiments.execute import execute

    root = tmp_path_factory.mktemp("sweep")
    data = {"n_latents": 12, "dim": DIM, "k": 2, "n_train": 64, "n_test": 32}
    train = {"steps": 10, "eval_every": 10, "lr": 0.01}
    execute({"setting": "learn_both", "method": "sae", "encoder": {"name": "relu"}, "data": data, "train": train,
             "seed": 1}, root / "sae")  # fmt: skip
    ito = {"steps": 10, "lr": 0.01, "start": "cold", "log_every": 10}
    execute({"setting": "learn_both", "method": "sparse_coding", "kind": "sparse_coding", "data": data,
             "train": train, "ito": ito}, root / "codes")  # fmt: skip
    return root


def test_sweep_run_is_one_sae_folder(sweep_runs, tmp_path) -> None:
    sae = load_sae(sweep_runs / "sae")
    assert sae.encoder.name == "relu" and sae.provenance["dataset_path"] == "synthetic"
    assert sae.provenance["synthetic"]["n_latents"] == 12 and sae.provenance["seed"] == 1
    with pytest.raises(SparseInferError, match="without an encoder"):
        load_sae(sweep_runs / "codes")
    old = tmp_path / "old"  # the layout before: config.yaml + dictionary cfg/weights + encoder.safetensors
    shutil.copytree(sweep_runs / "sae", old)
    sae.dictionary.save(old)  # rewrites cfg.json as the dictionary alone wrote it
    legacy = load_sae(old)
    x = torch.randn(8, DIM)
    torch.testing.assert_close(legacy.encode(x), sae.encode(x))


def test_infer_sae_on_every_kind_of_folder(runs, sweep_runs, acts, tmp_path) -> None:
    """`sparseinfer infer --sae FOLDER --signals acts.npy` on an LM run, an old-layout LM run, a sweep run, our
    format, SAELens and sparsify exports."""
    np.save(tmp_path / "acts.npy", acts.numpy())
    ours = load_sae(runs / "topk")
    folders = {
        "lm run": runs / "topk",
        "sweep run": sweep_runs / "sae",
        "native": save_sae(ours.encoder, ours.dictionary, tmp_path / "native", input_scale=ours.input_scale),
        "saelens": save_saelens(ours, tmp_path / "saelens"),
        "sparsify": save_sparsify(ours, tmp_path / "sparsify"),
    }
    for kind, folder in folders.items():
        signals = acts if kind != "sweep run" else torch.randn(64, DIM)
        np.save(tmp_path / "x.npy", signals.numpy())
        out = tmp_path / f"{kind.replace(' ', '_')}.safetensors"
        args = ["infer", "--sae", str(folder), "--signals", str(tmp_path / "x.npy"), "--encoder", "support-refit"]
        result = CliRunner().invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, (kind, result.output, result.exception)
        assert "support-refit" in result.output
    bad = CliRunner().invoke(app, ["infer", "--sae", str(sweep_runs / "codes"), "--signals", str(tmp_path / "x.npy")])
    assert bad.exit_code != 0 and isinstance(bad.exception, SparseInferError)
