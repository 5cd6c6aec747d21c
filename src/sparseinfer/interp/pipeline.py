"""`sparseinfer interpret`: for each trained encoder, cache codes on a store, pick latents, build examples, explain
and score them with an LLM, and write `scores.parquet` (one row per encoder and latent) plus `comparison.parquet`.

Layout of OUT: `<encoder label>/cache/` (sparse codes, resumable), `<encoder label>/examples.json`,
`scores.parquet` (appended per latent, so an interrupted run resumes), `comparison.parquet`.
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
from sparseinfer.interp.examples import (
    CodeCache,
    build_examples,
    cache_activations,
    load_examples,
    save_examples,
    select_latents,
)
from sparseinfer.interp.explain import explain
from sparseinfer.interp.score import compare, detection, fuzzing

SCORES = "scores.parquet"
COMPARISON = "comparison.parquet"
METRICS = ("detection_f1", "detection_bacc", "fuzzing_f1", "fuzzing_bacc")


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
    seed: int = 0


def load_tokenizer(model: str) -> Any:
    """The tokenizer of the store's model (the built-in default, a local folder or a hub id)."""
    from sparseinfer.lm.model import _transformers, resolve_model

    return _transformers().AutoTokenizer.from_pretrained(resolve_model(model))


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
    for run, label in zip(runs, labels_for(runs), strict=True):
        records = load_examples(prepare(run, store, out / label, config, tokenizer))
        for record in records:
            if (label, record.latent) in finished:
                continue
            start = time.perf_counter()
            explanation = explain(client, record, config.n_explain)
            row = {"encoder": label, "run": str(run), "latent": record.latent, "frequency": record.frequency,
                   "max_activation": record.max_activation, "explanation": explanation, "unparsed": 0}  # fmt: skip
            scorers = [("detection", detection)] + ([("fuzzing", fuzzing)] if config.fuzz else [])
            for name, scorer in scorers:
                try:
                    score = scorer(client, explanation, record, config.n_explain, config.n_samples)
                except SparseInferError:  # too few held-out or negative windows: no score, not a zero
                    row |= {f"{name}_f1": float("nan"), f"{name}_bacc": float("nan")}
                    continue
                row |= {f"{name}_f1": score.f1, f"{name}_bacc": score.balanced_accuracy}
                row["unparsed"] += score.unparsed
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
