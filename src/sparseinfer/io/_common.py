"""What the SAE file formats share: the loaded pair, building our encoders from raw weights, decoder-norm folding.

Every format stores an affine encoder (rows `weight` (n_latents, dim), `bias`), an activation (ReLU, TopK or
JumpReLU with per-latent thresholds), a decoder `W_dec` (n_latents, dim) and a decoder bias `b_dec`. By default the
atoms are kept as stored, so codes equal the source library's. With `fold=True` a decoder row of norm n is divided
by n and latent i's pre-activation multiplied by n (weight row, bias, threshold), giving unit-norm atoms: ReLU and
JumpReLU are positively homogeneous, so reconstructions are unchanged while codes are multiplied by the norms. TopK
is not (rescaling latents changes which k win), so a TopK SAE whose selection ignores the norms is never folded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create
from sparseinfer.encoders.jumprelu import JumpReLUEncoder
from sparseinfer.encoders.relu import ReLUEncoder
from sparseinfer.encoders.topk import TopKEncoder
from sparseinfer.errors import SparseInferError

ACTIVATIONS = ("relu", "topk", "jumprelu")
NORM_TOLERANCE = 1e-5  # relative deviation from unit norm treated as unit (float32 round-off)


@dataclass
class LoadedSAE:
    """An SAE read from disk: our encoder and dictionary, the input scale and where it came from.

    The pair works on SCALED activations (`input_scale * x`, as our LM runs train); `encode` and `reconstruct` take
    RAW activations and apply the scale, so their outputs equal the source library's on the same inputs. `folded`
    says whether decoder norms were folded into the codes (only with `load_sae(..., fold=True)`). `provenance`
    holds SAELens-style metadata: model_name, hook_name, dataset_path, versions.
    """

    encoder: Encoder
    dictionary: Dictionary
    source: str
    folded: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    input_scale: float = 1.0

    @property
    def hook_name(self) -> str | None:
        """The hook point the SAE was trained on, if its files say (ours or a SAELens name)."""
        hook = self.provenance.get("hook_name")
        return str(hook) if hook else None

    def scale(self, x: Tensor) -> Tensor:
        """Raw signals on the pair's scale: `input_scale * x` in the dictionary's dtype."""
        return x.to(self.dictionary.atoms.dtype) * self.input_scale

    def codes(self, scaled: Tensor) -> Tensor:
        """Dense codes of signals already on the pair's scale (what the encoder sees)."""
        with torch.no_grad():
            codes = self.encoder(scaled, self.dictionary)
        return codes.to_dense() if hasattr(codes, "to_dense") else codes

    def encode(self, x: Tensor) -> Tensor:
        """Dense codes of RAW signals `x` (scaled by `input_scale` before the encoder)."""
        return self.codes(self.scale(x))

    def decode(self, codes: Tensor) -> Tensor:
        """Raw-scale reconstruction of `codes`: decode(codes) / input_scale."""
        with torch.no_grad():
            return self.dictionary.decode(codes) / self.input_scale

    def reconstruct(self, x: Tensor) -> Tensor:
        """x_hat = decode(encode(x)), both on the raw scale."""
        return self.decode(self.encode(x))

    def to(self, device: str | torch.device) -> LoadedSAE:
        """Move the encoder and dictionary to `device` (in place); returns self."""
        self.encoder.to(device)
        self.dictionary.to(device)
        return self


