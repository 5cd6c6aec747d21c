"""Controls: planted token features built from a store's token ids, and, with a scripted explainer that reads the
marked tokens and answers by the explanation's word, planted features score perfectly while shuffled explanations
score at chance; `interpret(..., controls=True)` writes both next to the results."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from sparseinfer.data.store import ActivationStore, Manifest
from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, LLMConfig
from sparseinfer.interp.controls import planted_cache, planted_examples, shuffle_order, shuffled_explanations
from sparseinfer.interp.fake import FakeLLMServer
from sparseinfer.interp.latent import InterpretConfig
from sparseinfer.interp.pipeline import CONTROLS, CONTROLS_SUMMARY, interpret

VOCAB = [" w" + chr(ord("a") + i) for i in range(16)]  # token id i decodes to " wa", " wb", ...
FEATURES = {f"the word '{w.strip()}'": (lambda t, w=w: t == w) for w in VOCAB[:12]}


class Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join(VOCAB[i] for i in ids)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controls") / "store"
    store = ActivationStore.create(folder, Manifest("fake", "resid", "float32", 4, 40, True))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(len(VOCAB), (40, 40), generator=gen)
        store.append(torch.zeros(40, 40, 4), ids)
    store.finish()
    return ActivationStore.open(folder)


def test_planted_cache_marks_exactly_the_matching_tokens(store):
    cache = planted_cache(store, Tokenizer(), FEATURES)
    ids = torch.cat([store.read_shard(i)["token_ids"] for i in range(3)]).numpy()
    assert cache.n_tokens == ids.shape[0] * (ids.shape[1] - 1) and cache.n_latents == 12
    for j in (0, 5, 11):
        seg = cache.segment(j)
        got = set(zip(cache.context[seg].tolist(), cache.position[seg].tolist(), strict=True))
        c, p = np.nonzero(ids[:, 1:] == j)  # BOS position excluded
        assert got == set(zip(c.tolist(), (p + 1).tolist(), strict=True)) and (cache.value[seg] == 1).all()
    records, names = planted_examples(store, Tokenizer(), 5, min_count=10, features=FEATURES, n_top=6, n_samples=4,
                                      n_negatives=4, left=3, right=1)  # fmt: skip
    assert names == list(FEATURES)[:5]
    for rec, name in zip(records, names, strict=True):
        word = " " + name.split("'")[1]
        assert all(ex.tokens[ex.peak] == word for ex in rec.top + rec.samples)
        assert all(word not in ex.tokens for ex in rec.negatives) and len(rec.negatives) == 4
    with pytest.raises(SparseInferError, match="often enough"):
        planted_examples(store, Tokenizer(), 5, min_count=10**6, features=FEATURES)


def test_shuffle_is_a_derangement():
    for seed in range(20):
        order, source = shuffle_order(7, seed)
        assert sorted(order.tolist()) == list(range(7)) and not np.any(source == np.arange(7))
        assert sorted(source.tolist()) == list(range(7))
    assert shuffled_explanations(["a", "b"]) == ["b", "a"]
    with pytest.raises(SparseInferError):
        shuffle_order(1)


def _oracle(payload):
    """Explains a latent by its marked token; P(yes) 0.9 when the explanation's word is in the text, else 0.1."""
    text = payload["messages"][-1]["content"]
    if "What does the feature detect?" in text:
        return "the word " + re.search(r"marked token: ' (\w+)'", text).group(1)
    word = re.search(r"^Feature: the word (\w+)", text).group(1)
    body = text.split("Text: ", 1)[1].split("\n\n")[0]
    if "<<" in body:
        body = body.split("<<", 1)[1].split(">>", 1)[0]
    p = 0.9 if re.search(rf"\b{word}\b", body) else 0.1
    return {"Yes": p, "No": 1 - p}


def test_planted_high_and_shuffled_at_chance(store, tmp_path, monkeypatch):
    import sparseinfer.interp.controls as controls

    monkeypatch.setattr(controls, "PLANTED", FEATURES)
    config = InterpretConfig(controls=True, n_planted=12, n_top=6, n_explain=4, n_samples=10, n_negatives=10,
                             left=3, right=1, min_count=10, embedding=False, logit_tokens=0)  # fmt: skip
    with FakeLLMServer(_oracle) as srv, ChatClient(LLMConfig(base_url=srv.base_url)) as client:
        interpret([], store.folder, tmp_path / "out", client, config, tokenizer=Tokenizer())
        sent = len(srv.payloads)
        interpret([], store.folder, tmp_path / "out", client, config, tokenizer=Tokenizer())  # resumes
        assert len(srv.payloads) == sent
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "out" / CONTROLS)
    planted, shuffled = rows[rows.control == "planted"], rows[rows.control == "shuffled"]
    assert len(planted) == len(shuffled) == 12 and set(planted.latent) == set(shuffled.latent)
    assert (planted.explanation == [f"the word {f.split(chr(39))[1]}" for f in planted.feature]).all()
    assert (planted.detection_bacc == 1.0).all() and (planted.fuzzing_bacc == 1.0).all()
    assert (shuffled.explanation_of != shuffled.feature).all() and shuffled.fuzzing_bacc.isna().all()
    # a wrong word is in a 5-token window of 16 random words about as often for positives as for negatives
    assert abs(shuffled.detection_bacc.mean() - 0.5) < 0.08 and abs(shuffled.detection_auroc.mean() - 0.5) < 0.08
    summary = pd.read_parquet(tmp_path / "out" / CONTROLS_SUMMARY).set_index(["control", "metric"])
    assert summary.loc[("planted", "detection_bacc"), "ci_low"] == 1.0
    low, high = summary.loc[("shuffled", "detection_bacc"), ["ci_low", "ci_high"]]
    assert low <= shuffled.detection_bacc.mean() <= high  # exactly chance once negatives are neutral


def test_shuffled_control_drops_negatives_at_the_borrowed_feature() -> None:
    """A latent scored under the explanation of planted "commas" keeps no negative whose marked token is a comma
    (the judge would rightly call it "yes"); other negatives and the positives stay; a name that is not planted
    leaves the record as it is."""
    from sparseinfer.interp.controls import neutral_negatives
    from sparseinfer.interp.examples import Example, LatentExamples

    comma = Example([" a", ",", " b"], [0.0, 1.0, 0.0], 1, 0, 1)
    word = Example([" a", " the", " b"], [0.0, 1.0, 0.0], 1, 1, 1)
    record = LatentExamples(3, 5, 0.1, 1.0, [word], [word], [comma, word], ([1], [0.0, 1.0]))
    kept = neutral_negatives(record, "commas")
    assert kept.negatives == [word] and kept.top == [word] and record.negatives == [comma, word]
    assert neutral_negatives(record, "no such feature") is record
