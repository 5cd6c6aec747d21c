"""First-letter feature absorption (Chanin et al., "A is for Absorption", as SAEBench scores it).

A ground-truth probe per letter L (scikit-learn logistic regression, one-vs-rest, on dense activations of
single-word tokens; train and test tokens are different WORDS, so the probe must generalise) gives a direction p.
For one encoder's codes on one dictionary:

1. main latents: among latents whose decoder atom has cosine >= `main_cosine` with p, the one whose firing best
   predicts "starts with L" on the train tokens (F1), then greedily the next while the F1 of "any main latent fires"
   rises by >= `f1_jump` (at most `max_main`), as SAEBench grows its k-sparse probe;
2. on the test tokens where the probe fires and the word does start with L (SAEBench's probe true positives, main
   latents firing or not), with R = (x - b_dec) . p the probe projection the codes must explain and
   c_j (atom_j . p) latent j's share of the reconstruction's projection:
   - full absorption: no main latent fires, R > 0, and the latent with the largest projection has
     cos(atom, p) >= `absorber_cosine` and carries at least `absorber_fraction` of R;
   - absorption fraction (full and partial absorption): the absorbers are the at most `max_absorbers` non-main
     latents with cos(atom, p) >= `fraction_cosine` and the largest positive projections, A their sum and M the
     main latents' projection. It is 0 when R <= 0, M >= R or A < `absorber_fraction` R; 1 when M <= 0; else
     a / (a + M) with a = min(A, R - M).

Both are SAEBench's definitions, per token, then averaged over the letter's probe true positives. The fraction
does NOT count every latent with a positive projection as absorbing: at L0 16-64 a dozen unrelated latents (small
cosines of either sign) add positive projections on every token, and counting them (as this module once did) put
the fraction near 1 for any dictionary.

Only letters whose probe reaches test F1 >= `min_probe_f1` are scored; `AbsorptionResult.rate` and
`mean_fraction` average over those letters (as SAEBench), `long_rows` (the study's rows) pools their tokens.
Codes are the encoder's on the SAE's input scale; atoms are the dictionary's rows, so any inference (FISTA, OMP,
ITO) on the same dictionary is scored the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits
from torch import Tensor

from sparseinfer.codes import as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError

MAIN_COSINE = 0.1
ABSORBER_COSINE = 0.025  # SAEBench's alignment threshold of the absorbing latent (full absorption)
FRACTION_COSINE = 0.1  # SAEBench's alignment threshold of the absorbing latents (absorption fraction)
ABSORBER_FRACTION = 0.4  # SAEBench's share of the probe projection the absorbing latent(s) must carry
MAX_ABSORBERS = 3  # SAEBench's most latents that may jointly absorb (absorption fraction)
F1_JUMP = 0.03  # SAEBench's F1 jump for adding a main latent
MAX_MAIN = 3
MIN_PROBE_F1 = 0.6  # SAEBench's minimum ground-truth probe F1
MIN_COUNT = 8
_WORD = re.compile(r"^ [A-Za-z]+$")


@dataclass
class LetterData:
    """Single-word tokens split by word into probe-train and test: raw activations and each token's word."""

    x_train: Tensor
    words_train: np.ndarray
    x_test: Tensor
    words_test: np.ndarray

    def letters(self, split: str) -> np.ndarray:
        """The lowercase first letter of each token's word in `split` ('train' or 'test')."""
        words = self.words_train if split == "train" else self.words_test
        return np.array([w.strip()[0].lower() for w in words])


@dataclass
class LetterProbe:
    """The ground-truth probe of one letter: unit direction in activation space and its test F1."""

    letter: str
    direction: np.ndarray
    f1: float
    fires_test: np.ndarray  # probe predicts the letter on each test token
    extra: dict[str, Any] = field(default_factory=dict)


