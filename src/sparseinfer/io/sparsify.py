"""EleutherAI sparsify layout: one folder per hookpoint with `cfg.json` and `sae.safetensors`.

Weights: `encoder.weight` (num_latents, d_in), `encoder.bias`, `W_dec` (num_latents, d_in), `b_dec` (d_in).
The encoder subtracts `b_dec` from the input, applies ReLU, then keeps the top `k` (config `activation="topk"`).
Supported: plain TopK autoencoders; `groupmax`, skip connections and transcoders are refused. The hookpoint is the
folder's name (`layers.3` = the output of block 3 of the base model); it is read as our hook alias (`resid_post.3`)
and written from the SAE's own hook where sparsify can name it (a module output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.io._common import (
    LoadedSAE,
    RawSAE,
    check_shapes,
    export_args,
    from_pair,
    read_json,
    read_tensors,
    to_pair,
)
from sparseinfer.lm.hooks import from_saelens_hook, to_saelens_hook

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def is_sparsify(folder: Path) -> bool:
    """Whether `folder` looks like a sparsify SAE (one hookpoint)."""
    return (Path(folder) / WEIGHTS_FILE).exists()


def hookpoint_to_hook(hookpoint: str) -> str | None:
    """Our hook alias for a sparsify hookpoint (`layers.3` -> `resid_post.3`, `layers.3.mlp` -> `mlp_out.3`)."""
    translated = to_saelens_hook(hookpoint)
    return from_saelens_hook(translated) if translated else None


def hook_to_hookpoint(hook: str) -> str | None:
    """The sparsify hookpoint (a module output, relative to the base model) of one of our hook labels or aliases;
    None where sparsify cannot name it (a module's input, e.g. `resid_pre`)."""
    translated = to_saelens_hook(hook)
    if translated is None:
        return None
    _, layer, name = translated.split(".", 2)
    suffix = {"hook_resid_post": "", "hook_mlp_out": ".mlp", "hook_attn_out": ".self_attn"}.get(name)
    return None if suffix is None else f"layers.{layer}{suffix}"


def load_sparsify(folder: str | Path, fold: bool = False) -> LoadedSAE:
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
    meta["hookpoint"] = folder.resolve().name
    hook = hookpoint_to_hook(meta["hookpoint"])
    if hook is not None:
        meta["hook_name"] = hook
    return LoadedSAE(encoder, dictionary, "sparsify", folded, meta)


def save_sparsify(
    sae: LoadedSAE | Encoder,
    dictionary: Dictionary | str | Path,
    folder: str | Path | None = None,
    *,
    hookpoint: str | None = None,
    input_scale: float | None = None,
) -> Path:
    """Write a TopK SAE whose encoder subtracts the dictionary bias as a sparsify hookpoint folder that
    `SparseCoder.load_from_disk` reads: `save_sparsify(load_sae(run), folder)` or `save_sparsify(encoder,
    dictionary, folder)`. Returns the hookpoint folder: `folder / hookpoint` when `hookpoint` is given or the SAE's
    own hook has a sparsify name, else `folder` itself. The input scale is folded into the weights."""
    encoder, dico, out, scale, provenance = export_args(sae, dictionary, folder, input_scale)
    raw = from_pair(encoder, dico, scale)
    if raw.activation != "topk" or not raw.subtract_bias:
        raise SparseInferError(
            "sparsify stores only TopK SAEs whose encoder subtracts b_dec; "
            f"got encoder {raw.activation!r} with subtract_bias={raw.subtract_bias}"
        )
    hook = provenance.get("hook_name")
    hookpoint = hookpoint or (hook_to_hookpoint(str(hook)) if hook else None)
    out = out / hookpoint if hookpoint else out
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": raw.weight, "encoder.bias": raw.bias, "W_dec": raw.W_dec, "b_dec": raw.b_dec}
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_FILE))
    cfg: dict[str, Any] = {
        "activation": "topk",
        "expansion_factor": max(1, dico.n_latents // dico.dim),
        "normalize_decoder": bool(((raw.W_dec.norm(dim=1) - 1).abs() < 1e-5).all()),
        "num_latents": dico.n_latents,
        "k": raw.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": dico.dim,
    }
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return out
