"""Harvest language-model activations into activation stores (one per hook point), resumably, or on the fly.

Documents are drawn in a seeded random order across the sources (`HarvestConfig.seed`) and contexts from `mix`
documents open at once, so any prefix of a store is a mixture of sources and documents, not one play. The store's
manifest records the seed, the mix, what the model is (`lm.describe_model`) and, per source, the documents and tokens
the stored contexts hold. A harvest holds the lock of its output folder (a second one there is refused), marks its
stores incomplete until it ends, and refuses text that is not text (binary or not UTF-8) or gives no context at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sparseinfer.data.store import MANIFEST, ActivationStore, Manifest
from sparseinfer.errors import SparseInferError
from sparseinfer.lm.corpora import Document
from sparseinfer.lm.hooks import HookPoint, capture, resolve_hook_points
from sparseinfer.lm.model import DEFAULT_MODEL, describe_model, load_model
from sparseinfer.lm.text import DEFAULT_CORPUS, iter_corpus, tokenise_contexts
from sparseinfer.locks import folder_lock

_DTYPES = ("float32", "float16", "bfloat16")
_MAX_UNDECODABLE = 0.01  # share of U+FFFD (bytes that were not UTF-8) above which a document counts as binary


@dataclass(frozen=True)
class HarvestConfig:
    """What to harvest: model, hook patterns, text, contexts, shard size, storage dtype, device.

    `seed` shuffles the documents (across sources) and draws each context from one of `mix` open documents;
    `seed=None` reads documents in their canonical order, one after another (`mix` is then ignored).
    `compute_dtype` is the model's dtype in the forward pass (`dtype` is the storage dtype): bfloat16 ran 3.7x faster
    per CPU-second than float32 on a CPU with AMX (activations within 1% relative error; docs/lm.md), but is slower
    on CPUs without bf16 units. `threads` sets torch's CPU threads for the harvest (None: leave as is); on a machine
    busier than its cores, 1 thread beat 2 by 2-2.5x.
    """

    model: str = DEFAULT_MODEL
    hooks: tuple[str, ...] = ("resid_pre.9",)
    text: str = DEFAULT_CORPUS
    split: str = "train"
    context_length: int = 128
    n_contexts: int = 256
    contexts_per_shard: int = 64
    batch_size: int = 8
    dtype: str = "float32"
    bos: bool = True
    cross_document: bool = True
    device: str = "cpu"
    seed: int | None = 0
    mix: int = 64
    compute_dtype: str = "float32"
    threads: int | None = None

    def text_settings(self) -> dict[str, Any]:
        """The text part of a store's identity (a resumed harvest must use the same)."""
        mix = 1 if self.seed is None else self.mix
        return {"source": self.text, "split": self.split, "cross_document": self.cross_document, "seed": self.seed,
                "mix": mix}  # fmt: skip


@dataclass(frozen=True)
class HarvestResult:
    """Where the stores went and how fast harvesting ran."""

    stores: dict[str, Path]
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Tokens through the model per wall-clock second (this call only)."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def contexts_for(
    config: HarvestConfig, tokenizer: Any, stats: dict[str, dict[str, int]] | None = None
) -> Iterator[torch.Tensor]:
    """The deterministic sequence of context rows a harvest (or an on-the-fly reader) consumes; `stats` is filled
    with the documents and tokens per source of the rows drawn so far."""
    docs = _text_only(iter_corpus(config.text, split=config.split, seed=config.seed), config.text)
    mix = 1 if config.seed is None else config.mix
    return tokenise_contexts(
        docs, tokenizer, config.context_length, config.bos, config.cross_document, config.n_contexts,
        mix=mix, seed=config.seed or 0, stats=stats,
    )  # fmt: skip


