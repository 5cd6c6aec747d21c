"""One-shot inference: run any encoder on a synthetic problem or on signals from a file, and score it.

Backs `sparseinfer infer`; usable from Python too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sparseinfer import atomic
from sparseinfer.codes import as_dense
from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders import create
from sparseinfer.encoders.base import IterativeEncoder, hyperparameters, needs_k
from sparseinfer.errors import SparseInferError
from sparseinfer.memory import check_coding_memory
from sparseinfer.metrics import fvu, l0, latent_mcc, relative_code_error, support_recovery


@dataclass
class InferenceReport:
    """What one inference call measured."""

    encoder: str
    n_samples: int
    n_latents: int
    dim: int
    flops: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    diagnostics: str = ""


def _read(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a .npy (never unpickled; key "array") or .safetensors file, with one-line errors."""
    if not path.exists():
        raise SparseInferError(f"{what} file not found: {path}")
    if path.suffix not in (".npy", ".safetensors"):
        raise SparseInferError(f"{what} file must be .npy or .safetensors, got {path.name}")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if not isinstance(array, np.ndarray):  # a .npz archive under a .npy name
                raise SparseInferError(f"{what} file {path} is a .npz archive, not one .npy array")
            return {"array": torch.from_numpy(array)}
        return load_file(str(path))
    except (ValueError, OSError, EOFError, TypeError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SparseInferError(f"cannot read {what} file {path}: {first}") from None


def _single(tensors: dict[str, torch.Tensor], path: Path, what: str, preferred: tuple[str, ...]) -> torch.Tensor:
    """The one tensor of a file, or the first of `preferred` names it holds; a 2-D float array."""
    names = [k for k in preferred if k in tensors] or list(tensors)
    if not names:
        raise SparseInferError(f"{what} file {path} holds no tensor")
    if len(names) != 1 and not any(k in tensors for k in preferred):
        raise SparseInferError(f"{path} holds several tensors {sorted(tensors)}; expected one of {list(preferred)}")
    tensor = tensors[names[0]]
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise SparseInferError(f"{what} in {path} must be a 2-D float array, got {tuple(tensor.shape)} {tensor.dtype}")
    if not tensor.numel():
        raise SparseInferError(f"{what} in {path} is empty (shape {tuple(tensor.shape)})")
    return tensor


def load_signals(path: Path) -> torch.Tensor:
    """Signals (batch, dim) from a .npy file or a .safetensors file (its one tensor, or `x` / `signals`)."""
    return _single(_read(path, "signals"), path, "signals", ("x", "signals"))


def load_dictionary(path: Path) -> Dictionary:
    """A dictionary from a saved folder, a .safetensors file (`W_dec` [+ `b_dec`] or one tensor) or a .npy (rows)."""
    if path.is_dir():
        return Dictionary.load(path)
    tensors = _read(path, "dictionary")
    atoms = _single(tensors, path, "dictionary", ("W_dec",))
    return Dictionary(atoms, bias=tensors.get("b_dec"), normalise="W_dec" not in tensors)


def fill_from_problem(name: str, params: dict[str, Any], k: int, nonneg: bool) -> dict[str, Any]:
    """Give an encoder the problem's K (`k`) and sign constraint (`nonneg`) unless the user set them."""
    accepted = hyperparameters(name)
    filled = dict(params)
    if needs_k(name) and "k" not in params:
        filled["k"] = k
    if "nonneg" in accepted and "nonneg" not in params:
        filled["nonneg"] = nonneg
    return filled


def run_inference(
    encoder: str,
    params: dict[str, Any],
    *,
    n_latents: int = 16,
    dim: int = 8,
    k: int = 3,
    n_samples: int = 1024,
    seed: int = 0,
    signals: Path | None = None,
    dictionary: Path | None = None,
    out: Path | None = None,
    dtype: str = "float32",
    signed: bool = False,
) -> InferenceReport:
    """Infer codes with `encoder`; on synthetic data also score them against the truth (MCC, support, error).

    The synthetic problem is the protocol's (non-negative codes unless `signed`); encoders that take `k` or `nonneg`
    get the problem's values unless `params` sets them. With files, `nonneg` defaults to False.
    """
    if dtype not in ("float32", "float64"):
        raise SparseInferError(f"dtype must be float32 or float64, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    true_codes = None
    if (signals is None) != (dictionary is None):
        raise SparseInferError("give both --signals and --dictionary, or neither (a synthetic problem)")
    if signals is None:
        data = make_synthetic(
            n_latents=n_latents, dim=dim, k=k, n_train=1, n_test=n_samples, seed=seed, dtype=dtype, signed=signed
        )
        x, dico, true_codes = data.test_x, data.dictionary, data.test_codes
    else:
        dico = load_dictionary(dictionary).to(torch_dtype)
        x = load_signals(signals).to(torch_dtype)
    nonneg = not signed and signals is None
    model = create(encoder, dim=dico.dim, n_latents=dico.n_latents, **fill_from_problem(encoder, params, k, nonneg))
    model = model.to(torch_dtype).eval()
    check_coding_memory(x.shape[0], dico.n_latents, dico.dim, torch_dtype, gram=isinstance(model, IterativeEncoder))
    start = time.perf_counter()
    with torch.no_grad():
        codes = as_dense(model(x, dico))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        metrics = {"fvu": fvu(x, dico.decode(codes)), "l0": l0(codes)}
    if true_codes is not None:
        support = support_recovery(true_codes, codes)
        metrics |= {
            "latent_mcc": latent_mcc(true_codes, codes),
            "support_f1": support.f1,
            "relative_error": relative_code_error(true_codes, codes),
        }
    if out is not None:
        atomic.write_with(out, lambda tmp: save_file({"codes": codes.contiguous()}, str(tmp)))
    diagnostics = getattr(model, "diagnostics", None) if isinstance(model, IterativeEncoder) else None
    return InferenceReport(
        encoder=encoder,
        n_samples=x.shape[0],
        n_latents=dico.n_latents,
        dim=dico.dim,
        flops=model.inference_flops(x.shape[0], dico.dim, dico.n_latents),
        seconds=seconds,
        metrics=metrics,
        diagnostics=str(diagnostics) if diagnostics is not None else "",
    )
