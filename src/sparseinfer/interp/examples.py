"""Per-latent examples for interpretation: top-activating contexts, quantile samples and negatives.

Two steps. `cache_activations` runs a trained encoder over every shard of an activation store and writes the
nonzero codes as sparse records (`context`, `position`, `latent`, `value`) to one safetensors file per store shard,
skipping shards already cached (resumable). `build_examples` then cuts, for each chosen latent, windows of
`left` tokens before and `right` tokens after the peak token: the top activations (one per context), samples
spread over activation quantiles (held out for scoring), and negatives: peaks of other latents whose window this
latent never fires in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sparseinfer.codes import as_dense
from sparseinfer.data.store import ActivationStore
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, encoder_config
from sparseinfer.errors import SparseInferError
from sparseinfer.io import load_sae

META = "cache.json"


@dataclass
class Example:
    """A window of text around one token: `tokens` (decoded strings), this latent's `acts` on each, the `peak`
    index inside the window, and where it came from (`context` in the store, `position` in that context)."""

    tokens: list[str]
    acts: list[float]
    peak: int
    context: int
    position: int

    @property
    def activation(self) -> float:
        """The latent's activation at the peak token."""
        return self.acts[self.peak]

    def text(self, mark: tuple[str, str] | None = ("<<", ">>")) -> str:
        """The window as one string, the peak token wrapped in `mark` (None: unmarked)."""
        parts = list(self.tokens)
        if mark is not None:
            parts[self.peak] = f"{mark[0]}{parts[self.peak]}{mark[1]}"
        return "".join(parts)


@dataclass
class LatentExamples:
    """Everything the explainer, scorers and dashboard need about one latent."""

    latent: int
    count: int
    frequency: float
    max_activation: float
    top: list[Example] = field(default_factory=list)
    samples: list[Example] = field(default_factory=list)
    negatives: list[Example] = field(default_factory=list)
    histogram: tuple[list[int], list[float]] = ((), ())  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentExamples:
        """Inverse of `to_dict`."""
        lists = {k: [Example(**e) for e in d[k]] for k in ("top", "samples", "negatives")}
        return cls(**{**d, **lists, "histogram": tuple(d["histogram"])})


# ---- encoding the store ------------------------------------------------------------------------------------------
def load_encoder(folder: str | Path) -> tuple[Encoder, Dictionary, float]:
    """(encoder, dictionary, input scale) of any SAE folder `io.load_sae` reads (a `sparseinfer train` run, a
    sweep run, our format, SAELens, sparsify): the pair encodes `scale * x` for raw activations `x`."""
    sae = load_sae(folder)
    return sae.encoder, sae.dictionary, sae.input_scale


def _identity(store: ActivationStore, encoder_folder: Path, encoder: Encoder) -> dict[str, Any]:
    """What a cache was computed from; a resumed cache must match it: the store's shards, the encoder's weights and
    its settings (an iterative encoder's penalty, TopK's k: not in the weights)."""
    weights = sorted(p for p in encoder_folder.rglob("*.safetensors"))
    digest = hashlib.sha256()
    for p in weights:
        digest.update(p.read_bytes())
    settings = json.dumps([encoder.name, encoder_config(encoder)], sort_keys=True, default=str)
    return {"store": [s["sha256"] for s in store.manifest.shards], "encoder": digest.hexdigest(),
            "settings": hashlib.sha256(settings.encode()).hexdigest()}  # fmt: skip


