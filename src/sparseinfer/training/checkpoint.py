"""Checkpoints of a training run: one safetensors file of tensors whose header holds the rest as JSON, checksummed.

The file (`checkpoint.safetensors`) holds the weights, the optimiser's tensors, the dead-latent counts and the RNG
states as tensors; its safetensors metadata holds `state`, a JSON text with the step, FLOPs, history, the optimiser's
scalars and parameter groups, the run's own scalars and its config, and `sha256`, the SHA-256 of the whole file
with that digest written as zeros. So every byte is covered: any damage (a truncated write, a flipped bit) is
detected on load, and no pickle is ever read (unpickling a file can run code).

Writing refuses non-finite tensors or scalars (a run that diverged keeps its last good checkpoint) and goes through
the core atomic writer. Reading checks the checksum, the schema, the config (a checkpoint of another run is refused,
naming the fields that differ), the step (at most the run's steps) and every tensor's name and shape. Each failure
is one `SparseInferError` line: which file, what is wrong, how to start afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from sparseinfer import atomic
from sparseinfer.errors import SparseInferError

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # the pickled checkpoints of older versions: refused, never unpickled
FORMAT = "sparseinfer-checkpoint"
FORMAT_VERSION = 1
UNCHECKED_FIELDS = frozenset({"checkpoint_every"})  # config fields a resume may change (no effect on the result)
_ZERO_DIGEST = "0" * 64
_HEADER_LIMIT = 100_000_000  # the safetensors format's own limit on the JSON header


@dataclass
class Checkpoint:
    """What a checkpoint holds: the step reached, cumulative FLOPs, the history rows, named tensors (`encoder.*`,
    `dictionary.*`, `optimiser.*`, and the run's own such as `since_fired`, `rng.cpu`), the optimiser's JSON part
    (`param_groups`, non-tensor state), the run's scalars and its config."""

    step: int
    flops: int
    history: list[dict[str, Any]]
    tensors: dict[str, Tensor]
    optimiser: dict[str, Any] = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _fresh_hint(path: Path) -> str:
    return f"delete {path.name} (or pass --no-resume) to start the run afresh"


def _corrupt(path: Path, what: str) -> SparseInferError:
    return SparseInferError(f"cannot resume from {path}: {what}; {_fresh_hint(path)}")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def optimiser_tensors(optimiser: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The optimiser's state dict as named tensors (`optimiser.<param>.<key>`) and a JSON part, for a `Checkpoint`."""
    sd = optimiser.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimiser.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": scalars}


def _check_finite(tensors: Mapping[str, Tensor], scalars: Mapping[str, Any], step: int, path: Path) -> None:
    """Refuse to write NaN or Inf: the run diverged, and its last good checkpoint must stay."""
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    bad += [n for n, v in scalars.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        kept = f"the last good checkpoint {path} is kept" if path.exists() else "no checkpoint was written"
        raise SparseInferError(
            f"training diverged by step {step}: {', '.join(bad[:3])} hold NaN or Inf; {kept}; "
            "lower the learning rate (--lr) or the sparsity weight and train again"
        )


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `path` atomically, after checking that every tensor and scalar is finite."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in checkpoint.tensors.items()}
    _check_finite(tensors, checkpoint.scalars, checkpoint.step, path)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(checkpoint.step),
        "flops": int(checkpoint.flops),
        "history": checkpoint.history,
        "optimiser": checkpoint.optimiser,
        "scalars": checkpoint.scalars,
        "config": checkpoint.config,
    }
    try:
        data = encode_checkpoint(tensors, state)
    except (TypeError, ValueError) as err:
        raise SparseInferError(f"cannot write checkpoint {path}: its state is not JSON ({err})") from None
    atomic.write_bytes(path, data)
    return path


def encode_checkpoint(tensors: Mapping[str, Tensor], state: Any) -> bytes:
    """The bytes of a checkpoint file: `tensors` with `state` as JSON in the header, sealed by the file's digest."""
    text = json.dumps(state, sort_keys=True, default=float)
    blank = save_tensors(dict(tensors), metadata={"state": text, "sha256": _ZERO_DIGEST})
    field_ = b'"sha256":"' + _ZERO_DIGEST.encode()
    at = blank.find(field_)
    if at < 0:  # safetensors writes its metadata as compact JSON; anything else is a change to follow here
        raise ValueError("the safetensors header does not hold the digest field")
    at += len(field_) - 64
    return blank[:at] + _digest(blank).encode() + blank[at + 64 :]


def decode_checkpoint(data: bytes, path: Path) -> tuple[dict[str, Tensor], Any]:
    """Verify a checkpoint file's bytes against its digest and return (tensors, state); `path` names it in errors."""
    if not data:
        raise _corrupt(path, "the file is empty (a write that never finished?)")
    if len(data) < 8:
        raise _corrupt(path, f"the file is truncated ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, _HEADER_LIMIT):
        raise _corrupt(path, "the file is truncated or not a safetensors file (header length out of range)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(path, "its header is not valid JSON (damaged, or not a checkpoint)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    digest = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise _corrupt(path, "it has no checksum (not a sparseinfer checkpoint)")
    head = data[: 8 + n]
    if head.count(digest.encode()) != 1:
        raise _corrupt(path, "its checksum does not match its contents (the file is damaged)")
    blank = head.replace(digest.encode(), _ZERO_DIGEST.encode()) + data[8 + n :]
    if _digest(blank) != digest:
        raise _corrupt(path, "its checksum does not match its contents (the file is damaged)")
    try:
        tensors = load_tensors(data)
        state = json.loads(meta.get("state", ""))
    except (SafetensorError, ValueError, TypeError) as err:  # a writer's bug, as the checksum held
        raise _corrupt(path, f"it cannot be decoded ({str(err).splitlines()[0]})") from None
    return tensors, state


def _require(state: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    value = state.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _corrupt(path, f"its state field {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The config fields on which a checkpoint and the run resuming it differ, as "field: saved -> now"."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in UNCHECKED_FIELDS:
            continue
        old, new = saved.get(key, "(absent)"), current.get(key, "(absent)")
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


def read_checkpoint(path: str | Path, config: Mapping[str, Any], steps: int) -> Checkpoint:
    """Read and check the checkpoint at `path` for a run with `config` (plain data) of `steps` steps."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _corrupt(path, f"it cannot be read ({err.strerror or err})") from None
    tensors, state = decode_checkpoint(data, path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _corrupt(path, f"its state is not a {FORMAT} object")
    version = _require(state, "format_version", int, path)
    if version > FORMAT_VERSION:
        raise _corrupt(path, f"format_version {version} is newer than this sparseinfer reads ({FORMAT_VERSION})")
    step = _require(state, "step", int, path)
    flops = _require(state, "flops", int, path)
    history = _require(state, "history", list, path)
    saved_config = _require(state, "config", dict, path)
    differ = config_differences(saved_config, config)
    if differ:
        raise SparseInferError(
            f"cannot resume from {path}: it belongs to a run with another config ({'; '.join(differ)}); "
            f"train into another folder, or {_fresh_hint(path)}"
        )
    if not 0 <= step <= steps:
        raise _corrupt(path, f"its step {step} is outside the run's 0..{steps} steps")
    if flops < 0 or not all(isinstance(r, dict) for r in history):
        raise _corrupt(path, "its flops are negative or its history rows are not objects")
    bad = [n for n, t in sorted(tensors.items()) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # never written by `save_checkpoint`: the file was made or altered elsewhere
        raise _corrupt(path, f"{', '.join(bad[:3])} hold NaN or Inf")
    return Checkpoint(
        step=step, flops=flops, history=history, tensors=tensors,
        optimiser=_require(state, "optimiser", dict, path), scalars=_require(state, "scalars", dict, path),
        config=saved_config,
    )  # fmt: skip


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, Tensor]:
    """`module`'s state dict with names `prefix.<name>`."""
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def restore_module(path: Path, checkpoint: Checkpoint, prefix: str, module: torch.nn.Module) -> None:
    """Load `prefix.*` tensors into `module`, requiring exactly its names and shapes (one line otherwise)."""
    expected = module.state_dict()
    got = {k[len(prefix) + 1 :]: v for k, v in checkpoint.tensors.items() if k.startswith(prefix + ".")}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise SparseInferError(
            f"cannot resume from {path}: the {prefix} tensors differ from this run's (missing {missing}, "
            f"unexpected {extra}); {_fresh_hint(path)}"
        )
    for name, tensor in sorted(got.items()):
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SparseInferError(
                f"cannot resume from {path}: {prefix}.{name} has shape {tuple(tensor.shape)}, this run's has "
                f"{tuple(expected[name].shape)}; {_fresh_hint(path)}"
            )
    module.load_state_dict(got, strict=True)


def restore_optimiser(path: Path, checkpoint: Checkpoint, optimiser: torch.optim.Optimizer) -> None:
    """Load the optimiser's state, requiring one parameter group layout and state shapes equal to the parameters'."""
    params = [p for group in optimiser.param_groups for p in group["params"]]
    groups = checkpoint.optimiser.get("param_groups")
    ids = [i for g in groups for i in g.get("params", [])] if isinstance(groups, list) else None
    if ids is None or not all(isinstance(g, dict) for g in groups) or sorted(ids) != list(range(len(params))):
        raise _corrupt(path, "its optimiser parameter groups do not match this run's parameters")
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in checkpoint.tensors.items():
        if not name.startswith("optimiser."):
            continue
        pid, _, key = name.removeprefix("optimiser.").partition(".")
        if not pid.isdigit() or int(pid) >= len(params):
            raise _corrupt(path, f"its optimiser tensor {name} names no parameter of this run")
        if tensor.ndim and tuple(tensor.shape) != tuple(params[int(pid)].shape):
            raise _corrupt(path, f"{name} has shape {tuple(tensor.shape)}, expected {tuple(params[int(pid)].shape)}")
        state.setdefault(int(pid), {})[key] = tensor
    extra = checkpoint.optimiser.get("state") or {}
    if not isinstance(extra, dict):
        raise _corrupt(path, "its optimiser state is not an object")
    for pid, entry in extra.items():
        if not str(pid).isdigit() or not isinstance(entry, dict) or int(pid) >= len(params):
            raise _corrupt(path, f"its optimiser state names no parameter of this run ({pid!r})")
        state.setdefault(int(pid), {}).update(entry)
    try:
        optimiser.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as err:
        raise _corrupt(path, f"its optimiser state does not fit ({str(err).splitlines()[0]})") from None


def rng_tensors() -> dict[str, Tensor]:
    """The global RNG states (CPU, and each CUDA device in use) as uint8 tensors."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = st
    return out


def restore_rng(checkpoint: Checkpoint) -> None:
    """Set the global RNG states saved by `rng_tensors` (CUDA devices only where present)."""
    if "rng.cpu" in checkpoint.tensors:
        torch.set_rng_state(checkpoint.tensors["rng.cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            st = checkpoint.tensors.get(f"rng.cuda.{i}")
            if st is not None:
                torch.cuda.set_rng_state(st.to(torch.uint8), i)


def refuse_legacy(folder: Path) -> None:
    """A pickled `checkpoint.pt` of an older version is never loaded: say so, and how to start afresh."""
    legacy = Path(folder) / LEGACY_CHECKPOINT
    if legacy.exists() and not (Path(folder) / CHECKPOINT).exists():
        raise SparseInferError(
            f"cannot resume from {legacy}: checkpoints are no longer pickles (unpickling a file can run code) and "
            f"this one is not loaded; delete it (or pass --no-resume) to start the run afresh"
        )