def check_scale(scale: Any, where: str) -> float:
    """A finite positive input scale, or a one-line error."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise SparseInferError(f"{where}: input scale must be a number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SparseInferError(f"{where}: input scale must be finite and positive, got {value}")
    return value


@dataclass
class RawSAE:
    """Format-neutral SAE weights: encoder rows (n_latents, dim), biases, decoder rows, activation and its params."""

    activation: str
    weight: Tensor
    bias: Tensor
    W_dec: Tensor
    b_dec: Tensor
    subtract_bias: bool = True
    k: int | None = None
    threshold: Tensor | None = None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, with one-line errors for a missing or corrupt file."""
    if not path.exists():
        raise SparseInferError(f"no config file at {path}")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise SparseInferError(f"cannot read config {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SparseInferError(f"corrupt config {path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise SparseInferError(f"corrupt config {path}: {err}") from None
    if not isinstance(cfg, dict):
        raise SparseInferError(f"config {path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def json_object(cfg: dict[str, Any], key: str, where: Path) -> dict[str, Any]:
    """`cfg[key]` as a JSON object ({} when absent or null), or a one-line error naming the file and the key."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SparseInferError(f"config {where}: {key!r} must be a JSON object, got {type(value).__name__}")
    return dict(value)


def read_tensors(path: Path, required: tuple[str, ...]) -> dict[str, Tensor]:
    """The tensors of a safetensors file, requiring the names in `required`."""
    if not path.exists():
        raise SparseInferError(f"no weights file at {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SparseInferError(f"corrupt weights file {path}: {err}") from None
    missing = [name for name in required if name not in tensors]
    if missing:
        raise SparseInferError(f"{path} lacks tensor(s) {missing} (found {sorted(tensors)})")
    return tensors


def check_shapes(raw: RawSAE, where: str) -> None:
    """Require consistent (n_latents, dim) shapes across the raw tensors."""
    n_latents, dim = raw.W_dec.shape if raw.W_dec.ndim == 2 else (-1, -1)
    expected = {
        "encoder weight": (raw.weight, (n_latents, dim)),
        "encoder bias": (raw.bias, (n_latents,)),
        "W_dec": (raw.W_dec, (n_latents, dim)),
        "b_dec": (raw.b_dec, (dim,)),
    }
    if raw.threshold is not None:
        expected["threshold"] = (raw.threshold, (n_latents,))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape or n_latents < 1:
            raise SparseInferError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected {shape}")


def to_pair(raw: RawSAE, fold: bool = False) -> tuple[Encoder, Dictionary, bool]:
    """Our (encoder, dictionary) with the same outputs as `raw`; returns whether decoder norms were folded.

    `fold=False` keeps the atoms as stored (no folding), which is also what TopK needs when norms are not 1.
    """
    norms = raw.W_dec.double().norm(dim=1)
    if (norms <= 1e-12).any():
        raise SparseInferError("the SAE has an all-zero decoder row; it cannot be a dictionary atom")
    unit = bool(((norms - 1).abs() <= NORM_TOLERANCE).all())
    fold = fold and (raw.activation != "topk" or unit)
    fold = fold and not unit  # unit norms: nothing to fold, and no round-off added
    scale = norms.to(raw.W_dec.dtype) if fold else torch.ones_like(norms, dtype=raw.W_dec.dtype)
    dictionary = Dictionary(raw.W_dec / scale[:, None], bias=raw.b_dec, normalise=False)
    n_latents, dim = raw.W_dec.shape
    params: dict[str, Any] = {"subtract_bias": raw.subtract_bias}
    if raw.activation == "topk":
        params["k"] = raw.k
    encoder = create(raw.activation, dim=dim, n_latents=n_latents, **params).to(raw.W_dec.dtype)
    assert isinstance(encoder, ReLUEncoder)
    with torch.no_grad():
        encoder.linear.weight.copy_(raw.weight * scale[:, None])
        assert encoder.linear.bias is not None
        encoder.linear.bias.copy_(raw.bias * scale)
        if isinstance(encoder, JumpReLUEncoder):
            assert raw.threshold is not None
            tiny = torch.finfo(raw.threshold.dtype).tiny
            encoder.log_threshold.copy_((raw.threshold * scale).clamp_min(tiny).log())
    return encoder.eval(), dictionary, fold


def from_pair(encoder: Encoder, dictionary: Dictionary, input_scale: float = 1.0) -> RawSAE:
    """The raw weights of one of our SAE encoders (relu, topk, jumprelu) with its dictionary, taking RAW inputs.

    The input scale s is folded in: act(W (s x - b_dec) + b) = act((s W)(x - b_dec / s) + b) and the raw
    reconstruction is (c W_dec + b_dec) / s, so W -> s W, W_dec -> W_dec / s, b_dec -> b_dec / s; the encoder bias
    and JumpReLU thresholds are unchanged, and TopK's selection is unchanged (every pre-activation is the same)."""
    s = check_scale(input_scale, "export")
    if encoder.name not in ACTIVATIONS or not isinstance(encoder, ReLUEncoder):
        raise SparseInferError(
            f"only SAE encoders {list(ACTIVATIONS)} can be written in an SAE format, got {encoder.name!r}"
        )
    if (encoder.linear.in_features, encoder.linear.out_features) != (dictionary.dim, dictionary.n_latents):
        raise SparseInferError(
            f"encoder is for dim={encoder.linear.in_features}, n_latents={encoder.linear.out_features} but the "
            f"dictionary has dim={dictionary.dim}, n_latents={dictionary.n_latents}"
        )
    dtype = dictionary.atoms.dtype
    weight = encoder.linear.weight.detach().to(dtype)
    bias = encoder.linear.bias
    b_dec = dictionary.bias
    return RawSAE(
        activation=encoder.name,
        weight=(weight * s).contiguous(),
        bias=weight.new_zeros(weight.shape[0]) if bias is None else bias.detach().to(dtype).contiguous(),
        W_dec=(dictionary.atoms.detach() / s).contiguous(),
        b_dec=weight.new_zeros(weight.shape[1]) if b_dec is None else (b_dec.detach() / s).contiguous(),
        subtract_bias=encoder.subtract_bias,
        k=encoder.k if isinstance(encoder, TopKEncoder) else None,
        threshold=encoder.threshold.detach().to(dtype).contiguous() if isinstance(encoder, JumpReLUEncoder) else None,
    )


def export_args(
    sae: LoadedSAE | Encoder, second: Dictionary | str | Path, third: str | Path | None, input_scale: float | None
) -> tuple[Encoder, Dictionary, Path, float, dict[str, Any]]:
    """The arguments of an export, `save_x(sae, folder)` or `save_x(encoder, dictionary, folder)`: (encoder,
    dictionary, folder, input scale, provenance); a LoadedSAE brings its own scale and provenance."""
    if isinstance(sae, LoadedSAE):
        if third is not None or isinstance(second, Dictionary):
            raise SparseInferError("export a loaded SAE as save_x(sae, folder), without a dictionary")
        scale = sae.input_scale if input_scale is None else input_scale
        return sae.encoder, sae.dictionary, Path(second), scale, dict(sae.provenance)
    if not isinstance(second, Dictionary) or third is None:
        raise SparseInferError("export an encoder as save_x(encoder, dictionary, folder)")
    return sae, second, Path(third), 1.0 if input_scale is None else input_scale, {}


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: Any, where: str) -> torch.dtype:
    """torch dtype from a config string such as 'float32' or 'torch.bfloat16'."""
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise SparseInferError(f"{where}: unknown floating-point dtype {name!r}")
    return value
