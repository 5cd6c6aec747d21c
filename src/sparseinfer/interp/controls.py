"""Controls that show the scorer measures something, run through the same examples -> explain -> score path as
real latents (`latent.score_latent`):

- **planted** features with a known meaning: indicators of specific tokens (" the", " and", ...) or token classes
  (digits, capitalised words, punctuation, ...), computed from the store's token ids as an "encoder" whose latent
  j is 1 where predicate j holds. A scorer that works must score them high.
- **shuffled** explanations: the planted latents' explanations permuted across latents (no latent keeps its own,
  `shuffle_order`), so each explanation is scored on another feature's windows. A scorer that works must score them at
  chance.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from sparseinfer.data.store import ActivationStore
from sparseinfer.errors import SparseInferError
from sparseinfer.interp.examples import CodeCache, LatentExamples, build_examples

Predicate = Callable[[str], bool]


def _word(*words: str) -> Predicate:
    wanted = set(words)
    return lambda t: t.strip().lower() in wanted and t.strip().isalpha()


def _punct(chars: str) -> Predicate:
    return lambda t: t.strip() != "" and all(c in chars for c in t.strip())


PLANTED: dict[str, Predicate] = {
    "the word 'the'": _word("the"),
    "the word 'and'": _word("and"),
    "the word 'of'": _word("of"),
    "the word 'to'": _word("to"),
    "the word 'I'": lambda t: t.strip() == "I",
    "the word 'my'": _word("my"),
    "the word 'you'": _word("you"),
    "the word 'not'": _word("not"),
    "the word 'with'": _word("with"),
    "the word 'is'": _word("is"),
    "the word 'that'": _word("that"),
    "the word 'be'": _word("be"),
    "the word 'love'": _word("love"),
    "the word 'lord'": _word("lord"),
    "the words 'thou', 'thee', 'thy'": _word("thou", "thee", "thy", "thine"),
    "commas": _punct(","),
    "full stops": _punct("."),
    "question marks": _punct("?"),
    "exclamation marks": _punct("!"),
    "colons and semicolons": _punct(":;"),
    "digits": lambda t: any(c.isdigit() for c in t),
    "words written in capitals (names)": lambda t: len(t.strip()) >= 2 and t.strip().isalpha() and t.strip().isupper(),
    "capitalised words": lambda t: t.startswith(" ") and t[1:2].isupper() and t[2:].islower() and t[1:].isalpha(),
    "words ending in -ing": lambda t: bool(re.fullmatch(r"\s?[a-z]+ing", t)) and len(t.strip()) > 4,
    "line breaks": lambda t: "\n" in t,
}


def planted_cache(store: ActivationStore, tokenizer: Any, features: dict[str, Predicate]) -> CodeCache:
    """A `CodeCache` whose latent j is 1.0 at every (non-BOS) token where the j-th predicate of `features` holds."""
    if not features:
        raise SparseInferError("give at least one planted feature")
    ids = np.concatenate([store.read_shard(i)["token_ids"].numpy() for i in range(len(store.manifest.shards))])
    start = 1 if store.manifest.bos else 0
    body = ids[:, start:]
    vocab = np.unique(body)
    strings = {int(t): tokenizer.decode([int(t)]) for t in vocab}
    contexts, positions, latents = [], [], []
    for j, predicate in enumerate(features.values()):
        hits = np.array([t for t in vocab.tolist() if predicate(strings[t])], dtype=body.dtype)
        c, p = np.nonzero(np.isin(body, hits))
        contexts.append(c)
        positions.append(p + start)
        latents.append(np.full(c.size, j))
    ctx, pos, lat = (np.concatenate(x).astype(np.int64) for x in (contexts, positions, latents))
    order = np.lexsort((pos, ctx, lat))
    meta = {"planted": list(features), "model": store.manifest.model, "bos": store.manifest.bos}
    return CodeCache(ctx[order], pos[order], lat[order], np.ones(order.size, np.float32), int(body.size),
                     len(features), meta)  # fmt: skip


def planted_examples(store: ActivationStore, tokenizer: Any, n: int, min_count: int, max_frequency: float = 0.2,
                     features: dict[str, Predicate] | None = None,
                     **windows: Any) -> tuple[list[LatentExamples], list[str]]:  # fmt: skip
    """Examples of up to `n` planted features that fire at least `min_count` times and on at most `max_frequency`
    of the tokens (so silent windows exist), with their names; `windows` go to `build_examples`."""
    features = PLANTED if features is None else features
    cache = planted_cache(store, tokenizer, features)
    counts = cache.counts()
    keep = [j for j in range(len(features)) if min_count <= counts[j] <= max_frequency * cache.n_tokens][:n]
    if not keep:
        raise SparseInferError("no planted feature fires often enough in this store; harvest more text")
    names = list(features)
    return build_examples(cache, store, tokenizer, keep, **windows), [names[j] for j in keep]


def shuffle_order(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(order, source): a random order of range(n), and for each latent the latent whose explanation it gets
    in the shuffled control: its predecessor in `order` (cyclically), so no latent keeps its own (n >= 2) and
    the control can run as soon as the predecessor has been explained."""
    if n < 2:
        raise SparseInferError("shuffling explanations needs at least two latents")
    order = np.random.default_rng(seed).permutation(n)
    source = np.empty(n, dtype=np.int64)
    source[order] = np.roll(order, 1)
    return order, source


def neutral_negatives(record: LatentExamples, feature: str) -> LatentExamples:
    """`record` without the negatives whose marked token is planted `feature`: in the shuffled control a latent is
    scored under `feature`'s explanation, and negatives are other planted features' peaks, so a negative at
    `feature` itself is one the judge rightly calls "yes"; kept, they pushed the shuffled detection score below
    chance (0.43 on 24 latents, docs/llm-study.md)."""
    holds = PLANTED.get(feature)
    if holds is None:
        return record
    keep = [ex for ex in record.negatives if not holds(ex.tokens[ex.peak])]
    return dataclasses.replace(record, negatives=keep)


def shuffled_explanations(explanations: list[str], seed: int = 0) -> list[str]:
    """`explanations` permuted as the shuffled control does (`shuffle_order`): none stays at its own index."""
    _, source = shuffle_order(len(explanations), seed)
    return [explanations[int(i)] for i in source]


def control_summary(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Bootstrap mean and 95% interval of each metric per control ("planted", "shuffled")."""
    from sparseinfer.interp.stats import summarise

    return summarise(rows, [m for m in metrics if m in rows], by="control")
