"""Input checks shared by every public entry point, so bad input fails early with a one-line message."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

from sparseinfer.errors import SparseInferError

_VALIDATED: ContextVar[bool] = ContextVar("sparseinfer_inputs_validated", default=False)


@contextlib.contextmanager
def inputs_validated() -> Iterator[None]:
    """Within this block `check_finite` trusts its input: the caller checked the data where it entered (a training
    loop's entry, a store's reader). Reading a tensor's finiteness back to Python waits for the device, so a check in
    every training step's encoder call would synchronise host and accelerator each step; shapes and dtypes (host-side
    metadata) are still checked."""
    token = _VALIDATED.set(True)
    try:
        yield
    finally:
        _VALIDATED.reset(token)


def check_matrix(t: Tensor, name: str, cols: int | None = None, finite: bool = True) -> Tensor:
    """Require a finite floating-point 2-D tensor, optionally with `cols` columns; `finite=False` checks only the
    shape and dtype (host-side metadata, no wait for the device)."""
    if not isinstance(t, Tensor):
        raise SparseInferError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise SparseInferError(f"{name} must be 2-D (batch, features), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise SparseInferError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if cols is not None and t.shape[1] != cols:
        raise SparseInferError(f"{name} has {t.shape[1]} columns, expected {cols} (shape {tuple(t.shape)})")
    if finite:
        check_finite(t, name)
    return t


def check_finite(t: Tensor, name: str) -> Tensor:
    """Require no NaN or Inf entries (skipped inside `inputs_validated`, where the caller checked them once)."""
    if _VALIDATED.get():
        return t
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise SparseInferError(f"{name} contains {bad} NaN/Inf value(s)")
    return t


def check_signals(x: Tensor, dim: int, dtype: torch.dtype | None = None, finite: bool = True) -> Tensor:
    """Validate signals `x` (batch, dim) against a dictionary's dim and dtype (`finite`: as in `check_matrix`)."""
    check_matrix(x, "signals x", cols=dim, finite=finite)
    if dtype is not None and x.dtype != dtype:
        raise SparseInferError(f"signals x have dtype {x.dtype} but the dictionary has {dtype}; cast one of them")
    return x


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """Require a finite positive (or non-negative) number (inf, NaN and booleans are refused: no solver can use
    them, and an infinite penalty reaches the kernels as an overflow)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None:
        raise SparseInferError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(number):
        raise SparseInferError(f"{name} must be finite, got {value}")
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise SparseInferError(f"{name} must be {bound}, got {value}")
    return value


def check_k(k: int, n_latents: int, name: str = "k") -> int:
    """Require 1 <= k <= n_latents (an integer; booleans are not counts)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SparseInferError(f"{name} must be a positive integer, got {k!r}")
    if k > n_latents:
        raise SparseInferError(f"{name}={k} exceeds the number of latents N={n_latents}")
    return k


def check_count(value: int, name: str) -> int:
    """Require a positive integer (iterations, layers, intervals); booleans are not counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SparseInferError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_device(device: str, name: str = "device") -> str:
    """Require a device torch knows and this machine has (a CUDA index within the GPUs present); returns it."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise SparseInferError(f"{name} {device!r} is not a device (cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SparseInferError(f"{name} {device!r}: this machine has no usable CUDA GPU; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise SparseInferError(f"{name} {device!r}: this machine has {count} CUDA GPU(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise SparseInferError(f"{name} {device!r}: MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise SparseInferError(f"{name} {device!r}: only cpu, cuda and mps devices are supported")
    return device