def single_word_tokens(token_ids: Tensor, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Positions of tokens that are a whole word: the token decodes to a space and letters only, and the next
    token (if any) does not continue the word with a letter. Returns (mask (contexts, seq), word per position)."""
    ids = token_ids.tolist()
    vocab = {t: tokenizer.decode([t]) for t in {t for row in ids for t in row}}
    mask = np.zeros(token_ids.shape, dtype=bool)
    words = np.full(token_ids.shape, "", dtype=object)
    for i, row in enumerate(ids):
        for j, t in enumerate(row):
            text = vocab[t]
            follows = vocab[row[j + 1]] if j + 1 < len(row) else " "
            if _WORD.match(text) and not follows[:1].isalpha():
                mask[i, j], words[i, j] = True, text
    return mask, words


def split_by_word(x: Tensor, words: np.ndarray, test_fraction: float = 0.5, seed: int = 0) -> LetterData:
    """Probe-train and test tokens from disjoint sets of (lowercased) words, drawn with `seed`."""
    if len(words) != x.shape[0] or len(words) == 0:
        raise SparseInferError(f"need one word per activation row, got {len(words)} words for {x.shape[0]} rows")
    vocab = np.array(sorted({w.strip().lower() for w in words}))
    rng = np.random.default_rng(seed)
    test_words = set(rng.permutation(vocab)[: round(test_fraction * len(vocab))])
    test = np.array([w.strip().lower() in test_words for w in words])
    return LetterData(x[torch.from_numpy(~test)], words[~test], x[torch.from_numpy(test)], words[test])


def fit_letter_probes(data: LetterData, min_count: int = MIN_COUNT, seed: int = 0) -> list[LetterProbe]:
    """One logistic-regression probe per letter (on centred activations, class-balanced) for every letter with
    >= `min_count` tokens of it and of other letters in both splits."""
    train_l, test_l = data.letters("train"), data.letters("test")
    xs, xt = data.x_train.double().numpy(), data.x_test.double().numpy()
    mean = xs.mean(axis=0)  # centred, not standardised: the L2 penalty then acts in activation space itself
    zs, zt = xs - mean, xt - mean
    with threadpool_limits(limits=1, user_api="blas"):  # small fits: BLAS threads only wait (probing module doc)
        probes = _fit_probes(zs, zt, train_l, test_l, min_count, seed)
    return probes


def _fit_probes(zs: np.ndarray, zt: np.ndarray, train_l: np.ndarray, test_l: np.ndarray, min_count: int,
                seed: int) -> list[LetterProbe]:  # fmt: skip
    probes = []
    for letter in sorted(set(train_l) & set(test_l)):
        y, yt = train_l == letter, test_l == letter
        if min(y.sum(), yt.sum(), (~y).sum(), (~yt).sum()) < min_count:
            continue
        model = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed).fit(zs, y)
        w = model.coef_[0]
        fires = model.predict(zt).astype(bool)
        probes.append(LetterProbe(letter, w / np.linalg.norm(w), float(f1_score(yt, fires)), fires))
    return probes


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    return 2 * tp / (pred.sum() + truth.sum()) if pred.sum() + truth.sum() else 0.0


def main_latents(
    codes: np.ndarray,
    positive: np.ndarray,
    atoms: np.ndarray,
    direction: np.ndarray,
    main_cosine: float = MAIN_COSINE,
    f1_jump: float = F1_JUMP,
    max_main: int = MAX_MAIN,
) -> list[int]:
    """The latents that stand for the feature (see module doc, step 1); empty when no aligned latent fires."""
    cos = atoms @ direction / np.linalg.norm(atoms, axis=1)
    candidates = [int(i) for i in np.flatnonzero(cos >= main_cosine)]
    fires = codes > 0
    chosen: list[int] = []
    best = 0.0
    while candidates and len(chosen) < max_main:
        union = fires[:, chosen].any(axis=1) if chosen else np.zeros(len(positive), dtype=bool)
        scores = [_f1(union | fires[:, i], positive) for i in candidates]
        pick = int(np.argmax(scores))
        if scores[pick] - best < (f1_jump if chosen else 1e-12):
            break
        best = scores[pick]
        chosen.append(candidates.pop(pick))
    return chosen


def absorption_events(
    codes: np.ndarray,
    x: np.ndarray,
    atoms: np.ndarray,
    bias: np.ndarray,
    direction: np.ndarray,
    main: Sequence[int],
    absorber_cosine: float = ABSORBER_COSINE,
    absorber_fraction: float = ABSORBER_FRACTION,
    fraction_cosine: float = FRACTION_COSINE,
    max_absorbers: int = MAX_ABSORBERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per token (rows of codes and of `x` on the SAE's scale): full absorption (bool) and absorption fraction
    (module doc, step 2)."""
    proj = atoms @ direction
    cos = proj / np.linalg.norm(atoms, axis=1)
    contrib = codes * proj  # each latent's share of the reconstruction's projection onto the probe direction
    required = (x - bias) @ direction
    main_idx = np.asarray(list(main), dtype=np.int64)
    is_main = np.zeros(atoms.shape[0], dtype=bool)
    is_main[main_idx] = True
    main_fires = (codes[:, main_idx] > 0).any(axis=1) if len(main_idx) else np.zeros(len(codes), dtype=bool)
    top = contrib.argmax(axis=1)
    top_contrib = contrib[np.arange(len(codes)), top]
    full = ~main_fires & (required > 0) & (cos[top] >= absorber_cosine) & (top_contrib >= absorber_fraction * required)
    from_main = contrib[:, main_idx].sum(axis=1) if len(main_idx) else np.zeros(len(codes))
    eligible = (cos >= fraction_cosine) & ~is_main
    candidates = np.where(eligible[None, :] & (contrib > 0), contrib, 0.0)
    n_top = min(int(max_absorbers), candidates.shape[1])
    absorbed = -np.sort(-candidates, axis=1)[:, :n_top].sum(axis=1) if n_top > 0 else np.zeros(len(codes))
    partial_ = np.minimum(absorbed, required - from_main)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = partial_ / (partial_ + from_main)
    none = (required <= 0) | (from_main >= required) | (absorbed < absorber_fraction * required)
    fraction = np.where(none, 0.0, np.where(from_main <= 0, 1.0, ratio))
    return full, np.nan_to_num(fraction).clip(0.0, 1.0)


@dataclass
class AbsorptionResult:
    """Per-letter rows, and per evaluated test token (pooled over letters) full absorption and fraction."""

    letters: pd.DataFrame
    full: np.ndarray
    fraction: np.ndarray

    @property
    def rate(self) -> float:
        """Mean over letters of the full-absorption rate."""
        return float(self.letters["absorption_rate"].mean()) if len(self.letters) else float("nan")

    @property
    def mean_fraction(self) -> float:
        """Mean over letters of the absorption fraction."""
        return float(self.letters["absorption_fraction"].mean()) if len(self.letters) else float("nan")

    def long_rows(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Long-format result rows (`base` + task first_letter, k 0, metric, value, ci_low, ci_high, n, letters):
        full-absorption rate and mean absorption fraction over the evaluated tokens, with bootstrap intervals."""
        from sparseinfer.evaluation.probing import interval

        rows = []
        for metric, values in (("absorption_rate", self.full.astype(float)), ("absorption_fraction", self.fraction)):
            low, high = interval(values) if len(values) else (float("nan"), float("nan"))
            value = float(values.mean()) if len(values) else float("nan")
            rows.append(base | {"task": "first_letter", "k": 0, "metric": metric, "value": value, "ci_low": low,
                                "ci_high": high, "n": len(values), "letters": len(self.letters)})  # fmt: skip
        return rows


def encode(encoder: Encoder, dictionary: Dictionary, x: Tensor, scale: float, batch_size: int = 1024) -> np.ndarray:
    """Dense float64 codes of raw activations `x` (scaled by `scale` as the encoder's inputs)."""
    out = []
    with torch.no_grad():
        for xb in x.split(batch_size):
            xs = xb.to(dictionary.atoms.device, dictionary.atoms.dtype) * scale
            out.append(as_dense(encoder(xs, dictionary)).double().cpu())
    return torch.cat(out).numpy()


def absorption_scores(
    codes_train: np.ndarray,
    codes_test: np.ndarray,
    data: LetterData,
    probes: list[LetterProbe],
    dictionary: Dictionary,
    scale: float = 1.0,
    min_probe_f1: float = MIN_PROBE_F1,
    **thresholds: float,
) -> AbsorptionResult:
    """Absorption of one set of codes (train and test tokens of `data`) on `dictionary` for every usable probe.
    `thresholds`: main_cosine, f1_jump, max_main, absorber_cosine, absorber_fraction, fraction_cosine,
    max_absorbers (see module doc)."""
    main_keys = {"main_cosine", "f1_jump", "max_main"}
    unknown = set(thresholds) - main_keys - {"absorber_cosine", "absorber_fraction", "fraction_cosine", "max_absorbers"}
    if unknown:
        raise SparseInferError(f"unknown absorption threshold(s) {sorted(unknown)}")
    atoms = dictionary.atoms.detach().double().cpu().numpy()
    bias = np.zeros(atoms.shape[1]) if dictionary.bias is None else dictionary.bias.detach().double().cpu().numpy()
    x_test = data.x_test.double().numpy() * scale
    train_l, test_l = data.letters("train"), data.letters("test")
    rows, fulls, fractions = [], [], []
    for probe in probes:
        if probe.f1 < min_probe_f1:
            continue
        main_kw = {k: v for k, v in thresholds.items() if k in main_keys}
        main = main_latents(codes_train, train_l == probe.letter, atoms, probe.direction, **main_kw)  # type: ignore[arg-type]
        where = probe.fires_test & (test_l == probe.letter)
        if not where.any():
            continue
        abs_kw = {k: v for k, v in thresholds.items() if k not in main_keys}
        full, fraction = absorption_events(codes_test[where], x_test[where], atoms, bias, probe.direction, main,
                                           **abs_kw)  # fmt: skip
        fulls.append(full)
        fractions.append(fraction)
        rows.append({"letter": probe.letter, "probe_f1": probe.f1, "main_latents": ",".join(map(str, main)),
                     "n_tokens": int(where.sum()), "absorption_rate": float(full.mean()),
                     "absorption_fraction": float(fraction.mean())})  # fmt: skip
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return AbsorptionResult(pd.DataFrame(rows), cat(fulls).astype(bool), cat(fractions))


def evaluate_absorption(
    encoder: Encoder,
    dictionary: Dictionary,
    data: LetterData,
    probes: list[LetterProbe],
    scale: float = 1.0,
    **thresholds: float,
) -> AbsorptionResult:
    """Encode `data`'s train tokens and the test tokens that are scored (probe true positives of a letter whose
    probe reaches `min_probe_f1`; the others are never read) with `encoder`, and score their absorption (see
    module doc)."""
    codes_train = encode(encoder, dictionary, data.x_train, scale)
    scored = scored_test_tokens(data, probes, float(thresholds.get("min_probe_f1", MIN_PROBE_F1)))
    codes_test = np.zeros((data.x_test.shape[0], codes_train.shape[1]))
    if scored.any():
        codes_test[scored] = encode(encoder, dictionary, data.x_test[torch.from_numpy(scored)], scale)
    return absorption_scores(codes_train, codes_test, data, probes, dictionary, scale, **thresholds)


def scored_test_tokens(data: LetterData, probes: list[LetterProbe], min_probe_f1: float = MIN_PROBE_F1) -> np.ndarray:
    """The test tokens `absorption_scores` reads: a probe true positive of some letter with a usable probe."""
    test_l = data.letters("test")
    scored = np.zeros(len(test_l), dtype=bool)
    for probe in probes:
        if probe.f1 >= min_probe_f1:
            scored |= probe.fires_test & (test_l == probe.letter)
    return scored


def letter_data_from_store(store: Any, tokenizer: Any, n_tokens: int, seed: int = 0) -> LetterData:
    """Up to `n_tokens` single-word tokens of an activation store (first shards first), split by word."""
    xs, words, have = [], [], 0
    skip = 1 if store.manifest.bos else 0
    for i in range(len(store.manifest.shards)):
        shard = store.read_shard(i)
        ids, acts = shard["token_ids"][:, skip:], shard["activations"][:, skip:]
        mask, w = single_word_tokens(ids, tokenizer)
        flat = torch.from_numpy(mask.reshape(-1))
        xs.append(acts.reshape(-1, acts.shape[-1])[flat].float())
        words.append(w.reshape(-1)[mask.reshape(-1)])
        have += int(flat.sum())
        if have >= n_tokens:
            break
    if not have:
        raise SparseInferError("the store holds no single-word tokens to probe for first letters")
    return split_by_word(torch.cat(xs)[:n_tokens], np.concatenate(words)[:n_tokens], seed=seed)
