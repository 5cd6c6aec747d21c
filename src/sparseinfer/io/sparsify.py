"""EleutherAI sparsify layout: one folder per hookpoint with `cfg.json` and `sae.safetensors`.

Weights: `encoder.weight` (num_latents, d_in), `encoder.bias`, `W_dec` (num_latents, d_in), `b_dec` (d_in).
The encoder subtracts `b_dec` from the input, applies ReLU, then keeps the top `k` (config `activation="topk"`).
Supported: plain TopK autoencoders; `groupmax`, skip connections and transcoders are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.io._common import LoadedSAE, RawSAE, check_shapes, from_pair, read_json, read_tensors, to_pair

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def is_sparsify(folder: Path) -> bool:
    """Whether `folder` looks like a sparsify SAE (one hookpoint)."""
    return (Path(folder) / WEIGHTS_FILE).exists()


def load_sparsify(folder: str | Path, fold: bool = True) -> LoadedSAE:
    """Read a sparsify hookpoint folder as our TopK encoder + dictionary, with the same codes and reconstructions."""
    folder = Path(folder)
    where = str(folder)
    cfg = read_json(folder / CONFIG_FILE)
    if cfg.get("activation", "topk") != "topk":
        raise SparseInferError(f"{where}: sparsify activation {cfg['activation']!r} is not supported (only 'topk')")
    for flag in ("skip_connection", "transcode"):
        if cfg.get(flag, False):
            raise SparseInferError(f"{where}: sparsify {flag}=true is not supported (not a plain autoencoder)")
    t = read_tensors(folder / WEIGHTS_FILE, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    k = cfg.get("k", 32)
    n_latents = t["encoder.weight"].shape[0]
    if not isinstance(k, int) or not 1 <= k <= n_latents:
        raise SparseInferError(f"{where}: k must be an integer in [1, {n_latents}], got {k!r}")
    raw = RawSAE("topk", t["encoder.weight"], t["encoder.bias"], t["W_dec"], t["b_dec"], subtract_bias=True, k=k)
    check_shapes(raw, where)
    encoder, dictionary, folded = to_pair(raw, fold=fold)
    meta = {key: cfg[key] for key in ("d_in", "num_latents", "expansion_factor", "normalize_decoder") if key in cfg}
    return LoadedSAE(encoder, dictionary, "sparsify", folded, meta)


def save_sparsify(encoder: Encoder, dictionary: Dictionary, folder: str | Path) -> Path:
    """Write a TopK encoder that subtracts the dictionary bias, with its dictionary, as a sparsify hookpoint folder
    that `SparseCoder.load_from_disk` reads."""
    raw = from_pair(encoder, dictionary)
    if raw.activation != "topk" or not raw.subtract_bias:
        raise SparseInferError(
            "sparsify stores only TopK SAEs whose encoder subtracts b_dec; "
            f"got encoder {raw.activation!r} with subtract_bias={raw.subtract_bias}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": raw.weight, "encoder.bias": raw.bias, "W_dec": raw.W_dec, "b_dec": raw.b_dec}
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    cfg: dict[str, Any] = {
        "activation": "topk",
        "expansion_factor": max(1, dictionary.n_latents // dictionary.dim),
        "normalize_decoder": bool(((dictionary.atoms.detach().norm(dim=1) - 1).abs() < 1e-5).all()),
        "num_latents": dictionary.n_latents,
        "k": raw.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": dictionary.dim,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return folder
