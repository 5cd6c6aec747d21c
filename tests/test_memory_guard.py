"""The memory guard (`sparseinfer.memory`): byte estimates with known answers, and refusals that name the size."""

from __future__ import annotations

import sys

import pytest
import torch

from sparseinfer import memory
from sparseinfer.errors import SparseInferError

GIB = 1024**3


@pytest.fixture
def available(monkeypatch):
    """Set the memory the guard believes available (None: unknown)."""

    def set_to(n: int | None) -> None:
        monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": n)

    return set_to


def test_tensor_bytes_known_answers():
    assert memory.tensor_bytes(3, 4) == 48
    assert memory.tensor_bytes(2, 2, dtype=torch.float64) == 32
    assert memory.tensor_bytes(10, dtype=torch.bfloat16) == 20
    assert memory.tensor_bytes() == 4  # a scalar
    assert memory.tensor_bytes(10**14, 16) == 64 * 10**14  # exact Python integers, no overflow


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (GIB, "1.0 GiB"), (3 * 1024**5, "3.0 PiB"), (2**60, "1024.0 PiB")],
)
def test_format_bytes(n, text):
    assert memory.format_bytes(n) == text


def test_estimates_of_training_coding_and_synthetic_data(available):
    available(None)  # unknown memory: estimates only, nothing refused
    # (2 x 4) buffers x 4 = 128, weights (4 x 3) x 8 = 384, activations (2 x 3) x 4 = 96
    assert memory.check_training_memory(batch=2, dim=3, n_latents=4) == 608
    # codes 2 x (10 x 5) = 400, Gram 5 x 5 = 100, signals 10 x 3 = 120 (float32)
    assert memory.check_coding_memory(10, 5, 3) == 620
    assert memory.check_coding_memory(10, 5, 3, gram=False) == 520
    assert memory.check_coding_memory(10, 5, 3, dtype=torch.float64, copies=1) == 400 + 200 + 240
    # codes 3 x 8 x 50 (float64 draws) + 4 x 50, signals 8 x 20 + 4 x 20, dictionary 8 x 15 + 4 x 15 (n=10, N=5, M=2)
    assert memory.check_synthetic_memory(10, 5, 2) == 1200 + 200 + 160 + 80 + 80 + 40


def test_refusal_names_the_size_needed_and_the_largest_part(available):
    available(16 * GIB)
    with pytest.raises(SparseInferError) as info:
        memory.check_synthetic_memory(10**14, 16, 8)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("synthetic data of 100000000000000 samples x 16 latents x dim 8 needs about ")
    assert "PiB" in message and "codes" in message and "16.0 GiB of memory is available" in message
    with pytest.raises(SparseInferError, match=r"training 4000000000 latents .* needs about .*TiB"):
        memory.check_training_memory(batch=4096, dim=768, n_latents=4_000_000_000)


def test_what_fits_is_not_refused(available):
    available(1000)
    assert memory.check_memory("a thing", {"a": 600, "b": 400}) == 1000  # exactly the available memory fits
    with pytest.raises(SparseInferError, match=r"a thing needs about 1001 B \(a 601 B, b 400 B\) but only 1000 B"):
        memory.check_memory("a thing", {"b": 400, "a": 601})


def test_available_bytes_of_the_host_and_of_other_devices(monkeypatch, tmp_path):
    assert memory.available_bytes("cpu") > 0
    assert memory.available_bytes("meta") is None
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  2000 kB\nMemAvailable:    1000 kB\n")
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` fails: the /proc/meminfo fallback
    monkeypatch.setattr(memory, "_MEMINFO", meminfo)
    assert memory.available_bytes("cpu") == 1024 * 1000
    meminfo.write_text("nothing useful\n")
    assert memory.available_bytes("cpu") is None
    if not torch.cuda.is_available():
        assert memory.available_bytes("cuda") is None
