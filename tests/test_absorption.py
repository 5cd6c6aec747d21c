"""First-letter absorption on hand-built cases with known answers: a "starts with s" feature whose latent stops
firing on the word "short" while the "short" latent (decoder aligned with the probe) carries it must be detected;
the same data with a dictionary that keeps the two apart must not. Per-token cases of `absorption_events` pin
SAEBench's definitions down to exact values (fraction 0 whenever the main latents carry the projection, however
many unrelated latents add to it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseinfer import Dictionary, SparseInferError
from sparseinfer.evaluation.absorption import (
    LetterData,
    absorption_events,
    absorption_scores,
    encode,
    evaluate_absorption,
    fit_letter_probes,
    main_latents,
    scored_test_tokens,
    single_word_tokens,
    split_by_word,
)

DIM = 24
E = np.eye(DIM)
TRAIN = [f"s{c}" for c in "abcdefghijkl"] + [f"{f}{c}" for f in "dcm" for c in "abcd"]
TEST = ["sea", "short", "dot", "cap", "mop", "pin"]
WORDS = TRAIN + TEST
S = 2.0  # the s-feature's magnitude in every s-word's activation
# every word's own direction, orthogonal to e0 (the "starts with s" direction)
_RANDOM = np.random.default_rng(7).standard_normal((len(WORDS), DIM - 1))
OWN = {w: np.r_[0.0, v] / np.linalg.norm(v) for w, v in zip(WORDS, _RANDOM, strict=True)}


def _tokens(words: list[str], per_word: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Activations: every s-word carries e0 plus its own direction; small noise."""
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for w in words:
        for _ in range(per_word):
            rows.append((S * E[0] if w.startswith("s") else 0) + OWN[w] + 0.02 * rng.standard_normal(DIM))
            names.append(f" {w}")
    return torch.tensor(np.array(rows), dtype=torch.float32), np.array(names, dtype=object)


def _case() -> LetterData:
    x_train, w_train = _tokens(TRAIN, 10, 0)
    x_test, w_test = _tokens(TEST, 20, 1)
    return LetterData(x_train, w_train, x_test, w_test)


def _codes(data: LetterData, split: str, absorbed: bool) -> np.ndarray:
    """Hand-made codes: latent 0 is "starts with s", latent 1 + i word i; with `absorbed`, the "short" latent has
    decoder S e0 + own("short") (it carries the s-feature) and latent 0 stays off on "short"."""
    words = data.words_train if split == "train" else data.words_test
    codes = np.zeros((len(words), 1 + len(WORDS)))
    for i, w in enumerate(words):
        w = w.strip()
        j = 1 + WORDS.index(w)
        if w == "short" and absorbed:
            codes[i, j] = np.sqrt(S**2 + 1)
            continue
        codes[i, j] = 1.0
        if w.startswith("s"):
            codes[i, 0] = S
    return codes


def _dictionary(absorbed: bool) -> Dictionary:
    atoms = np.array([E[0], *(OWN[w] for w in WORDS)])
    if absorbed:
        atoms[1 + WORDS.index("short")] = (S * E[0] + OWN["short"]) / np.sqrt(S**2 + 1)
    return Dictionary(torch.tensor(atoms, dtype=torch.float64), normalise=False)


def _s_probe(data: LetterData):
    probes = {p.letter: p for p in fit_letter_probes(data)}
    assert probes["s"].f1 == 1.0 and probes["s"].direction[0] > 0.8  # the probe finds the s-direction
    return [probes["s"]]


def test_hand_built_absorption_is_detected() -> None:
    data = _case()
    probes = _s_probe(data)
    result = absorption_scores(_codes(data, "train", True), _codes(data, "test", True), data, probes,
                               _dictionary(True))  # fmt: skip
    row = result.letters.iloc[0]
    assert row["main_latents"] == "0"
    assert row["n_tokens"] == 40  # "sea" and "short" test tokens
    assert row["absorption_rate"] == pytest.approx(0.5)  # exactly the "short" tokens
    assert result.rate == pytest.approx(0.5) and result.full.sum() == 20
    assert result.mean_fraction == pytest.approx(0.5)  # all of the projection on "short", none on "sea"


