"""Our own format for any (encoder, dictionary) pair, written by `save_sae` and read by `load_native`.

A folder with `encoder.safetensors` (the encoder's state dict), `dictionary.safetensors` (`W_dec`, `b_dec`) and one
`cfg.json`: `format` ("sparseinfer") and `format_version`, the encoder's registered name (`encoder`) and its
hyperparameters (`hparams`, from `encoders.base.encoder_config`), `d_in`, `d_sae`, `dtype`, the input scale
(`input_scale`: the pair works on `input_scale * x`, our LM runs' normalisation; `normalize_activations` is
"none" when it is 1, else "constant_scale") and `metadata` with SAELens v6 key names where they exist (model_name,
hook_name, dataset_path, context_size, prepend_bos) plus sparseinfer_version and torch_version. No pickle: the config
holds JSON values and the weights are tensors only. `encoder: null` marks a dictionary saved without an encoder
(a sparse-coding or scikit-learn run of the synthetic study).

Older folders still load: version 1 (no `format_version`, no scale), `sparseinfer train` runs of the old layout
(run.json + encoder.safetensors + dictionary/) and synthetic sweep runs of the old layout (config.yaml +
dictionary.safetensors + encoder.safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

import sparseinfer
from sparseinfer.dictionary import CONFIG_FILE, Dictionary
from sparseinfer.encoders.base import Encoder, create, encoder_config
from sparseinfer.errors import SparseInferError
from sparseinfer.io._common import (
    LoadedSAE,
    check_scale,
    dtype_name,
    json_object,
    parse_dtype,
    read_json,
    read_tensors,
)

ENCODER_FILE = "encoder.safetensors"
FORMAT = "sparseinfer"
FORMAT_VERSION = 2
RUN_FILE = "run.json"  # an LM training run's history (written beside the SAE by `sparseinfer train`)
SWEEP_CONFIG = "config.yaml"  # a synthetic sweep run's resolved config


def _cfg(folder: Path) -> dict[str, Any] | None:
    path = folder / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return cfg if isinstance(cfg, dict) else None


def is_native(folder: Path) -> bool:
    """Whether `folder` holds a pair in our format (any version)."""
    cfg = _cfg(Path(folder))
    return cfg is not None and cfg.get("format") == FORMAT


def is_legacy_run(folder: Path) -> bool:
    """Whether `folder` is a run of an older layout: an LM run (run.json + dictionary/) or a synthetic sweep run
    (config.yaml + dictionary.safetensors)."""
    folder = Path(folder)
    lm_run = (folder / RUN_FILE).exists() and (folder / "dictionary").is_dir()
    return lm_run or ((folder / SWEEP_CONFIG).exists() and (folder / "dictionary.safetensors").exists())


def provenance_defaults() -> dict[str, str]:
    """The versions every written file records."""
    return {"sparseinfer_version": sparseinfer.__version__, "torch_version": str(torch.__version__)}


def save_sae(
    encoder: Encoder | None,
    dictionary: Dictionary,
    folder: str | Path,
    *,
    input_scale: float = 1.0,
    provenance: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> Path:
    """Write the pair into `folder` (the one writer of the project): weights as safetensors plus `cfg.json`.

    `input_scale`: the pair encodes `input_scale * x` (reconstructions are divided by it on the way back);
    `provenance`: SAELens-style metadata (model_name, hook_name, dataset_path, ...), versions are added;
    `hparams` overrides the constructor arguments read from the encoder; `encoder=None` saves the dictionary only.
    """
    scale = check_scale(input_scale, str(folder))
    params = {} if encoder is None else {**encoder_config(encoder), **(hparams or {})}
    meta = {**provenance_defaults(), **(provenance or {})}
    try:
        json.dumps([params, meta])
    except TypeError as err:
        raise SparseInferError(f"the encoder's hyperparameters or the provenance are not JSON values: {err}") from None
    folder = dictionary.save(folder)
    path = folder / ENCODER_FILE
    if encoder is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, str(path))
    else:
        path.unlink(missing_ok=True)
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": None if encoder is None else encoder.name,
        "hparams": params,
        "d_in": dictionary.dim,
        "d_sae": dictionary.n_latents,
        "dtype": dtype_name(dictionary.atoms.dtype),
        "normalize_activations": "none" if scale == 1.0 else "constant_scale",
        "input_scale": scale,
        "metadata": meta,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return folder


save_native = save_sae  # the name older callers use


def _build(name: str, params: dict[str, Any], dictionary: Dictionary, state_path: Path, dtype: torch.dtype) -> Encoder:
    """The encoder `name` for `dictionary`, with exactly the saved weights (strict)."""
    encoder = create(name, dim=dictionary.dim, n_latents=dictionary.n_latents, **params).to(dtype)
    state = read_tensors(state_path, ()) if state_path.exists() else {}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise SparseInferError(f"{state_path} does not match encoder {name!r}: {first}") from None
    return encoder.eval()


def load_native(folder: str | Path) -> LoadedSAE:
    """Read a pair written by `save_sae` (any format version); the encoder gets exactly the saved weights."""
    folder = Path(folder)
    cfg = read_json(folder / CONFIG_FILE)
    if cfg.get("format") != FORMAT or "encoder" not in cfg:
        raise SparseInferError(f"{folder} is not a sparseinfer encoder folder (cfg.json lacks format/encoder)")
    if cfg["encoder"] is None:
        raise SparseInferError(
            f"{folder} holds a dictionary without an encoder (a sparse-coding or scikit-learn run); "
            "pass it as --dictionary with an encoder instead"
        )
    version = cfg.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise SparseInferError(f"config {folder / CONFIG_FILE}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SparseInferError(f"{folder} has format_version {version}; this sparseinfer reads up to {FORMAT_VERSION}")
    dictionary = Dictionary.load(folder)
    dtype = parse_dtype(cfg.get("dtype", "float32"), str(folder))
    where = folder / CONFIG_FILE
    encoder = _build(cfg["encoder"], json_object(cfg, "hparams", where), dictionary, folder / ENCODER_FILE, dtype)
    meta = json_object(cfg, "metadata", where) or {"sparseinfer_version": cfg.get("version")}
    scale = check_scale(cfg.get("input_scale", 1.0), str(folder))
    return LoadedSAE(encoder, dictionary, FORMAT, False, meta, scale)


def load_legacy_run(folder: str | Path) -> LoadedSAE:
    """Read a run folder of an older layout (see `is_legacy_run`)."""
    folder = Path(folder)
    if (folder / RUN_FILE).exists() and (folder / "dictionary").is_dir():
        info = read_json(folder / RUN_FILE)
        config = json_object(info, "config", folder / RUN_FILE)
        if "encoder" not in config:
            raise SparseInferError(f"{folder / RUN_FILE} lacks config.encoder")
        dictionary = Dictionary.load(folder / "dictionary")
        dtype = dictionary.atoms.dtype
        params = json_object(config, "hparams", folder / RUN_FILE)
        encoder = _build(config["encoder"], params, dictionary, folder / ENCODER_FILE, dtype)
        return LoadedSAE(encoder, dictionary, FORMAT, False, run_provenance(info), float(info.get("scale", 1.0)))
    try:
        config = yaml.safe_load((folder / SWEEP_CONFIG).read_text()) or {}
    except yaml.YAMLError as err:
        raise SparseInferError(f"corrupt {folder / SWEEP_CONFIG}: {err}") from None
    spec = config.get("encoder") if config.get("kind", "encoder") == "encoder" else None
    if not isinstance(spec, dict) or "name" not in spec or not (folder / ENCODER_FILE).exists():
        raise SparseInferError(f"{folder} holds a dictionary without an encoder (kind {config.get('kind')!r})")
    dictionary = Dictionary.load(folder)
    params = dict(spec.get("params") or {})
    encoder = _build(spec["name"], params, dictionary, folder / ENCODER_FILE, dictionary.atoms.dtype)
    return LoadedSAE(encoder, dictionary, FORMAT, False, sweep_provenance(config), 1.0)


def run_provenance(info: dict[str, Any]) -> dict[str, Any]:
    """SAELens-style metadata of an LM training run from its `run.json` content (its `source` block)."""
    source = dict(info.get("source") or {})
    out: dict[str, Any] = {}
    for ours, theirs in (("model", "model_name"), ("hook", "hook_name"), ("store", "dataset_path")):
        if source.get(ours) is not None:
            out[theirs] = source[ours]
    for key in ("context_size", "prepend_bos", "tokens", "on_the_fly"):
        if key in source:
            out[key] = source[key]
    return out


def sweep_provenance(config: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a synthetic sweep run from its resolved config: the synthetic problem and the versions."""
    out: dict[str, Any] = {"dataset_path": "synthetic", "synthetic": config.get("data", {})}
    versions = config.get("versions") or {}
    for key in ("sparseinfer", "torch"):
        if key in versions:
            out[f"{key}_version"] = versions[key]
    for key in ("setting", "method", "seed"):
        if key in config:
            out[key] = config[key]
    return out
