"""Text sources as documents, a deterministic document-level train/test split, and tokenisation into contexts.

Sources: the named corpora of `lm.corpora` (`sotu`, `brown`, `wikipedia`, `shakespeare`) and their mix `english`
(the default: all four), a local `.txt`/`.md` file or a folder of them (one document per file), a `.jsonl` file (one
document per line, field `text`), or `hf:NAME[:CONFIG][@SPLIT]` for a Hugging Face dataset (where a hub is
reachable). Every source is split by document: in its canonical order (file order, dump order), every
`test_every`-th document is `test`, the rest `train`; a mix splits each part on its own, so the held-out documents
of `english` are exactly the held-out documents of its parts. With a `seed`, the documents of a split come in a
seeded random order across all parts; `tokenise_contexts(..., mix=N)` then draws contexts from N documents at once,
so any prefix of a harvest is a mixture of sources and documents.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseinfer.errors import SparseInferError
from sparseinfer.lm.corpora import CORPORA, MIXES, Document

DEFAULT_CORPUS = "english"
NAMED_SOURCES = (*MIXES, *CORPORA)
_TEXT_SUFFIXES = (".txt", ".md")
_HF_SHUFFLE_BUFFER = 10_000


def _files(path: Path) -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*") if p.suffix in _TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise SparseInferError(f"no .txt or .md files under {path}")
    for f in files:
        name = str(f.relative_to(path)) if path.is_dir() else f.name
        yield Document(str(path), name, f.read_text(encoding="utf-8", errors="replace"))


def _jsonl(path: Path, field: str) -> Iterator[Document]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Document(str(path), str(number), json.loads(line)[field])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SparseInferError(f"{path}:{number}: not a JSON object with a {field!r} string") from None


def _hf(spec: str, field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise SparseInferError("hf: sources need the datasets package") from None
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        data = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as err:  # any hub or network failure becomes one clear line
        raise SparseInferError(f"cannot load dataset {name!r}: {str(err).splitlines()[0]}") from None
    for i, row in enumerate(data):
        yield Document(f"hf:{spec}", str(i), row[field])


def _parts(source: str, field: str) -> list[Iterable[Document]]:
    """The canonical-order document streams of `source` (one per part of a mix)."""
    if source in MIXES:
        return [CORPORA[name]() for name in MIXES[source]]
    if source in CORPORA:
        return [CORPORA[source]()]
    if source.startswith("hf:"):
        return [_hf(source[3:], field)]
    path = Path(source).expanduser()
    if not path.exists():
        names = ", ".join(NAMED_SOURCES)
        raise SparseInferError(f"text source {source!r} is neither a file, a folder, 'hf:NAME' nor one of {names}")
    return [_jsonl(path, field) if path.suffix == ".jsonl" else _files(path)]


def iter_corpus(
    source: str = DEFAULT_CORPUS,
    split: str = "train",
    test_every: int = 10,
    field: str = "text",
    seed: int | None = None,
) -> Iterator[Document]:
    """Yield the `Document`s of `source` in `split` ('train', 'test' or 'all').

    Every `test_every`-th document of each part (in its canonical order) is `test`. `seed=None` keeps the
    canonical order (parts one after another); an integer shuffles the split's documents across parts with that
    seed (this reads the whole split first; an `hf:` stream is shuffled through a buffer of 10,000 documents).
    """
    if split not in ("train", "test", "all"):
        raise SparseInferError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if test_every < 2:
        raise SparseInferError(f"test_every must be at least 2, got {test_every}")

    def chosen() -> Iterator[Document]:
        for part in _parts(source, field):
            for i, doc in enumerate(part):
                is_test = i % test_every == test_every - 1
                if split == "all" or (split == "test") == is_test:
                    yield doc

    if seed is None:
        yield from chosen()
        return
    rng = random.Random(seed)
    if source.startswith("hf:"):  # a streamed dataset may be endless: shuffle through a bounded buffer
        yield from _buffer_shuffle(chosen(), rng, _HF_SHUFFLE_BUFFER)
        return
    docs = list(chosen())
    rng.shuffle(docs)
    yield from docs


def _buffer_shuffle(docs: Iterable[Document], rng: random.Random, size: int) -> Iterator[Document]:
    """An approximately shuffled unbounded stream: hold `size` documents, yield a random one as each arrives."""
    buffer: list[Document] = []
    for doc in docs:
        if len(buffer) < size:
            buffer.append(doc)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = doc
    rng.shuffle(buffer)
    yield from buffer


def iter_documents(
    source: str = DEFAULT_CORPUS,
    split: str = "train",
    test_every: int = 10,
    field: str = "text",
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the texts of `iter_corpus(source, split, test_every, field, seed)`."""
    for doc in iter_corpus(source, split, test_every, field, seed):
        yield doc.text