def _text_only(docs: Iterator[Document], source: str) -> Iterator[Document]:
    """Pass documents through, refusing binary ones (NUL bytes, or many bytes that were not UTF-8) and files that
    cannot be decoded, so that a harvest never stores the tokens of noise."""
    try:
        for doc in docs:
            text = doc.text if isinstance(doc.text, str) else ""
            if "\x00" in text or text.count("\ufffd") > _MAX_UNDECODABLE * max(len(text), 1):
                raise SparseInferError(f"text {source!r}: document {doc.name!r} is not UTF-8 text (binary?)")
            yield doc
    except UnicodeDecodeError as err:
        raise SparseInferError(f"text {source!r} is not UTF-8 text (byte {err.start}: {err.reason})") from None


def store_folder(out: Path, point: HookPoint, several: bool) -> Path:
    """`out` itself for one hook point; `out/<label>` per point when harvesting several."""
    return out / point.label.replace(":", "-") if several else out


def harvest(
    config: HarvestConfig,
    out: str | Path,
    resume: bool = True,
    progress: bool = True,
    model: tuple[torch.nn.Module, Any] | None = None,
) -> HarvestResult:
    """Run the model over `config.n_contexts` contexts and write each hook point's activations to a sharded store.

    Resuming skips the contexts already stored (the context sequence is deterministic), so an interrupted harvest
    continues where it stopped.
    """
    if config.dtype not in _DTYPES or config.compute_dtype not in _DTYPES:
        raise SparseInferError(f"dtype and compute_dtype must be among {_DTYPES}, got {config.dtype!r}, "
                               f"{config.compute_dtype!r}")  # fmt: skip
    if config.threads is not None and config.threads < 1:
        raise SparseInferError(f"threads must be at least 1, got {config.threads}")
    before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with folder_lock(out, "harvest"):
            return _harvest(config, Path(out), resume, progress, model)
    finally:
        torch.set_num_threads(before)


def _harvest(
    config: HarvestConfig, out: Path, resume: bool, progress: bool, model: tuple[torch.nn.Module, Any] | None
) -> HarvestResult:
    if config.n_contexts < 1 or config.contexts_per_shard < 1 or config.batch_size < 1 or config.mix < 1:
        raise SparseInferError("n_contexts, contexts_per_shard, batch_size and mix must be at least 1")
    lm, tokenizer = model if model is not None else _load(config)
    points = resolve_hook_points(lm, list(config.hooks))
    stores = {}
    model_info = {**describe_model(config.model), "compute_dtype": str(next(lm.parameters()).dtype).split(".")[-1]}
    fresh = {p for p in points if not (store_folder(out, p, len(points) > 1) / MANIFEST).exists()}
    for p in points:
        dim = _width(lm, tokenizer, p, config)
        manifest = Manifest(
            config.model, p.label, config.dtype, dim, config.context_length, config.bos, config.text_settings(),
            model_info=model_info,
        )  # fmt: skip
        stores[p] = ActivationStore.create(store_folder(out, p, len(points) > 1), manifest, resume=resume)
    done = min(s.manifest.n_contexts for s in stores.values())
    if any(s.manifest.n_contexts != done for s in stores.values()):
        raise SparseInferError("the stores of this harvest hold different numbers of contexts; delete and rerun")
    todo = config.n_contexts - done
    for s in stores.values():
        if todo > 0 or not s.manifest.complete:
            s.begin(max(config.n_contexts, done))  # incomplete until `finish` below
    stats: dict[str, dict[str, int]] = {}
    rows = islice(contexts_for(config, tokenizer, stats), done, None)  # skipped rows still count in `stats`
    bar = tqdm(
        total=todo * config.context_length,
        unit="tok",
        unit_scale=True,
        disable=None if progress else True,
        desc="harvest",
    )
    start, tokens = time.perf_counter(), 0
    buffers: dict[HookPoint, list[torch.Tensor]] = {p: [] for p in points}
    ids_buffer: list[torch.Tensor] = []
    try:
        while True:
            batch = list(islice(rows, config.batch_size))
            if batch:
                ids = torch.stack(batch).to(config.device)
                acts = capture(lm, ids, points)
                for p in points:
                    buffers[p].append(acts[p].to("cpu", getattr(torch, config.dtype)))
                ids_buffer.append(ids.cpu())
                tokens += ids.numel()
                bar.update(ids.numel())
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
            buffered = sum(t.shape[0] for t in ids_buffer)
            if buffered >= config.contexts_per_shard or (not batch and buffered):
                _flush(stores, buffers, ids_buffer, config.contexts_per_shard)
            if not batch and not ids_buffer:
                break
        bar.close()
        stored = min(s.manifest.n_contexts for s in stores.values())
        if not stored:
            raise SparseInferError(
                f"text {config.text!r} gives no context of {config.context_length} tokens (empty, or too short); "
                "nothing was stored"
            )
    except SparseInferError:  # bad text (missing, binary, empty, unknown split): leave no empty store behind
        for point, st in stores.items():
            if point in fresh and not st.manifest.shards:
                (st.folder / MANIFEST).unlink(missing_ok=True)
        raise
    if stored < config.n_contexts:
        bar.write(f"text ran out: stored {stored} of {config.n_contexts} contexts")
    for s in stores.values():
        s.manifest.corpus = {"sources": stats, "documents": sum(v["documents"] for v in stats.values()),
                             "tokens": sum(v["tokens"] for v in stats.values())}  # fmt: skip
        s.finish()
    return HarvestResult({p.label: s.folder for p, s in stores.items()}, tokens, time.perf_counter() - start)


