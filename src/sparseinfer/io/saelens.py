"""SAELens v6 layout: a folder with `cfg.json` and `sae_weights.safetensors`.

Weights: `W_enc` (d_in, d_sae), `b_enc` (d_sae), `W_dec` (d_sae, d_in), `b_dec` (d_in), plus `threshold` (d_sae)
for JumpReLU (older files store `log_threshold`). Config: `architecture` ("standard" = ReLU, "topk" with `k` and
`rescale_acts_by_decoder_norm`, "jumprelu"), `apply_b_dec_to_input`, `normalize_activations` (only "none" is
supported: the others change the input scale at run time), `dtype`, `metadata`.
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
    dtype_name,
    export_args,
    from_pair,
    parse_dtype,
    read_json,
    read_tensors,
    to_pair,
)
from sparseinfer.lm.hooks import to_saelens_hook

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
FORMAT_VERSION = "6.0.0"  # the SAELens config layout these files follow (read by SAELens' version check)


def is_saelens(folder: Path) -> bool:
    """Whether `folder` looks like an SAELens SAE."""
    return (Path(folder) / WEIGHTS_FILE).exists()


def load_saelens(folder: str | Path, fold: bool = False) -> LoadedSAE:
    """Read an SAELens v6 SAE folder as our encoder + dictionary, with the same codes and reconstructions
    (`fold=True`: unit-norm atoms, codes multiplied by the decoder norms, see `_common`)."""
    folder = Path(folder)
    cfg = read_json(folder / CONFIG_FILE)
    where = str(folder)
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise SparseInferError(f"{where}: unsupported SAELens architecture {arch!r}; supported: {list(ARCHITECTURES)}")
    norm = cfg.get("normalize_activations", "none")
    if norm != "none":
        raise SparseInferError(
            f"{where}: normalize_activations={norm!r} is not supported (only 'none'); fold the scaling into the "
            "weights first (SAELens: fold_activation_norm_scaling_factor)"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise SparseInferError(f"{where}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    tensors = read_tensors(folder / WEIGHTS_FILE, ("W_enc", "b_enc", "W_dec", "b_dec"))
    dtype = parse_dtype(cfg.get("dtype", "float32"), where)
    t = {name: value.to(dtype) for name, value in tensors.items()}
    threshold = None
    if arch == "jumprelu":
        if "threshold" in t:
            threshold = t["threshold"]
        elif "log_threshold" in t:
            threshold = t["log_threshold"].exp()
        else:
            raise SparseInferError(f"{where}: a JumpReLU SAE needs a 'threshold' tensor")
    raw = RawSAE(
        activation=ARCHITECTURES[arch],
        weight=t["W_enc"].T.contiguous(),
        bias=t["b_enc"],
        W_dec=t["W_dec"],
        b_dec=t["b_dec"],
        subtract_bias=bool(cfg.get("apply_b_dec_to_input", True)),
        k=_k(cfg, where) if arch == "topk" else None,
        threshold=threshold,
    )
    check_shapes(raw, where)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        raw = _fold_topk_rescale(raw)
    encoder, dictionary, folded = to_pair(raw, fold=fold)
    provenance = dict(cfg.get("metadata") or {})
    if provenance.get("sparseinfer_model"):  # our built-in model name, exported as its hub id
        provenance["model_name"] = provenance["sparseinfer_model"]
    return LoadedSAE(encoder, dictionary, "saelens", folded, provenance)


HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}
METADATA_DEFAULTS: dict[str, Any] = {"model_name": None, "hook_name": None, "hook_head_index": None,
                                     "context_size": None, "prepend_bos": True, "dataset_path": None,
                                     "exclude_special_tokens": False, "model_from_pretrained_kwargs": {}}  # fmt: skip


def saelens_metadata(provenance: dict[str, Any], metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The config's metadata block: our provenance with SAELens key names, `metadata` on top, hook names in
    TransformerLens form where ours has one (the original kept as `sparseinfer_hook`), built-in model names as hub
    ids (the original kept as `sparseinfer_model`), and every field SAEBench's loader reads (model_name,
    hook_name, hook_layer, hook_head_index, context_size, prepend_bos, dataset_path, exclude_special_tokens,
    model_from_pretrained_kwargs), None where unknown."""
    meta: dict[str, Any] = {**METADATA_DEFAULTS, **provenance, **(metadata or {})}
    hook = meta.get("hook_name")
    if hook:
        translated = to_saelens_hook(str(hook))
        if translated and translated != hook:
            meta |= {"hook_name": translated, "sparseinfer_hook": hook}
        if translated:
            meta.setdefault("hook_layer", int(translated.split(".")[1]))  # older SAEBench versions read it
    model = meta.get("model_name")
    if isinstance(model, str) and model in HUB_IDS:
        meta |= {"model_name": HUB_IDS[model], "sparseinfer_model": model}
    meta.setdefault("hook_layer", None)
    return {"sae_lens_version": FORMAT_VERSION, "written_by": "sparseinfer", **meta}


def _k(cfg: dict[str, Any], where: str) -> int:
    k = cfg.get("k")
    if not isinstance(k, int) or k < 1 or k > int(cfg.get("d_sae", k)):
        raise SparseInferError(f"{where}: a TopK SAE needs an integer k in [1, d_sae], got {k!r}")
    return k


def _fold_topk_rescale(raw: RawSAE) -> RawSAE:
    """`rescale_acts_by_decoder_norm`: TopK selects on pre * ||W_dec_i|| and decodes with W_dec_i / ||W_dec_i||,
    which is exactly a TopK SAE with unit-norm atoms and encoder rows scaled by the norms."""
    norms = raw.W_dec.norm(dim=1)
    return RawSAE(
        activation="topk",
        weight=raw.weight * norms[:, None],
        bias=raw.bias * norms,
        W_dec=raw.W_dec / norms[:, None],
        b_dec=raw.b_dec,
        subtract_bias=raw.subtract_bias,
        k=raw.k,
    )


def save_saelens(
    sae: LoadedSAE | Encoder,
    dictionary: Dictionary | str | Path,
    folder: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    input_scale: float | None = None,
) -> Path:
    """Write an SAE (relu, topk or jumprelu) as an SAELens v6 folder that `SAE.load_from_disk` reads:
    `save_saelens(load_sae(run), folder)` or `save_saelens(encoder, dictionary, folder)`.

    The SAELens SAE takes RAW activations: the input scale (the loaded SAE's, or `input_scale`) is folded into the
    weights (see `from_pair`). `metadata` (model_name, hook_name, ...) goes over the SAE's own provenance into the
    config's metadata block, hook names translated to TransformerLens form."""
    encoder, dico, out, scale, provenance = export_args(sae, dictionary, folder, input_scale)
    raw = from_pair(encoder, dico, scale)
    arch = {v: k for k, v in ARCHITECTURES.items()}[raw.activation]
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": raw.weight.T.contiguous(), "b_enc": raw.bias, "W_dec": raw.W_dec, "b_dec": raw.b_dec}
    if raw.threshold is not None:
        tensors["threshold"] = raw.threshold
    save_file({k: v.cpu() for k, v in tensors.items()}, str(out / WEIGHTS_FILE))
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": dico.dim,
        "d_sae": dico.n_latents,
        "dtype": dtype_name(dico.atoms.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": raw.subtract_bias,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": saelens_metadata(provenance, metadata),
    }
    if raw.k is not None:
        cfg |= {"k": raw.k, "rescale_acts_by_decoder_norm": False}
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return out