def cache_activations(
    store_folder: str | Path,
    encoder_folder: str | Path,
    cache: str | Path,
    batch_tokens: int = 4096,
    progress: Callable[[str], None] = lambda s: None,
) -> Path:
    """Encode every store shard and save its nonzero codes as sparse records; resumes a partial cache. `progress`
    gets one line per shard encoded (an iterative encoder over a held-out store takes minutes)."""
    store = ActivationStore.open(store_folder)
    encoder_folder = Path(encoder_folder)
    encoder, dictionary, scale = load_encoder(encoder_folder)
    m = store.manifest
    if dictionary.dim != m.dim:
        raise SparseInferError(f"encoder dim {dictionary.dim} does not match the store's dim {m.dim}")
    if batch_tokens < 1:
        raise SparseInferError("batch_tokens must be at least 1")
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    ident = _identity(store, encoder_folder, encoder)
    meta = {**ident, "n_latents": dictionary.n_latents, "context_length": m.context_length, "bos": m.bos,
            "contexts": [s["contexts"] for s in m.shards], "model": m.model}  # fmt: skip
    meta_path = cache / META
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        old.setdefault("settings", ident["settings"])  # a cache from before settings were recorded: weights decide
        if {k: old.get(k) for k in ident} != ident:
            raise SparseInferError(f"cache {cache} was made from another store or encoder; use another folder")
    meta_path.write_text(json.dumps(meta))
    first = 0
    for index, info in enumerate(m.shards):
        path = cache / f"codes-{index:05d}.safetensors"
        if not path.exists():
            started = time.perf_counter()
            _cache_shard(store, index, first, encoder, dictionary, scale, batch_tokens, path)
            progress(f"{encoder_folder.name}: codes of shard {index + 1}/{len(m.shards)} cached "
                     f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
        first += info["contexts"]
    return cache


@torch.no_grad()
def _cache_shard(store: ActivationStore, index: int, first: int, encoder: Encoder, dictionary: Dictionary,
                 scale: float, batch_tokens: int, path: Path) -> None:  # fmt: skip
    acts = store.read_shard(index)["activations"]
    _, seq, dim = acts.shape
    start = 1 if store.manifest.bos else 0  # the BOS position is an outlier, never an example
    rows = acts[:, start:].reshape(-1, dim).float() * scale
    parts = []
    for lo in range(0, rows.shape[0], batch_tokens):
        codes = as_dense(encoder(rows[lo : lo + batch_tokens].to(dictionary.atoms.dtype), dictionary)).float()
        tok, lat = torch.nonzero(codes, as_tuple=True)
        parts.append((tok + lo, lat, codes[tok, lat]))
    tok = torch.cat([p[0] for p in parts])
    per = seq - start
    records = {
        "context": (tok // per + first).int(),
        "position": (tok % per + start).int(),
        "latent": torch.cat([p[1] for p in parts]).int(),
        "value": torch.cat([p[2] for p in parts]),
        "tokens": torch.tensor([rows.shape[0]]),
    }
    tmp = path.with_suffix(".tmp")
    save_file(records, str(tmp))
    tmp.replace(path)


@dataclass
class CodeCache:
    """All sparse records of a cache, sorted by latent, with per-latent segments."""

    context: np.ndarray
    position: np.ndarray
    latent: np.ndarray
    value: np.ndarray
    n_tokens: int
    n_latents: int
    meta: dict[str, Any]

    @classmethod
    def load(cls, cache: str | Path) -> CodeCache:
        """Read every shard file of a finished cache."""
        cache = Path(cache)
        if not (cache / META).exists():
            raise SparseInferError(f"{cache} is not an activation cache (no {META})")
        meta = json.loads((cache / META).read_text())
        files = [cache / f"codes-{i:05d}.safetensors" for i in range(len(meta["contexts"]))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise SparseInferError(f"cache {cache} is incomplete (missing {missing[0]}); rerun to resume it")
        parts = [load_file(str(f)) for f in files]
        cat = {k: torch.cat([p[k] for p in parts]).numpy() for k in ("context", "position", "latent", "value")}
        order = np.lexsort((-cat["value"], cat["latent"]))  # by latent, then descending value
        return cls(**{k: v[order] for k, v in cat.items()}, n_tokens=int(sum(int(p["tokens"][0]) for p in parts)),
                   n_latents=int(meta["n_latents"]), meta=meta)  # fmt: skip

    def counts(self) -> np.ndarray:
        """Nonzero activations per latent."""
        return np.bincount(self.latent, minlength=self.n_latents)

    def segment(self, latent: int) -> slice:
        """Records of `latent` (sorted by descending value)."""
        lo, hi = np.searchsorted(self.latent, [latent, latent + 1])
        return slice(int(lo), int(hi))


def select_latents(
    cache: CodeCache, n: int, min_count: int = 20, max_frequency: float = 0.5, seed: int = 0
) -> list[int]:
    """`n` random latents among those firing at least `min_count` times and on at most `max_frequency` of the
    tokens (dense latents have no silent windows to score against), sorted; all of them if fewer qualify."""
    if n < 1:
        raise SparseInferError("the number of latents to interpret must be at least 1")
    counts = cache.counts()
    alive = np.flatnonzero((counts >= min_count) & (counts <= max_frequency * cache.n_tokens))
    if alive.size == 0:
        raise SparseInferError(
            f"no latent fires at least {min_count} times on at most {max_frequency:.0%} of tokens; harvest more text"
        )
    rng = np.random.default_rng(seed)
    pick = rng.choice(alive, size=min(n, alive.size), replace=False)
    return sorted(int(i) for i in pick)


class _Windows:
    """Cuts token windows out of the store's contexts and decodes tokens once each."""

    def __init__(self, store: ActivationStore, tokenizer: Any, left: int, right: int) -> None:
        shards = [store.read_shard(i)["token_ids"] for i in range(len(store.manifest.shards))]
        self.ids = torch.cat(shards).numpy()
        self.first = 1 if store.manifest.bos else 0
        self.left, self.right, self.tokenizer = left, right, tokenizer
        self._strings: dict[int, str] = {}

    def _decode(self, token: int) -> str:
        if token not in self._strings:
            self._strings[token] = self.tokenizer.decode([token])
        return self._strings[token]

    def example(self, context: int, position: int, acts: dict[int, float]) -> Example:
        lo = max(self.first, position - self.left)
        hi = min(self.ids.shape[1], position + self.right + 1)
        tokens = [self._decode(int(t)) for t in self.ids[context, lo:hi]]
        return Example(tokens, [float(acts.get(p, 0.0)) for p in range(lo, hi)], position - lo, context, position)


def build_examples(
    cache: CodeCache,
    store: ActivationStore,
    tokenizer: Any,
    latents: list[int],
    n_top: int = 20,
    n_samples: int = 10,
    n_quantiles: int = 5,
    n_negatives: int = 10,
    left: int = 30,
    right: int = 5,
    bins: int = 24,
    seed: int = 0,
) -> list[LatentExamples]:
    """Top examples (distinct contexts), quantile samples (other contexts) and negatives for each latent."""
    if min(n_top, n_quantiles, left + 1, right + 1) < 1 or min(n_samples, n_negatives) < 0:
        raise SparseInferError("n_top, n_quantiles must be >= 1; n_samples, n_negatives, left, right >= 0")
    windows = _Windows(store, tokenizer, left, right)
    rng = np.random.default_rng(seed)
    out = []
    for latent in latents:
        seg = cache.segment(latent)
        ctx, pos, val = cache.context[seg], cache.position[seg], cache.value[seg]
        if ctx.size == 0:
            raise SparseInferError(f"latent {latent} never fires in this store")
        by_ctx: dict[int, dict[int, float]] = {}
        for c, p, v in zip(ctx.tolist(), pos.tolist(), val.tolist(), strict=True):
            by_ctx.setdefault(c, {})[p] = v
        _, first_in_ctx = np.unique(ctx, return_index=True)  # records are by descending value: the context's peak
        peaks = np.sort(first_in_ctx)
        top = [windows.example(int(ctx[i]), int(pos[i]), by_ctx[int(ctx[i])]) for i in peaks[:n_top]]
        rest = peaks[n_top:]
        samples = []
        if rest.size and n_samples:
            per = max(1, n_samples // n_quantiles)
            for chunk in np.array_split(rest, min(n_quantiles, rest.size)):
                for i in rng.choice(chunk, size=min(per, chunk.size), replace=False):
                    samples.append(windows.example(int(ctx[i]), int(pos[i]), by_ctx[int(ctx[i])]))
        negatives = _negatives(cache, latent, by_ctx, windows, n_negatives, rng)
        counts, edges = np.histogram(val, bins=bins)
        out.append(LatentExamples(latent, int(ctx.size), float(ctx.size / cache.n_tokens), float(val[0]), top,
                                  samples, negatives, (counts.tolist(), edges.tolist())))  # fmt: skip
    return out


def _negatives(cache: CodeCache, latent: int, fires: dict[int, dict[int, float]], windows: _Windows, n: int,
               rng: np.random.Generator) -> list[Example]:  # fmt: skip
    """Peaks of other latents whose whole window this latent is silent in (random draws, distinct contexts)."""
    out: list[Example] = []
    seen: set[int] = set()
    others = np.flatnonzero(cache.latent != latent)
    for i in rng.permutation(others)[: 50 * max(n, 1)]:
        if len(out) >= n:
            break
        c, p = int(cache.context[i]), int(cache.position[i])
        here = fires.get(c, {})
        if c in seen or any(p - windows.left <= q <= p + windows.right for q in here):
            continue
        seen.add(c)
        out.append(windows.example(c, p, {}))
    return out


def save_examples(records: list[LatentExamples], path: str | Path) -> Path:
    """Write examples as JSON (small: a few dozen windows per latent)."""
    path = Path(path)
    path.write_text(json.dumps([r.to_dict() for r in records]))
    return path


def load_examples(path: str | Path) -> list[LatentExamples]:
    """Read examples written by `save_examples`."""
    path = Path(path)
    if not path.exists():
        raise SparseInferError(f"no examples file at {path}")
    return [LatentExamples.from_dict(d) for d in json.loads(path.read_text())]
