"""Our own format for any (encoder, dictionary) pair: a folder with `cfg.json`, `dictionary.safetensors` and
`encoder.safetensors` (the encoder's state dict). No pickle: the config names the encoder and its constructor
arguments (JSON values), and the weights are tensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

import sparseinfer
from sparseinfer.dictionary import CONFIG_FILE, Dictionary
from sparseinfer.encoders.base import Encoder, create, encoder_config
from sparseinfer.errors import SparseInferError
from sparseinfer.io._common import LoadedSAE, dtype_name, parse_dtype, read_json, read_tensors

ENCODER_FILE = "encoder.safetensors"
FORMAT = "sparseinfer"


def is_native(folder: Path) -> bool:
    """Whether `folder` holds a pair written by `save_native`."""
    path = Path(folder) / CONFIG_FILE
    try:
        return path.exists() and json.loads(path.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return False


def save_native(
    encoder: Encoder, dictionary: Dictionary, folder: str | Path, hparams: dict[str, Any] | None = None
) -> Path:
    """Write the pair into `folder`; `hparams` overrides the constructor arguments read from the encoder."""
    params = {**encoder_config(encoder), **(hparams or {})}
    try:
        json.dumps(params)
    except TypeError as err:
        raise SparseInferError(f"encoder {encoder.name!r} has non-JSON hyperparameters: {err}") from None
    folder = dictionary.save(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / ENCODER_FILE))
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg |= {"format": FORMAT, "version": sparseinfer.__version__, "encoder": encoder.name, "hparams": params}
    cfg["dtype"] = dtype_name(dictionary.atoms.dtype)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return folder


def load_native(folder: str | Path) -> LoadedSAE:
    """Read a pair written by `save_native`; the encoder gets exactly the saved weights (strict)."""
    folder = Path(folder)
    cfg = read_json(folder / CONFIG_FILE)
    if cfg.get("format") != FORMAT or "encoder" not in cfg:
        raise SparseInferError(f"{folder} is not a sparseinfer encoder folder (cfg.json lacks format/encoder)")
    dictionary = Dictionary.load(folder)
    dtype = parse_dtype(cfg.get("dtype", "float32"), str(folder))
    encoder = create(
        cfg["encoder"], dim=dictionary.dim, n_latents=dictionary.n_latents, **dict(cfg.get("hparams") or {})
    ).to(dtype)
    path = folder / ENCODER_FILE
    state = read_tensors(path, ()) if path.exists() else {}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise SparseInferError(f"{path} does not match encoder {cfg['encoder']!r}: {first}") from None
    return LoadedSAE(encoder.eval(), dictionary, FORMAT, True, {"version": cfg.get("version")})