def test_feature_kept_apart_is_not_absorption() -> None:
    data = _case()
    probes = _s_probe(data)
    result = absorption_scores(_codes(data, "train", False), _codes(data, "test", False), data, probes,
                               _dictionary(False))  # fmt: skip
    assert result.rate == 0.0 and result.mean_fraction == 0.0


def test_a_lost_feature_is_not_absorption() -> None:
    """On "short" nothing fires along e0: the feature is missing, not absorbed (no latent carries it)."""
    data = _case()
    probes = _s_probe(data)
    test = _codes(data, "test", False)
    test[np.char.strip(data.words_test.astype(str)) == "short", 0] = 0.0
    result = absorption_scores(_codes(data, "train", False), test, data, probes, _dictionary(False))
    assert result.rate == 0.0


def test_main_latents_grow_while_f1_jumps() -> None:
    """Two latents that split the s-words between them are both main latents; a third, redundant one is not."""
    positive = np.array([True] * 4 + [False] * 4)
    codes = np.zeros((8, 3))
    codes[:2, 0] = codes[2:4, 1] = 1.0
    codes[:2, 2] = 1.0  # duplicates latent 0
    atoms = np.eye(3, 4)
    atoms[:, 0] = 1.0
    assert sorted(main_latents(codes, positive, atoms, np.eye(4)[0])) == [0, 1]


def test_single_word_tokens_and_word_split() -> None:
    pieces = {0: " the", 1: " fox", 2: "es", 3: ".", 4: " A", 5: " 42"}

    class Tok:
        def decode(self, ids: list[int]) -> str:
            return "".join(pieces[i] for i in ids)

    mask, words = single_word_tokens(torch.tensor([[0, 1, 2, 3, 4, 5]]), Tok())
    assert mask.tolist() == [[True, False, False, False, True, False]]  # " fox" continues as "foxes"
    assert words[0, 0] == " the"
    x = torch.arange(12.0).reshape(6, 2)
    names = np.array([" a", " b", " A", " c", " b", " d"], dtype=object)
    data = split_by_word(x, names, seed=3)
    assert not {w.strip().lower() for w in data.words_train} & {w.strip().lower() for w in data.words_test}
    assert data.x_train.shape[0] + data.x_test.shape[0] == 6
    with pytest.raises(SparseInferError, match="one word per"):
        split_by_word(x, names[:3])
    with pytest.raises(SparseInferError, match="unknown absorption threshold"):
        absorption_scores(np.zeros((1, 1)), np.zeros((1, 1)), data, [], _dictionary(False), bogus=1.0)


def _unit(cos: float, axis: int, dim: int = 12) -> np.ndarray:
    """A unit atom with cosine `cos` to e0, the rest along e_axis."""
    atom = np.zeros(dim)
    atom[0], atom[axis] = cos, np.sqrt(1 - cos**2)
    return atom


def test_main_latent_firing_everywhere_gives_no_absorption() -> None:
    """The main latent fires on every probe-true token and carries its whole projection R = 1; ten unrelated
    latents (cos +-0.05) add +0.1 or -0.1 each. Counting every positive projection as absorbed (this module's old
    fraction, 1 - main / positive) gave 1/3 here; SAEBench's fraction and the full-absorption rate are 0."""
    p = np.eye(12)[0]
    atoms = np.array([p, *(_unit(0.05 * (-1) ** i, 1 + i) for i in range(10))])
    codes = np.zeros((5, 11))
    codes[:, 0] = 1.0
    codes[:, 1:] = 2.0
    x = np.tile(p, (5, 1)) + 0.3 * np.eye(12)[11]
    contrib = codes * (atoms @ p)
    assert contrib.sum(axis=1) == pytest.approx(np.ones(5))  # the reconstruction's projection is exactly R
    assert 1 - 1.0 / contrib.clip(min=0).sum(axis=1) == pytest.approx(np.full(5, 1 / 3))  # the old fraction
    full, fraction = absorption_events(codes, x, atoms, np.zeros(12), p, [0])
    assert not full.any()
    assert fraction.tolist() == [0.0] * 5


