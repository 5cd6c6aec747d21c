"""`sparseinfer interpret`: for each trained encoder, cache codes on a store, pick latents, build examples, explain
and score them with an LLM, and write `scores.parquet` (one row per encoder and latent), `summary.parquet`
(bootstrap 95% intervals per encoder and metric) and `comparison.parquet` (tests between encoders: paired on shared
latents of one dictionary, unpaired otherwise). With `config.controls`, `controls.parquet` holds the planted-feature
and shuffled-explanation controls (`controls.py`) scored the same way, and `controls_summary.parquet` their means.

Layout of OUT: `<encoder label>/cache/` (sparse codes, resumable), `<encoder label>/examples.json`,
`scores.parquet` (appended per latent, so an interrupted run resumes), `controls/examples.json`, `controls.parquet`
(appended per latent too), `config.json` (the resolved config).

Besides the LLM scorers, each latent gets an embedding score (`embedding_auroc`, see `embedding.py`) and its
logit-lens tokens (`logit_tokens`, see `logit_lens.py`; read through the store's model and shown to the explainer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sparseinfer import atomic
from sparseinfer.data.store import ActivationStore
from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, map_latents
from sparseinfer.interp.controls import control_summary, neutral_negatives, planted_examples, shuffle_order
from sparseinfer.interp.embedding import Embedder, load_embedder
from sparseinfer.interp.examples import (
    CodeCache,
    build_examples,
    cache_activations,
    load_encoder,
    load_examples,
    save_examples,
    select_latents,
)
from sparseinfer.interp.latent import METRICS, InterpretConfig, score_latent
from sparseinfer.interp.logit_lens import logit_lens_tokens
from sparseinfer.interp.stats import compare, summarise

__all__ = ["METRICS", "InterpretConfig", "interpret", "run_controls"]

SCORES = "scores.parquet"
SUMMARY = "summary.parquet"
COMPARISON = "comparison.parquet"
CONTROLS = "controls.parquet"
CONTROLS_SUMMARY = "controls_summary.parquet"


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a per-latent table (none when it does not exist yet). These tables are rewritten after every
    latent, always through `atomic.write_parquet`: a kill during a plain write would leave a file no resume reads."""
    if not path.exists():
        return []
    try:
        return pd.read_parquet(path).to_dict("records")
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        raise SparseInferError(f"corrupt results file {path} ({err}); delete it to score its latents again") from None


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


def dictionary_id(run: Path) -> str:
    """A short fingerprint of the encoder's dictionary atoms: encoders with equal ids share latents (the same
    dictionary under different inference), so their scores are compared paired."""
    _, dictionary, _ = load_encoder(run)
    atoms = dictionary.atoms.detach().float().contiguous().cpu().numpy()
    return hashlib.sha256(atoms.tobytes()).hexdigest()[:16]


def prepare(run: Path, store: ActivationStore, out: Path, config: InterpretConfig, tokenizer: Any,
            latents: list[int] | None = None, progress: Callable[[str], None] = lambda s: None) -> Path:  # fmt: skip
    """Cache codes and write `examples.json` for one encoder folder (both skipped when already there); `latents`
    (those of an encoder with the same dictionary) are reused where they are live here, else a random pick."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "examples.json"
    if path.exists():
        return path
    cache = CodeCache.load(cache_activations(store.folder, run, out / "cache", progress=progress))
    counts = cache.counts()
    shared = [j for j in latents or [] if j < cache.n_latents and config.min_count <= counts[j] <= cache.n_tokens / 2]
    latents = shared or select_latents(cache, config.n_latents, min_count=config.min_count, seed=config.seed)
    records = build_examples(cache, store, tokenizer, latents, n_top=config.n_top, n_samples=config.n_samples,
                             n_negatives=config.n_negatives, left=config.left, right=config.right,
                             seed=config.seed)  # fmt: skip
    return save_examples(records, path)


def interpret(
    runs: list[Path],
    store_folder: Path,
    out: Path,
    client: ChatClient | list[ChatClient],
    config: InterpretConfig = InterpretConfig(),
    tokenizer: Any = None,
    progress: Callable[[str], None] = lambda s: None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Explain and score latents of every encoder in `runs` (and the controls when `config.controls`); returns
    (scores, comparison) and writes them, the summary, the controls and the resolved config to `out`. With several
    clients (e.g. one single-threaded server per core), that many latents are scored at a time."""
    if not runs and not config.controls:
        raise SparseInferError("give at least one encoder folder (or ask for the controls only)")
    store = ActivationStore.open(store_folder)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(store.manifest.model)
    out.mkdir(parents=True, exist_ok=True)
    clients = [client] if isinstance(client, ChatClient) else list(client)
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(config), "runs": [str(r) for r in runs],
                                                 "store": str(store_folder), "llm": clients[0].config.model,
                                                 "base_urls": [c.config.base_url for c in clients]},
                                                indent=1))  # fmt: skip
    embed = load_embedder() if config.embedding else None
    if config.controls:
        run_controls(store, out, clients, config, tokenizer, embed, progress)
    scores_path = out / SCORES
    rows = load_rows(scores_path)
    finished = {(r["encoder"], r["latent"]) for r in rows}
    lm = None
    chosen: dict[str, list[int]] = {}
    for run, label in zip(runs, labels_for(runs), strict=True):
        ident = dictionary_id(run)
        records = load_examples(prepare(run, store, out / label, config, tokenizer, chosen.get(ident), progress))
        chosen.setdefault(ident, [r.latent for r in records])
        records = [r for r in records if (label, r.latent) not in finished]
        if records and config.logit_tokens and lm is None:
            from sparseinfer.lm.model import load_model

            lm, _ = load_model(store.manifest.model)
        lens = logit_tokens_for(run, lm, tokenizer, [r.latent for r in records], config.logit_tokens)

        def work(llm: ChatClient, record: Any, label: str = label, ident: str = ident, run: Path = run,
                 lens: dict[int, list[str]] = lens) -> dict[str, Any]:  # fmt: skip
            promoted = lens.get(record.latent)
            return {"encoder": label, "run": str(run), "dictionary": ident,
                    **score_latent(llm, record, config, embed, logit_tokens=promoted),
                    "logit_tokens": list(promoted or [])}  # fmt: skip

        for row in map_latents(clients, work, records):
            rows.append(row)
            atomic.write_parquet(scores_path, pd.DataFrame(rows))
            progress(f"{label} latent {row['latent']}: {row['explanation']!r} detection balanced accuracy "
                     f"{row['detection_bacc']:.2f} ({row['seconds']:.1f} s)")  # fmt: skip
    scores = pd.DataFrame(rows)
    if scores.empty:
        return scores, pd.DataFrame()
    metrics = [m for m in METRICS if m in scores]
    atomic.write_parquet(out / SUMMARY, summarise(scores, metrics))
    comparison = pd.concat([compare(scores, m) for m in metrics], ignore_index=True)
    atomic.write_parquet(out / COMPARISON, comparison)
    return scores, comparison


