"""A memory guard: estimate the bytes of the big tensors before allocating them, and refuse what cannot fit.

Without it, `--n-samples 100000000000000` reaches the allocator ("can't allocate 128000000000128 bytes") or, worse,
a size just too large swaps for half an hour before the kernel kills the process. Estimates count the large
arrays only (signals, codes, dictionary, Gram, activation buffers) and are compared with the memory available now:
`MemAvailable` of the host (through psutil, else /proc/meminfo), or the free memory of a CUDA device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from sparseinfer.errors import SparseInferError

_MEMINFO = Path("/proc/meminfo")


def tensor_bytes(*shape: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense tensor of `shape` and `dtype` (exact Python integers: no overflow for absurd sizes)."""
    return math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Memory that can be allocated now on `device` (host: MemAvailable), or None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(what: str, parts: Mapping[str, int], device: str | torch.device = "cpu") -> int:
    """Refuse `what` when the bytes of its `parts` (name -> bytes) exceed the memory available on `device`.

    Returns the total estimate. The message gives the size needed, the largest parts and what is available."""
    total = sum(int(v) for v in parts.values())
    free = available_bytes(device)
    if free is not None and total > free:
        largest = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
        detail = ", ".join(f"{name} {format_bytes(b)}" for name, b in largest)
        raise SparseInferError(
            f"{what} needs about {format_bytes(total)} ({detail}) but only {format_bytes(free)} of memory is "
            f"available on {torch.device(device).type}; use smaller sizes"
        )
    return total


def check_training_memory(batch: int, dim: int, n_latents: int, device: str | torch.device = "cpu") -> int:
    """Refuse SAE training whose big tensors cannot fit: (batch, n_latents) buffers (pre-activations, codes and their
    gradients) and the encoder and dictionary with gradients and both Adam moments (float32)."""
    parts = {
        "batch x latents buffers": 4 * tensor_bytes(batch, n_latents),
        "weights, gradients and Adam moments": 2 * 4 * tensor_bytes(n_latents, dim),
        "batch activations": 4 * tensor_bytes(batch, dim),
    }
    return check_memory(f"training {n_latents} latents on batches of {batch} x {dim}", parts, device)


def check_synthetic_memory(n_samples: int, n_latents: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Refuse a synthetic data set that cannot fit: the float64 draws of (n_samples, n_latents) codes (keys,
    magnitudes, codes), the signals, the dictionary, and their copies in `dtype`."""
    f64 = torch.float64
    parts = {
        "codes": 3 * tensor_bytes(n_samples, n_latents, dtype=f64) + tensor_bytes(n_samples, n_latents, dtype=dtype),
        "signals": tensor_bytes(n_samples, dim, dtype=f64) + tensor_bytes(n_samples, dim, dtype=dtype),
        "dictionary": tensor_bytes(n_latents, dim, dtype=f64) + tensor_bytes(n_latents, dim, dtype=dtype),
    }
    return check_memory(f"synthetic data of {n_samples} samples x {n_latents} latents x dim {dim}", parts)


def check_coding_memory(
    n_samples: int, n_latents: int, dim: int, dtype: torch.dtype = torch.float32, copies: int = 2, gram: bool = True,
    device: str | torch.device = "cpu",
) -> int:  # fmt: skip
    """Refuse sparse coding of a whole (n_samples, dim) matrix that cannot fit: `copies` (n_samples, n_latents)
    code buffers (codes, iterates, gradients or optimiser moments) and the (n_latents, n_latents) Gram matrix."""
    parts = {"codes": copies * tensor_bytes(n_samples, n_latents, dtype=dtype)}
    if gram:
        parts["Gram matrix"] = tensor_bytes(n_latents, n_latents, dtype=dtype)
    parts["signals"] = tensor_bytes(n_samples, dim, dtype=dtype)
    return check_memory(f"sparse coding of {n_samples} signals with {n_latents} latents", parts, device)