def test_absorption_events_known_values() -> None:
    """R = (x - b) . p = 1 on every token (bias b = 0.5 e0 + e5, x = 1.5 e0 + e5). Latent 0 is the main latent,
    latent 1 an aligned absorber (cos 0.6), latent 2 an absorber with cos 0.05 (>= 0.025 for full absorption,
    < 0.1 for the fraction), latent 3 aligned (cos 0.5) but small."""
    p = np.eye(12)[0]
    atoms = np.array([p, _unit(0.6, 1), _unit(0.05, 2), _unit(0.5, 3)])
    bias = 0.5 * p + np.eye(12)[5]
    x = np.tile(1.5 * p + np.eye(12)[5], (6, 1))
    codes = np.array([
        [1.0, 0, 0, 0],  # main carries R: neither
        [0.5, 0.5 / 0.6, 0, 0],  # main 0.5, absorber 0.5: partial, fraction 0.5 / (0.5 + 0.5)
        [0.25, 1.5 / 0.6, 0, 0],  # main 0.25, absorber 1.5 > R - M: a = 0.75, fraction 0.75
        [0, 0.9 / 0.6, 0, 0],  # main off, absorber 0.9 >= 0.4 R: full absorption, fraction 1
        [0, 0, 0.9 / 0.05, 0],  # main off, unaligned absorber: full (cos 0.05 >= 0.025), fraction 0 (cos < 0.1)
        [0.7, 0, 0, 0.3 / 0.5],  # main 0.7, aligned latent 0.3 < 0.4 R: no absorption
    ])  # fmt: skip
    full, fraction = absorption_events(codes, x, atoms, bias, p, [0])
    assert full.tolist() == [False, False, False, True, True, False]
    assert fraction == pytest.approx([0.0, 0.5, 0.75, 1.0, 0.0, 0.0])
    _, jointly = absorption_events(codes[[5]], x[[5]], atoms, bias, p, [0], absorber_fraction=0.25)
    assert jointly == pytest.approx([0.3])  # a lower share threshold lets latent 3 count: 0.3 / (0.3 + 0.7)
    flipped, none = absorption_events(codes, -x + 2 * bias, atoms, bias, p, [0])  # R = -1: nothing to absorb
    assert not flipped.any() and none.tolist() == [0.0] * 6


def test_absorption_on_half_the_tokens() -> None:
    """Half the probe-true tokens are fully absorbed (main latent off, aligned latent carries R), half are carried
    by the main latent alone: rate 0.5 and fraction 0.5 exactly."""
    p = np.eye(12)[0]
    atoms = np.array([p, _unit(0.6, 1)])
    codes = np.array([[1.0, 0.0]] * 4 + [[0.0, 1 / 0.6]] * 4)
    full, fraction = absorption_events(codes, np.tile(p, (8, 1)), atoms, np.zeros(12), p, [0])
    assert full.mean() == 0.5 and fraction.mean() == pytest.approx(0.5)


def test_only_scored_test_tokens_are_encoded() -> None:
    """`evaluate_absorption` encodes the train tokens and only the test tokens that are scored (the "sea" and
    "short" probe true positives here), and gives exactly what scoring the codes of every test token gives."""
    from sparseinfer.encoders.base import create

    data = _case()
    probes = _s_probe(data)
    dictionary = _dictionary(True)
    encoder = create("omp", k=2)
    scored = scored_test_tokens(data, probes)
    assert scored.sum() == 40 and scored.sum() < len(scored)
    every = absorption_scores(encode(encoder, dictionary, data.x_train, 1.0), encode(encoder, dictionary,
                              data.x_test, 1.0), data, probes, dictionary)  # fmt: skip
    subset = evaluate_absorption(encoder, dictionary, data, probes)
    assert np.array_equal(subset.full, every.full) and np.array_equal(subset.fraction, every.fraction)
    assert subset.letters.equals(every.letters)
