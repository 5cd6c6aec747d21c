"""Embedding scoring: the AUROC function against scikit-learn (with ties), and the real all-MiniLM-L6-v2 model on a
hand-made case with a known answer (an explanation about animals ranks animal sentences above finance ones)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.embedding import auroc, embedding_score, load_embedder, similarity_auroc
from sparseinfer.interp.examples import Example, LatentExamples

ANIMALS = [
    "The dog chased the cat across the yard.",
    "A herd of elephants walked to the river.",
    "The horse ate hay in its stable.",
    "Birds and squirrels live in the old oak tree.",
]
FINANCE = [
    "The central bank raised interest rates by half a point.",
    "Quarterly earnings beat analyst forecasts.",
    "Bond yields fell as investors sought safety.",
    "The company issued new shares to pay its debt.",
]


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 40 + seed
    scores = rng.integers(0, 6, n).astype(float) if seed % 2 else rng.normal(size=n)  # odd seeds: many ties
    labels = rng.random(n) < 0.4
    labels[:2] = [True, False]
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_bad_input():
    with pytest.raises(SparseInferError, match="positive and one negative"):
        auroc([0.1, 0.2], [True, True])
    with pytest.raises(SparseInferError, match="NaN"):
        auroc([0.1, float("nan")], [True, False])
    with pytest.raises(SparseInferError, match="one length"):
        auroc([0.1, 0.2, 0.3], [True, False])


def _example(sentence: str, i: int) -> Example:
    words = [w if j == 0 else " " + w for j, w in enumerate(sentence.split())]
    return Example(words, [0.0] * len(words), 0, i, 0)


def test_real_model_ranks_animals_above_finance():
    embed = load_embedder()
    vectors = embed(["animals", *ANIMALS])
    assert vectors.shape == (5, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    explanation = "animals such as dogs, horses and birds"
    assert similarity_auroc(embed, explanation, ANIMALS, FINANCE) == 1.0
    assert similarity_auroc(embed, "money, banks and the stock market", ANIMALS, FINANCE) == 0.0
    # the same number from the raw embeddings and scikit-learn
    e = embed([explanation, *ANIMALS, *FINANCE])
    assert similarity_auroc(embed, "a horse", ANIMALS, FINANCE) == pytest.approx(
        roc_auc_score([1] * 4 + [0] * 4, embed(["a horse", *ANIMALS, *FINANCE])[1:] @ embed(["a horse"])[0])
    )
    assert (e[1:5] @ e[0]).min() > (e[5:] @ e[0]).max()
    # per latent: held-out windows (samples, then top windows past n_explain) against negatives
    record = LatentExamples(3, 10, 0.1, 1.0, top=[_example(ANIMALS[0], 0), _example(FINANCE[0], 1)],
                            samples=[_example(s, 2 + i) for i, s in enumerate(ANIMALS[1:])],
                            negatives=[_example(s, 9 + i) for i, s in enumerate(FINANCE[1:])])  # fmt: skip
    assert embedding_score(embed, explanation, record, n_explain=1, n_positives=3) == 1.0
    assert embedding_score(embed, explanation, record, n_explain=1, n_positives=4) == pytest.approx(
        similarity_auroc(embed, explanation, ANIMALS[1:] + FINANCE[:1], FINANCE[1:])
    )
    with pytest.raises(SparseInferError, match="empty explanation"):
        similarity_auroc(embed, "  ", ANIMALS, FINANCE)
    with pytest.raises(SparseInferError, match="no held-out"):
        embedding_score(embed, explanation, LatentExamples(4, 1, 0.1, 1.0, samples=record.samples), 1, 3)
