"""Latent examples against codes recomputed densely from the store; resumable cache; the interpret pipeline and
CLI end to end on a tiny random Llama with a scripted LLM server."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from sparseinfer.cli import app
from sparseinfer.data.harvest import HarvestConfig, harvest
from sparseinfer.data.store import ActivationStore
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import create
from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, LLMConfig
from sparseinfer.interp.examples import CodeCache, build_examples, cache_activations, select_latents
from sparseinfer.interp.fake import FakeLLMServer
from sparseinfer.interp.pipeline import InterpretConfig, interpret, load_tokenizer
from sparseinfer.io.native import save_native
from sparseinfer.lm import load_model
from sparseinfer.lm.tiny import build_tiny_model

WORDS = "the quick brown fox jumps over the lazy dog a stitch in time saves nine all that glitters is not gold".split()
N_LATENTS = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interp")
    folder = build_tiny_model(root / "model")
    gen = torch.Generator().manual_seed(0)
    docs = root / "docs"
    docs.mkdir()
    for i in range(30):
        words = [WORDS[j] for j in torch.randint(len(WORDS), (120,), generator=gen)]
        (docs / f"{i:02d}.txt").write_text(" ".join(words))
    cfg = HarvestConfig(str(folder), ("resid_pre.2",), str(docs), context_length=24, n_contexts=48,
                        contexts_per_shard=16, batch_size=8)  # fmt: skip
    harvest(cfg, root / "store", progress=False, model=load_model(str(folder)))
    encoders = []
    for i, name in enumerate(("relu", "topk")):
        torch.manual_seed(i)
        enc = create(name, dim=32, n_latents=N_LATENTS, **({"k": 6} if name == "topk" else {}))
        dic = Dictionary(torch.randn(N_LATENTS, 32), bias=torch.zeros(32))
        if name == "relu":  # each latent fires on ~20% of tokens: silent windows (negatives) exist
            sample = ActivationStore.open(root / "store").read_shard(0)["activations"][:, 1:].reshape(-1, 32)
            with torch.no_grad():
                enc.linear.bias.copy_(-(sample @ enc.linear.weight.T).quantile(0.8, dim=0))
        encoders.append(save_native(enc, dic, root / name))
    return root, encoders


def _dense_codes(store: ActivationStore, folder):
    from sparseinfer.interp.examples import load_encoder

    enc, dic, scale = load_encoder(folder)
    acts = torch.cat([store.read_shard(i)["activations"] for i in range(len(store.manifest.shards))])
    with torch.no_grad():
        codes = enc(acts.reshape(-1, 32) * scale, dic)
    codes = codes.to_dense() if hasattr(codes, "to_dense") else codes
    codes = codes.reshape(acts.shape[0], acts.shape[1], N_LATENTS).double()
    codes[:, 0] = 0  # BOS is never an example
    return codes


def test_examples_match_dense_codes(setup):
    root, (relu, _) = setup
    store = ActivationStore.open(root / "store")
    cache = CodeCache.load(cache_activations(root / "store", relu, root / "cache-relu", batch_tokens=100))
    dense = _dense_codes(store, relu)
    counts = (dense != 0).sum((0, 1))
    assert cache.counts().tolist() == counts.tolist()
    assert cache.n_tokens == 48 * 23
    latents = select_latents(cache, 5, min_count=30, max_frequency=0.5, seed=1)
    assert len(latents) == 5 and all(30 <= counts[i] <= 0.5 * 48 * 23 for i in latents)
    records = build_examples(cache, store, load_tokenizer(str(root / "model")), latents, n_top=6, n_samples=4,
                             n_quantiles=2, n_negatives=5, left=7, right=2)  # fmt: skip
    ids = torch.cat([store.read_shard(i)["token_ids"] for i in range(3)])
    for rec in records:
        col = dense[..., rec.latent]
        per_ctx = col.max(1).values
        best = per_ctx.sort(descending=True).values[:6]  # top windows: the 6 contexts with the highest peaks
        assert len({ex.context for ex in rec.top}) == 6
        assert [per_ctx[ex.context].item() for ex in rec.top] == pytest.approx(best.tolist(), rel=1e-6)
        assert rec.max_activation == pytest.approx(col.max().item(), rel=1e-5)
        assert rec.frequency == pytest.approx(counts[rec.latent].item() / (48 * 23))
        assert sum(rec.histogram[0]) == counts[rec.latent]
        for ex in rec.top + rec.samples:
            c, p = ex.context, ex.position
            lo = max(1, p - 7)
            assert ex.peak == p - lo and len(ex.tokens) == min(24, p + 3) - lo
            assert ex.activation == pytest.approx(per_ctx[c].item(), rel=1e-5)
            torch.testing.assert_close(torch.tensor(ex.acts, dtype=torch.float64), col[c, lo : lo + len(ex.acts)],
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
            tokenizer = load_tokenizer(str(root / "model"))
            assert ex.tokens[ex.peak] == tokenizer.decode([int(ids[c, p])])
        assert {ex.context for ex in rec.samples}.isdisjoint(ex.context for ex in rec.top)
        assert len(rec.negatives) == 5
        for ex in rec.negatives:  # the latent is silent in the whole window
            assert col[ex.context, max(1, ex.position - 7) : ex.position + 3].abs().max() == 0


def test_cache_resumes_and_refuses_another_encoder(setup):
    root, (relu, topk) = setup
    cache = cache_activations(root / "store", relu, root / "c")
    before = (cache / "codes-00001.safetensors").read_bytes()
    (cache / "codes-00001.safetensors").unlink()
    stamp = (cache / "codes-00000.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    cache_activations(root / "store", relu, root / "c", progress=lines.append)
    shards = len(json.loads((cache / "cache.json").read_text())["contexts"])
    assert len(lines) == 1 and f"shard 2/{shards} cached" in lines[0]  # one line per shard encoded, none skipped
    assert (cache / "codes-00001.safetensors").read_bytes() == before
    assert (cache / "codes-00000.safetensors").stat().st_mtime_ns == stamp  # not recomputed
    with pytest.raises(SparseInferError, match="another store or encoder"):
        cache_activations(root / "store", topk, root / "c")
    with pytest.raises(SparseInferError, match="no known SAE layout"):
        cache_activations(root / "store", root / "docs", root / "c2")
    # settings outside the weights count too: the same TopK weights with another k are another encoder
    cache_activations(root / "store", topk, root / "c3")
    cfg = json.loads((topk / "cfg.json").read_text())
    shutil.copytree(topk, root / "topk-k3")
    (root / "topk-k3" / "cfg.json").write_text(json.dumps({**cfg, "hparams": {**cfg["hparams"], "k": 3}}))
    with pytest.raises(SparseInferError, match="another store or encoder"):
        cache_activations(root / "store", root / "topk-k3", root / "c3")
    # a cache written before settings were recorded is judged by its weights
    meta = json.loads((root / "c3" / "cache.json").read_text())
    (root / "c3" / "cache.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "settings"}))
    cache_activations(root / "store", topk, root / "c3")


def _oracle(payload) -> str:
    """Explains every latent as 'fox'; says yes when the text (or the marked token) contains 'fox'."""
    text = payload["messages"][-1]["content"]
    if "What does the feature detect?" in text:
        return "Explanation: the word fox"
    body = text.split("Text: ", 1)[1]
    if "<<" in body:
        return "Yes" if "fox" in body.split("<<", 1)[1].split(">>", 1)[0] else "No"
    return "Yes." if "fox" in body.split("\n\n")[0] else "no"


def test_interpret_pipeline_and_cli(setup, tmp_path):
    root, encoders = setup
    config = InterpretConfig(n_latents=4, n_top=6, n_explain=3, n_samples=4, n_negatives=4, left=6, right=2,
                             min_count=20)  # fmt: skip
    with FakeLLMServer(_oracle) as srv, ChatClient(LLMConfig(base_url=srv.base_url, backoff=0)) as client:
        scores, comparison = interpret(encoders, root / "store", tmp_path / "out", client, config)
        sent = len(srv.payloads)
        again, _ = interpret(encoders, root / "store", tmp_path / "out", client, config)  # resumes: nothing to do
        assert len(srv.payloads) == sent
        pd.testing.assert_frame_equal(scores, again)
        scores_file = tmp_path / "out" / "scores.parquet"  # written atomically; a damaged one is refused by name
        whole = scores_file.read_bytes()
        scores_file.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(SparseInferError, match=r"corrupt results file .*scores\.parquet.*delete it"):
            interpret(encoders, root / "store", tmp_path / "out", client, config)
        scores_file.write_bytes(whole)
    assert len(scores) == 8 and set(scores.encoder) == {"relu", "topk"}
    assert (scores.explanation == "the word fox").all()
    assert scores.detection_bacc.between(0, 1).all() and (scores.unparsed == 0).all()
    # the oracle's answers are fully determined by the examples: recompute one latent's detection by hand
    from sparseinfer.interp.examples import load_examples
    from sparseinfer.interp.score import held_out, prevalence_matched

    rec = load_examples(tmp_path / "out" / "relu" / "examples.json")[0]
    pos = held_out(rec, 3, 4)
    truth = [True] * len(pos) + [False] * len(rec.negatives)
    pred = ["fox" in ex.text(None) for ex in pos + rec.negatives]
    row = scores[(scores.encoder == "relu") & (scores.latent == rec.latent)].iloc[0]
    expected = prevalence_matched(truth, [float(p) for p in pred])
    assert (row.detection_bacc, row.detection_f1) == pytest.approx(expected)
    from sparseinfer.interp.latent import METRICS

    assert set(comparison.metric) == set(METRICS) and (comparison.test.fillna("") != "paired").all()
    # embedding score and logit-lens tokens recomputed directly for the same latent
    from sparseinfer.interp.embedding import load_embedder, similarity_auroc
    from sparseinfer.interp.examples import load_encoder
    from sparseinfer.interp.logit_lens import logit_lens_tokens

    texts = [ex.text(None).strip() for ex in pos], [ex.text(None).strip() for ex in rec.negatives]
    assert row.embedding_auroc == pytest.approx(similarity_auroc(load_embedder(), "the word fox", *texts))
    model, tok = load_model(str(root / "model"))
    atom = load_encoder(encoders[0])[1].atoms.detach()[[rec.latent]]
    assert list(row.logit_tokens) == logit_lens_tokens(atom, model, tok, 10)[0] and len(row.logit_tokens) == 10
    explain_prompts = [p["messages"][-1]["content"] for p in srv.payloads if "feature detect?" in str(p)]
    assert len(explain_prompts) == 8 and all("Tokens the feature promotes" in t for t in explain_prompts)
    with FakeLLMServer(_oracle) as srv:
        result = CliRunner().invoke(app, [
            "interpret", str(encoders[0]), str(encoders[1]), "--store", str(root / "store"), "--out",
            str(tmp_path / "cli"), "--latents", "3", "--base-url", srv.base_url, "--min-count", "20",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "95% CI" in result.output and "unpaired" in result.output and (tmp_path / "cli" / "scores.parquet").exists()
