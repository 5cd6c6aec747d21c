"""`sparseinfer interpret`: for each trained encoder, cache codes on a store, pick latents, build examples, explain
and score them with an LLM, and write `scores.parquet` (one row per encoder and latent) plus `comparison.parquet`.

Layout of OUT: `<encoder label>/cache/` (sparse codes, resumable), `<encoder label>/examples.json`,
`scores.parquet` (appended per latent, so an interrupted run resumes), `comparison.parquet`.

Besides the LLM scorers, each latent gets an embedding score (`embedding_auroc`, see `embedding.py`) and its
logit-lens tokens (`logit_tokens`, see `logit_lens.py`; read through the store's model and shown to the explainer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sparseinfer.data.store import ActivationStore
from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient
from sparseinfer.interp.embedding import embedding_score, load_embedder
from sparseinfer.interp.examples import (
    CodeCache,
    build_examples,
    cache_activations,
    load_encoder,
    load_examples,
    save_examples,
    select_latents,
)
from sparseinfer.interp.explain import explain
from sparseinfer.interp.logit_lens import logit_lens_tokens
from sparseinfer.interp.score import compare, detection, fuzzing

SCORES = "scores.parquet"
COMPARISON = "comparison.parquet"
METRICS = ("detection_f1", "detection_bacc", "fuzzing_f1", "fuzzing_bacc", "embedding_auroc")


@dataclass(frozen=True)
class InterpretConfig:
    """How many latents and examples, and the example windows."""

    n_latents: int = 20
    n_top: int = 20
    n_explain: int = 10
    n_samples: int = 10
    n_negatives: int = 10
    left: int = 30
    right: int = 5
    min_count: int = 20
    fuzz: bool = True
    embedding: bool = True
    logit_tokens: int = 10
    seed: int = 0


def load_tokenizer(model: str) -> Any:
    """The tokenizer of the store's model (the built-in default, a local folder or a hub id)."""
    from sparseinfer.lm.model import _transformers, resolve_model

    return _transformers().AutoTokenizer.from_pretrained(resolve_model(model))


def logit_tokens_for(run: Path, model: Any, tokenizer: Any, latents: list[int], k: int) -> dict[int, list[str]]:
    """The `k` logit-lens tokens of each of `latents` of the encoder in `run` (an empty dict when k is 0)."""
    if k == 0 or not latents:
        return {}
    _, dictionary, _ = load_encoder(run)
    tokens = logit_lens_tokens(dictionary.atoms.detach()[latents], model, tokenizer, k)
    return dict(zip(latents, tokens, strict=True))


def labels_for(runs: list[Path]) -> list[str]:
    """Unique short labels for encoder folders: the folder names (made unique with the parent when they clash)."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.parent.name}-{r.name}" for r in runs]
    if len(set(names)) < len(names):
        raise SparseInferError("encoder folders must have distinct names")
    return names


def prepare(run: Path, store: ActivationStore, out: Path, config: InterpretConfig, tokenizer: Any) -> Path:
    """Cache codes and write `examples.json` for one encoder folder (both skipped when already there)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "examples.json"
    if path.exists():
        return path
    cache = CodeCache.load(cache_activations(store.folder, run, out / "cache"))
    latents = select_latents(cache, config.n_latents, min_count=config.min_count, seed=config.seed)
    records = build_examples(cache, store, tokenizer, latents, n_top=config.n_top, n_samples=config.n_samples,
                             n_negatives=config.n_negatives, left=config.left, right=config.right,
                             seed=config.seed)  # fmt: skip
    return save_examples(records, path)


def interpret(
    runs: list[Path],
    store_folder: Path,
    out: Path,
    client: ChatClient,
    config: InterpretConfig = InterpretConfig(),
    tokenizer: Any = None,
    progress: Callable[[str], None] = lambda s: None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Explain and score latents of every encoder in `runs`; returns (scores, comparison) and writes both."""
    if not runs:
        raise SparseInferError("give at least one encoder folder")
    store = ActivationStore.open(store_folder)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(store.manifest.model)
    out.mkdir(parents=True, exist_ok=True)
    scores_path = out / SCORES
    done = pd.read_parquet(scores_path) if scores_path.exists() else pd.DataFrame()
    rows = done.to_dict("records")
    finished = {(r["encoder"], r["latent"]) for r in rows}
    embed = load_embedder() if config.embedding else None
    lm = None
    for run, label in zip(runs, labels_for(runs), strict=True):
        records = [r for r in load_examples(prepare(run, store, out / label, config, tokenizer))
                   if (label, r.latent) not in finished]  # fmt: skip
        if records and config.logit_tokens and lm is None:
            from sparseinfer.lm.model import load_model

            lm, _ = load_model(store.manifest.model)
        lens = logit_tokens_for(run, lm, tokenizer, [r.latent for r in records], config.logit_tokens)
        for record in records:
            start = time.perf_counter()
            promoted = lens.get(record.latent)
            explanation = explain(client, record, config.n_explain, logit_tokens=promoted)
            row = {"encoder": label, "run": str(run), "latent": record.latent, "frequency": record.frequency,
                   "max_activation": record.max_activation, "explanation": explanation, "unparsed": 0,
                   "logit_tokens": list(promoted or [])}  # fmt: skip
            scorers = [("detection", detection)] + ([("fuzzing", fuzzing)] if config.fuzz else [])
            for name, scorer in scorers:
                try:
                    score = scorer(client, explanation, record, config.n_explain, config.n_samples)
                except SparseInferError:  # too few held-out or negative windows: no score, not a zero
                    row |= {f"{name}_f1": float("nan"), f"{name}_bacc": float("nan")}
                    continue
                row |= {f"{name}_f1": score.f1, f"{name}_bacc": score.balanced_accuracy}
                row["unparsed"] += score.unparsed
            if embed is not None:
                try:
                    row["embedding_auroc"] = embedding_score(embed, explanation, record, config.n_explain,
                                                             config.n_samples)  # fmt: skip
                except SparseInferError:  # no held-out windows, or an empty explanation: no score
                    row["embedding_auroc"] = float("nan")
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            pd.DataFrame(rows).to_parquet(scores_path)
            progress(f"{label} latent {record.latent}: {explanation!r} detection F1 {row['detection_f1']:.2f} "
                     f"({row['seconds']:.1f} s)")  # fmt: skip
    scores = pd.DataFrame(rows)
    metrics = [m for m in METRICS if m in scores]
    comparison = pd.concat([compare(scores, m) for m in metrics], ignore_index=True)
    comparison.to_parquet(out / COMPARISON)
    return scores, comparison