def _source_and_text(doc: Document | str) -> tuple[str, str]:
    return (doc.source, doc.text) if isinstance(doc, Document) else ("text", doc)


def tokenise_contexts(
    documents: Iterable[Document | str],
    tokenizer: Any,
    context_length: int,
    bos: bool = True,
    cross_document: bool = True,
    max_contexts: int | None = None,
    mix: int = 1,
    seed: int = 0,
    stats: dict[str, dict[str, int]] | None = None,
) -> Iterator[Tensor]:
    """Yield int64 token-id rows of `context_length`.

    `bos`: every context starts with the tokenizer's BOS token (its EOS if it has none).
    `cross_document`: a document's tail shorter than a context continues (after that separator token) with the next
    document; otherwise the tail is dropped (no context spans two documents).
    `mix`: how many documents are open at once; each context comes from one of them drawn at random (`seed`) in
    proportion to its tokens left, so consecutive contexts come from different documents and a prefix holds the
    sources in proportion to their tokens. `mix=1` reads the documents in order.
    `stats`, when given, is filled per source with the documents and tokens (BOS and separators excluded) that the
    yielded contexts hold.
    """
    if context_length < 2:
        raise SparseInferError(f"context_length must be at least 2, got {context_length}")
    if mix < 1:
        raise SparseInferError(f"mix must be at least 1, got {mix}")
    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise SparseInferError("the tokenizer has neither a BOS nor an EOS token")
    prefix = [sep] if bos else []
    body = context_length - len(prefix)
    rng = random.Random(seed)
    docs = iter(documents)
    sources: list[str] = []  # source of each opened document, by its index (the token labels below)

    def next_doc() -> tuple[list[int], list[int]] | None:
        for doc in docs:
            source, text = _source_and_text(doc)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids:
                sources.append(source)
                return list(ids), [len(sources) - 1] * len(ids)
        return None

    def ready(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]] | None:
        """Extend a stream with further documents until it holds one context body (None when the text ran out)."""
        while len(ids) < body:
            new = next_doc()
            if new is None:
                return None
            if cross_document and ids:
                ids, labels = ids + [sep] + new[0], labels + [-1] + new[1]
            else:
                ids, labels = new
        return ids, labels

    slots: list[list[Any]] = []  # [ids, labels, position]
    for _ in range(mix):
        stream = ready([], [])
        if stream is None:
            break
        slots.append([*stream, 0])
    seen: set[int] = set()
    count = 0
    while slots and (max_contexts is None or count < max_contexts):
        # a slot in proportion to the tokens it has left: every open token is equally likely next, so a prefix holds
        # the sources in proportion to their tokens (a uniform pick would favour sources of many short documents)
        i = rng.choices(range(len(slots)), weights=[len(s[0]) - s[2] for s in slots])[0] if len(slots) > 1 else 0
        ids, labels, pos = slots[i]
        yield torch.tensor(prefix + ids[pos : pos + body], dtype=torch.long)
        count += 1
        if stats is not None:
            for label, n in Counter(labels[pos : pos + body]).items():
                if label < 0:
                    continue
                entry = stats.setdefault(sources[label], {"documents": 0, "tokens": 0})
                entry["tokens"] += n
                if label not in seen:
                    seen.add(label)
                    entry["documents"] += 1
        pos += body
        if len(ids) - pos >= body:
            slots[i][2] = pos
            continue
        stream = ready(ids[pos:], labels[pos:])
        if stream is None:
            slots.pop(i)
        else:
            slots[i] = [*stream, 0]


def count_tokens(source: str, tokenizer: Any, split: str = "all") -> dict[str, dict[str, int]]:
    """Documents and tokens (by `tokenizer`, no special tokens) per source of `source`'s `split`: the supply a
    harvest can draw from."""
    counts: dict[str, dict[str, int]] = {}
    for doc in iter_corpus(source, split):
        entry = counts.setdefault(doc.source, {"documents": 0, "tokens": 0})
        entry["documents"] += 1
        entry["tokens"] += len(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
    return counts