def run_controls(store: ActivationStore, out: Path, client: ChatClient | list[ChatClient], config: InterpretConfig,
                 tokenizer: Any,
                 embed: Embedder | None = None,
                 progress: Callable[[str], None] = lambda s: None) -> pd.DataFrame:  # fmt: skip
    """Score `config.n_planted` planted token features ("planted") and the same latents under explanations
    shuffled across them ("shuffled", each under its predecessor's in a random order; all planted first, as the
    shuffled ones need their explanations); writes and returns
    `controls.parquet` (resumable per latent) and `controls_summary.parquet` (bootstrap mean and 95% interval per
    control and metric)."""
    folder = out / "controls"
    folder.mkdir(parents=True, exist_ok=True)
    path, names_path = folder / "examples.json", folder / "features.json"
    if not path.exists():
        records, names = planted_examples(store, tokenizer, config.n_planted, config.min_count, n_top=config.n_top,
                                          n_samples=config.n_samples, n_negatives=config.n_negatives,
                                          left=config.left, right=config.right, seed=config.seed)  # fmt: skip
        names_path.write_text(json.dumps(names))
        save_examples(records, path)
    records, names = load_examples(path), json.loads(names_path.read_text())
    controls_path = out / CONTROLS
    rows = load_rows(controls_path)
    done = {(r["control"], r["latent"]) for r in rows}

    def record_row(control: str, feature: str, row: dict[str, Any]) -> None:
        rows.append({"control": control, "feature": feature, **row})
        atomic.write_parquet(controls_path, pd.DataFrame(rows))
        progress(f"control {control} {feature!r}: {row['explanation']!r} detection balanced accuracy "
                 f"{row['detection_bacc']:.2f} ({row['seconds']:.1f} s)")  # fmt: skip

    order, source = shuffle_order(len(records), config.seed)
    planted = [i for i in order.tolist() if ("planted", records[i].latent) not in done]
    for i, row in zip(planted, map_latents(client, lambda llm, i: score_latent(llm, records[i], config, embed),
                                           planted), strict=True):  # fmt: skip
        record_row("planted", names[i], row)
    own = {r["latent"]: r["explanation"] for r in rows if r["control"] == "planted"}

    def shuffled(llm: ChatClient, i: int) -> dict[str, Any]:  # latent i scored under latent source[i]'s explanation
        record = neutral_negatives(records[i], names[int(source[i])])
        row = score_latent(llm, record, config, embed, explanation=own[records[int(source[i])].latent],
                           fuzz=config.fuzz and config.shuffled_fuzz)  # fmt: skip
        return row | {"explanation_of": names[int(source[i])]}

    todo = [i for i in order.tolist() if ("shuffled", records[i].latent) not in done]
    for i, row in zip(todo, map_latents(client, shuffled, todo), strict=True):
        record_row("shuffled", names[i], row)
    table = pd.DataFrame(rows)
    atomic.write_parquet(out / CONTROLS_SUMMARY, control_summary(table, list(METRICS)))
    return table
