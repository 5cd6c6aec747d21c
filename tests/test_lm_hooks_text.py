"""Hooks, splicing and text on a tiny random Llama built locally (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from sparseinfer.errors import SparseInferError
from sparseinfer.lm import capture, iter_documents, load_model, resolve_hook_points, splice, tokenise_contexts
from sparseinfer.lm.hooks import HookPoint
from sparseinfer.lm.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return load_model(str(folder))


def _ids(tokenizer, n=2, length=12):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(2, tokenizer.vocab_size, (n, length), generator=gen)


def test_capture_matches_hidden_states(tiny):
    model, tok = tiny
    ids = _ids(tok)
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # reference: HF's own residual stream
    points = resolve_hook_points(model, ["resid_pre.1", "resid_post.1"])
    acts = capture(model, ids, points)
    torch.testing.assert_close(acts[HookPoint("model.layers.1", "input")], hidden[1], rtol=0, atol=0)
    torch.testing.assert_close(acts[HookPoint("model.layers.1", "output")], hidden[2], rtol=0, atol=0)


def test_capture_parts_sum_to_residual(tiny):
    model, tok = tiny
    ids = _ids(tok)
    pre, attn, mlp, post = resolve_hook_points(model, ["resid_pre.0", "attn_out.0", "mlp_out.0", "resid_post.0"])
    acts = capture(model, ids, [pre, attn, mlp, post])
    # Llama block: post = pre + attention output + mlp output
    torch.testing.assert_close(acts[post], acts[pre] + acts[attn] + acts[mlp], rtol=1e-5, atol=1e-5)


def test_capture_stops_after_last_hook(tiny):
    model, tok = tiny
    calls = []
    handle = model.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        capture(model, _ids(tok), resolve_hook_points(model, "resid_post.0"))
        assert calls == []
        model(input_ids=_ids(tok))
        assert calls == [1]
    finally:
        handle.remove()


def test_globs_and_errors(tiny):
    model, _ = tiny
    assert [p.module for p in resolve_hook_points(model, "resid_post.*")] == [f"model.layers.{i}" for i in range(3)]
    assert len(resolve_hook_points(model, "model.layers.*.mlp")) == 3
    assert [p.label for p in resolve_hook_points(model, "model.layers.2:input")] == ["model.layers.2:input"]
    with pytest.raises(SparseInferError, match="matches no module"):
        resolve_hook_points(model, "model.blocks.*")
    with pytest.raises(SparseInferError, match="side"):
        resolve_hook_points(model, "model.layers.0:middle")


def test_splice_identity_and_zero(tiny):
    model, tok = tiny
    ids = _ids(tok)
    clean = model(input_ids=ids).logits
    with splice(model, HookPoint("model.layers.1", "input"), lambda a: a.clone()):
        torch.testing.assert_close(model(input_ids=ids).logits, clean, rtol=0, atol=0)
    with splice(model, HookPoint("model.norm"), torch.zeros_like):
        assert model(input_ids=ids).logits.abs().max() == 0  # lm_head has no bias
    torch.testing.assert_close(model(input_ids=ids).logits, clean, rtol=0, atol=0)  # hooks removed


def test_contexts_bos_and_no_leakage(tiny):
    _, tok = tiny
    docs = ["the quick brown fox " * 6, "all that glitters " * 9, "short"]
    lengths = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs]
    rows = list(tokenise_contexts(docs, tok, 8, bos=True, cross_document=False))
    assert len(rows) == sum(n // 7 for n in lengths)
    assert all(int(r[0]) == tok.bos_token_id and tok.bos_token_id not in r[1:].tolist() for r in rows)
    joined = list(tokenise_contexts(docs, tok, 8, bos=True, cross_document=True))
    assert len(joined) == (sum(lengths) + len(docs) - 1) // 7  # one separator between documents
    assert sum(tok.bos_token_id in r[1:].tolist() for r in joined) >= 1
    assert len(list(tokenise_contexts(docs, tok, 8, max_contexts=2))) == 2
    with pytest.raises(SparseInferError, match="context_length"):
        list(tokenise_contexts(docs, tok, 1))


def test_text_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.md").write_text("second")
    assert list(iter_documents(str(tmp_path), split="all")) == ["first", "second"]
    rows = [{"text": f"doc {i}"} for i in range(20)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, test = list(iter_documents(str(path))), list(iter_documents(str(path), split="test"))
    assert test == ["doc 9", "doc 19"] and len(train) == 18 and not set(train) & set(test)
    path.write_text('{"txt": 1}\n')
    with pytest.raises(SparseInferError, match=r"d\.jsonl:1"):
        list(iter_documents(str(path)))
    with pytest.raises(SparseInferError, match="neither"):
        list(iter_documents(str(tmp_path / "missing")))


def test_gpt2_blocks_and_aliases():
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    points = resolve_hook_points(model, ["resid_pre.1", "attn_out.1", "mlp_out.1"])
    assert [p.label for p in points] == ["transformer.h.1:input", "transformer.h.1.attn", "transformer.h.1.mlp"]
    acts = capture(model, ids, points)
    torch.testing.assert_close(acts[points[0]], hidden[1], rtol=0, atol=0)
    post = acts[points[0]] + acts[points[1]] + acts[points[2]]  # GPT-2 block: residual + attention + MLP
    torch.testing.assert_close(post, capture(model, ids, resolve_hook_points(model, "resid_post.1"))[
        HookPoint("transformer.h.1")], rtol=1e-5, atol=1e-5)  # fmt: skip
