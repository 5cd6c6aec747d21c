"""Harvest -> store -> train -> evaluate on a tiny random Llama and a few local documents (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sparseinfer.cli import app
from sparseinfer.data.harvest import HarvestConfig, harvest
from sparseinfer.data.store import ActivationStore
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import create
from sparseinfer.errors import SparseInferError
from sparseinfer.evaluation.downstream import downstream_metrics
from sparseinfer.evaluation.held_out import reconstruction_metrics
from sparseinfer.lm import capture, load_model
from sparseinfer.lm.hooks import HookPoint
from sparseinfer.lm.tiny import build_tiny_model
from sparseinfer.training.activations import LMTrainConfig, load_run, train_from_store, train_on_the_fly
from sparseinfer.training.activations.initialise import build, data_scale
from sparseinfer.training.activations.lm_config import default_l1

WORDS = "the quick brown fox jumps over the lazy dog a stitch in time saves nine all that glitters is not gold".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    folder = build_tiny_model(root / "model")
    gen = torch.Generator().manual_seed(0)
    docs = root / "docs"
    docs.mkdir()
    for i in range(40):
        words = [WORDS[j] for j in torch.randint(len(WORDS), (150,), generator=gen)]
        (docs / f"{i:02d}.txt").write_text(" ".join(words))
    cfg = HarvestConfig(str(folder), ("resid_pre.2",), str(docs), context_length=16, n_contexts=40,
                        contexts_per_shard=8, batch_size=4)  # fmt: skip
    lm = load_model(str(folder))
    harvest(cfg, root / "store", progress=False, model=lm)
    test_cfg = HarvestConfig(**{**cfg.__dict__, "split": "test", "n_contexts": 12})
    harvest(test_cfg, root / "test", progress=False, model=lm)
    return root, cfg, lm


def test_store_matches_model_and_manifest(setup):
    root, _, (model, _) = setup
    store = ActivationStore.open(root / "store")
    m = store.manifest
    assert m.complete and m.n_contexts == 40 and [s["contexts"] for s in m.shards] == [8] * 5
    assert (m.dim, m.context_length, m.hook) == (32, 16, "model.layers.2:input")
    shard = store.read_shard(1)
    ref = capture(model, shard["token_ids"], [HookPoint("model.layers.2", "input")])  # recompute from stored ids
    torch.testing.assert_close(shard["activations"], next(iter(ref.values())), rtol=1e-5, atol=1e-5)


def test_resume_continues_the_same_contexts(setup, tmp_path):
    root, cfg, lm = setup
    harvest(HarvestConfig(**{**cfg.__dict__, "n_contexts": 20}), tmp_path / "s", progress=False, model=lm)
    result = harvest(cfg, tmp_path / "s", progress=False, model=lm)
    assert result.tokens == 20 * 16  # only the missing contexts ran
    resumed, full = ActivationStore.open(tmp_path / "s"), ActivationStore.open(root / "store")
    ids = [torch.cat([s.read_shard(i)["token_ids"] for i in range(len(s.manifest.shards))]) for s in (resumed, full)]
    torch.testing.assert_close(ids[0], ids[1], rtol=0, atol=0)
    with pytest.raises(SparseInferError, match="differs"):
        harvest(HarvestConfig(**{**cfg.__dict__, "context_length": 8}), tmp_path / "s", progress=False, model=lm)


def test_stream_covers_every_token_once_and_mixes_shards(setup):
    root, _, _ = setup
    store = ActivationStore.open(root / "store")
    batches = list(store.iter_batches(50, seed=3, shards_in_memory=2, epochs=1))
    rows = torch.cat(batches)
    assert all(b.shape == (50, 32) for b in batches) and rows.shape[0] == 600 - 600 % 50  # 40 contexts x 15 tokens
    every = torch.cat([store.read_shard(i)["activations"][:, 1:].reshape(-1, 32) for i in range(5)])
    key = lambda t: t[:, 0] * 1e3 + t[:, 1]  # noqa: E731 - a sort key for rows
    assert torch.equal(key(rows).sort().values, key(every).sort().values)
    first = batches[0]
    owners = {int(torch.nonzero((every == r).all(1))[0]) // 120 for r in first}  # 120 tokens per shard
    assert len(owners) == 2  # one batch draws from both shards in memory


def test_corrupt_and_truncated_shards_are_detected(setup, tmp_path):
    root, _, _ = setup
    import shutil

    shutil.copytree(root / "store", tmp_path / "s")
    path = tmp_path / "s" / "shard-00002.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SparseInferError, match=r"shard-00002\.safetensors is corrupt"):
        list(ActivationStore.open(tmp_path / "s").iter_batches(64, epochs=1))
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(SparseInferError, match="truncated"):
        ActivationStore.open(tmp_path / "s").verify()
    with pytest.raises(SparseInferError, match="not an activation store"):
        ActivationStore.open(tmp_path)


def test_build_normalises_and_inits_bias_at_mean():
    x = torch.randn(500, 16) * 7 + 3
    scale = data_scale(x)
    assert abs(float((x * scale).pow(2).sum(1).mean()) - 16) < 1e-3
    encoder, dictionary = build(LMTrainConfig(expansion=2), 16, x * scale)
    torch.testing.assert_close(dictionary.bias.detach(), (x * scale).mean(0))
    torch.testing.assert_close(dictionary.atoms.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(encoder.linear.weight.detach(), dictionary.atoms.detach())  # tied start
    assert default_l1(encoder) == 5.0 and default_l1(create("topk", dim=16, n_latents=32, k=4)) == 0.0


def test_train_learns_and_resumes_exactly(setup, tmp_path):
    root, _, _ = setup
    cfg = LMTrainConfig(
        encoder="relu", expansion=4, steps=40, batch_size=64, lr=3e-3, l1=0.1, warmup_steps=5, l1_warmup_steps=10,
        checkpoint_every=20, eval_every=10, resample_every=15, dead_tokens=300,
    )  # fmt: skip
    info = train_from_store(cfg, root / "store", tmp_path / "a", progress=False)
    fvus = [r["fvu"] for r in info["history"]]
    assert fvus[-1] < 0.5 * fvus[0]
    _, dictionary, _ = load_run(tmp_path / "a")
    torch.testing.assert_close(dictionary.atoms.norm(dim=1), torch.ones(128))

    # interrupt a second run after step 25 (checkpoint at 20), then resume: same result as the uninterrupted run
    store = ActivationStore.open(root / "store")
    import sparseinfer.data.store as store_module

    original = store_module.ActivationStore.iter_batches

    def broken(self, *args, **kwargs):
        for i, batch in enumerate(original(self, *args, **kwargs)):
            if i == 25:
                raise KeyboardInterrupt
            yield batch

    store_module.ActivationStore.iter_batches = broken
    try:
        with pytest.raises(KeyboardInterrupt):
            train_from_store(cfg, root / "store", tmp_path / "b", progress=False)
    finally:
        store_module.ActivationStore.iter_batches = original
    assert (tmp_path / "b" / "checkpoint.safetensors").exists() and store.manifest.n_contexts == 40
    train_from_store(cfg, root / "store", tmp_path / "b", progress=False)
    _, resumed, _ = load_run(tmp_path / "b")
    torch.testing.assert_close(resumed.atoms, dictionary.atoms, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "b" / "checkpoint.safetensors").exists()

    # a corrupt checkpoint (or a pickle someone hands in) is refused with a one-line error, never unpickled
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(SparseInferError, match="cannot resume"):
        train_from_store(cfg, root / "store", tmp_path / "c", progress=False)


def _exact_pair(dim: int):
    """A relu encoder and dictionary that reconstruct any x exactly: atoms [I; -I], codes relu(x), relu(-x)."""
    eye = torch.eye(dim)
    dictionary = Dictionary(torch.cat([eye, -eye]), bias=torch.zeros(dim))
    encoder = create("relu", dim=dim, n_latents=2 * dim)
    with torch.no_grad():
        encoder.linear.weight.copy_(torch.cat([eye, -eye]))
        encoder.linear.bias.zero_()
    return encoder, dictionary


def test_metrics_against_references(setup):
    root, _, (model, _) = setup
    store = ActivationStore.open(root / "test")
    encoder, dictionary = _exact_pair(32)
    exact = reconstruction_metrics(encoder, dictionary, store, 1.0, 10**6, 64)
    assert exact["fvu"] < 1e-10 and abs(exact["l0"] - 32) < 1e-9  # generic activations: every x_i != 0
    assert exact["dead_fraction"] == 0 and exact["dense_fraction"] == 1
    # reference FVU in float64 for a random dictionary, over all held-out tokens
    enc2 = create("relu", dim=32, n_latents=64)
    dic2 = Dictionary.random(64, 32, seed=1, bias=True)
    got = reconstruction_metrics(enc2, dic2, store, 0.5, 10**6, 64)
    x = torch.cat([store.read_shard(i)["activations"][:, 1:].reshape(-1, 32) for i in range(2)]).double() * 0.5
    with torch.no_grad():
        x_hat = dic2.decode(enc2(x.float(), dic2)).double()
    ref = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert got["eval_tokens"] == x.shape[0] and abs(got["fvu"] - ref) < 1e-6 * ref

    ids = store.read_shard(0)["token_ids"]
    perfect = downstream_metrics(model, HookPoint("model.layers.2", "input"), ids, encoder, dictionary, 1.0, True)
    with torch.no_grad():
        reference_ce = float(model(input_ids=ids, labels=ids).loss)  # HF's own shifted cross-entropy
    assert abs(perfect["ce_clean"] - reference_ce) < 1e-5
    assert abs(perfect["ce"] - reference_ce) < 1e-5 and perfect["kl"] < 1e-8
    assert abs(perfect["loss_recovered"] - 1) < 1e-4
    bad = downstream_metrics(model, HookPoint("model.layers.2", "input"), ids, enc2, dic2, 1.0, True)
    assert bad["kl"] > 0 and bad["ce_zero"] == pytest.approx(perfect["ce_zero"])
    # the clean and zero-ablated passes computed once give the same numbers; other ids are refused
    from sparseinfer.evaluation.downstream import reference_passes

    point = HookPoint("model.layers.2", "input")
    shared = reference_passes(model, point, ids, True)
    again = downstream_metrics(model, point, ids, enc2, dic2, 1.0, True, reference=shared)
    assert again == pytest.approx(bad, rel=1e-6, abs=1e-9)
    with pytest.raises(SparseInferError, match="other token ids"):
        downstream_metrics(model, point, torch.cat([ids, ids]), enc2, dic2, 1.0, True, reference=shared)


def test_cli_harvest_train_evaluate(setup, tmp_path):
    _, cfg, _ = setup
    runner = CliRunner()
    base = ["--model", cfg.model, "--text", cfg.text, "--context-length", "16", "--contexts-per-shard", "8"]
    r = runner.invoke(app, ["harvest", str(tmp_path / "s"), *base, "--contexts", "16", "--hook", "resid_post.0"])
    assert r.exit_code == 0, r.output
    assert "tokens/s" in r.output
    for enc, extra in (("relu", []), ("topk", ["--param", "k=4"])):
        args = ["train", str(tmp_path / enc), "--store", str(tmp_path / "s"), "--encoder", enc, "--steps", "10"]
        r = runner.invoke(app, [*args, "--batch-size", "32", "--expansion", "2", *extra])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "relu"), str(tmp_path / "topk"), "--store",
                            str(tmp_path / "s"), "--contexts", "4", "--out", str(tmp_path / "cmp"),
                            "--infer-with", "fista", "--param", "max_iter=20"])  # fmt: skip
    assert r.exit_code == 0, r.output
    import pandas as pd

    table = pd.read_parquet(tmp_path / "cmp" / "comparison.parquet")
    names = ["relu", "fista on relu's dictionary", "topk", "fista on topk's dictionary"]
    assert list(table["encoder"]) == names and (table["l0"].iloc[2] <= 4)
    assert (tmp_path / "cmp" / "frontier.png").exists()
    assert json.loads((tmp_path / "topk" / "run.json").read_text())["config"]["hparams"] == {"k": 4}


def test_train_on_the_fly(setup, tmp_path):
    _, cfg, _ = setup
    config = LMTrainConfig(expansion=2, steps=5, batch_size=32, eval_every=5)
    info = train_on_the_fly(config, cfg, tmp_path / "run", progress=False, sample_tokens=64)
    assert info["source"]["on_the_fly"] and info["history"][-1]["tokens"] == 5 * 32
    with pytest.raises(SparseInferError, match="exactly one hook"):
        two = HarvestConfig(**{**cfg.__dict__, "hooks": ("resid_post.*",)})
        train_on_the_fly(config, two, tmp_path / "run2", progress=False)