def _flush(stores: dict, buffers: dict, ids_buffer: list[torch.Tensor], per_shard: int) -> None:
    """Write one shard per store from the buffers, keeping any overflow for the next shard."""
    ids = torch.cat(ids_buffer)
    ids_buffer[:] = [ids[per_shard:]] if ids.shape[0] > per_shard else []
    for p, store in stores.items():
        acts = torch.cat(buffers[p])
        store.append(acts[:per_shard], ids[:per_shard])
        buffers[p] = [acts[per_shard:]] if acts.shape[0] > per_shard else []


def _width(lm: torch.nn.Module, tokenizer: Any, point: HookPoint, config: HarvestConfig) -> int:
    """The activation width at `point`, from one tiny forward pass."""
    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    probe = torch.full((1, 2), sep or 0, dtype=torch.long, device=config.device)
    return int(capture(lm, probe, [point])[point].shape[-1])


def _load(config: HarvestConfig) -> tuple[torch.nn.Module, Any]:
    return load_model(config.model, config.device, dtype=getattr(torch, config.compute_dtype))


def on_the_fly(
    config: HarvestConfig, batch_size: int, model: tuple[torch.nn.Module, Any] | None = None, skip_bos: bool = True
) -> Iterator[torch.Tensor]:
    """Token-activation batches (batch_size, dim) straight from the model, no store (one hook point; not shuffled
    across contexts beyond one model batch). Stops when the contexts run out."""
    lm, tokenizer = model if model is not None else _load(config)
    points = resolve_hook_points(lm, list(config.hooks))
    if len(points) != 1:
        raise SparseInferError(f"on-the-fly training needs exactly one hook point, {config.hooks} gives {len(points)}")
    rows = contexts_for(config, tokenizer)
    carry = None
    while batch := list(islice(rows, config.batch_size)):
        acts = capture(lm, torch.stack(batch).to(config.device), points)[points[0]]
        acts = acts[:, 1:] if skip_bos and config.bos else acts
        flat = acts.reshape(-1, acts.shape[-1]).float()
        flat = flat[torch.randperm(flat.shape[0], device=flat.device)]
        flat = flat if carry is None else torch.cat([carry, flat])
        n_full = flat.shape[0] // batch_size * batch_size
        if n_full:
            yield from flat[:n_full].split(batch_size)
        carry = flat[n_full:]
