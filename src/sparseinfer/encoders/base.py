"""The `Encoder` interface, the iterative-solver base, and the registry that maps names to encoder classes.

An encoder infers codes for signals given a dictionary: `encoder(x, dictionary) -> codes`.
Amortised encoders own parameters and read only the dictionary's shape and bias; iterative encoders own
only hyperparameters and solve against the dictionary. Adding an encoder is one file plus `@register`.

Each encoder class declares its hyperparameters once, as a typed pydantic model `Config` (a subclass of
`EncoderConfig`, next to the class). The constructor takes exactly the config's fields, validates them through it
(`configure`) and keeps the result as `encoder.config`; the registry (`create`, `hyperparameters`), the CLI's table
and the file formats (`encoder_config`) all read that one description.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from sparseinfer.codes import Codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_signals

_REGISTRY: dict[str, type[Encoder]] = {}
SHAPE_ARGS = ("dim", "n_latents")
Shape = Literal["required", "optional", "none"]  # whether an encoder's constructor takes dim and n_latents


class EncoderConfig(BaseModel):
    """Base of every encoder's hyperparameters: typed fields with defaults and descriptions, unknown keys refused.

    Frozen, so an encoder's config changes only through the encoder (see `Encoder.__setattr__`). Integers and
    booleans are declared strict (`StrictInt`, `StrictBool`: 1 is no bool, True no count); floats accept integers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Hyperparameter:
    """One declared hyperparameter, as the CLI's table shows it."""

    name: str
    type: str
    default: Any
    description: str


class Encoder(nn.Module):
    """Maps signals (batch, dim) to codes (batch, n_latents) or `SparseCodes`, given a dictionary.

    `config` holds the validated hyperparameters the encoder was built with (its class's `Config`); setting an
    attribute that is a config field (e.g. `encoder.sparse_output = True`) updates the config too, so that what a
    file stores is what the encoder does.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "amortised"  # "amortised" | "iterative" | "hybrid" | "learned-iterative"
    summary: ClassVar[str] = ""
    Config: ClassVar[type[EncoderConfig]] = EncoderConfig
    shape: ClassVar[Shape] = "required"
    config: EncoderConfig

    def __setattr__(self, name: str, value: Any) -> None:
        config = self.__dict__.get("config")
        if config is not None and name != "config" and name in type(config).model_fields:
            self.__dict__["config"] = _validate(self.name, type(config), {**config.model_dump(), name: value})
        super().__setattr__(name, value)

    def forward(self, x: Tensor, dictionary: Dictionary) -> Codes:  # pragma: no cover - interface
        raise NotImplementedError

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:  # pragma: no cover
        """FLOPs of one `forward` on `batch` signals (multiply-add = 2); iterative: iterations actually run."""
        raise NotImplementedError

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:  # pragma: no cover
        """FLOPs of forward + backward through the encoder for one training step.

        `input_grad`: the encoder's input needs a gradient too (a learned dictionary bias is subtracted from x).
        """
        raise NotImplementedError(f"encoder {self.name!r} is not trained by gradient steps")

    @property
    def trainable(self) -> bool:
        """Whether the encoder has parameters a training loop can learn."""
        return any(p.requires_grad for p in self.parameters())

    def sparsity_penalty(self, codes: Tensor) -> Tensor | None:
        """An encoder-specific sparsity loss (e.g. JumpReLU's L0); None means use the regime's L1."""
        return None

    @classmethod
    def has_own_penalty(cls) -> bool:
        """Whether the encoder replaces the regime's L1 term with its own `sparsity_penalty`."""
        return cls.sparsity_penalty is not Encoder.sparsity_penalty

    def _check(self, x: Tensor, dictionary: Dictionary) -> None:
        check_signals(x, dictionary.dim, dictionary.atoms.dtype)


@dataclass
class Diagnostics:
    """Convergence of one batched solve: iterations run, whether every sample met the tolerance, last measure.

    `measure` names what `max_change` is (the quantity the stopping rule compares with its tolerance; empty for an
    exact test such as KKT conditions, where `max_change` is unused); `tested`
    False means no convergence test ran (e.g. tol = 0: a fixed number of steps), and then nothing claims
    convergence: `converged` is False and the summary says so.
    """

    iterations: int
    converged: bool
    max_change: float
    n_unconverged: int = 0
    tested: bool = True
    measure: str = "max relative change"

    def __post_init__(self) -> None:
        if not self.tested:
            self.converged, self.n_unconverged = False, 0

    def __str__(self) -> str:
        if not self.tested:
            return f"{self.iterations} iterations, no convergence test"
        state = "converged" if self.converged else f"{self.n_unconverged} sample(s) not converged"
        if not self.measure:  # an exact test (KKT conditions) without a scalar to report
            return f"{self.iterations} iterations, {state}"
        return f"{self.iterations} iterations, {state}, {self.measure} {self.max_change:.2e}"


class IterativeEncoder(Encoder):
    """Base of per-sample optimisers: hyperparameters only; `init` codes give a warm start (used by ITO).

    After each call `self.diagnostics` holds the batch's convergence (one summary, not a warning per sample),
    and `inference_flops` counts the iterations actually run.
    """

    kind: ClassVar[str] = "iterative"
    shape: ClassVar[Shape] = "none"

    def __init__(self) -> None:
        super().__init__()
        self.diagnostics: Diagnostics | None = None

    def forward(self, x: Tensor, dictionary: Dictionary, init: Tensor | None = None) -> Codes:
        self._check(x, dictionary)
        if init is not None and init.shape != (x.shape[0], dictionary.n_latents):
            raise SparseInferError(
                f"warm-start codes must have shape ({x.shape[0]}, {dictionary.n_latents}), got {tuple(init.shape)}"
            )
        with torch.no_grad():
            return self.solve(dictionary.centre(x).detach(), dictionary.atoms.detach(), init)

    def solve(self, x: Tensor, atoms: Tensor, init: Tensor | None) -> Tensor:  # pragma: no cover
        """Solve for codes of centred signals `x` against `atoms` (rows); set `self.diagnostics`."""
        raise NotImplementedError

    def iterations_run(self) -> int | None:
        """Iterations of the last call (None before any call)."""
        return None if self.diagnostics is None else self.diagnostics.iterations


def register(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: make an encoder available by its `name` to configs and the CLI."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"encoder name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registered encoder names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> type[Encoder]:
    """The encoder class registered as `name`; a clear error listing the known names otherwise."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SparseInferError(f"unknown encoder {name!r}; known encoders: {', '.join(available())}") from None


def _validate(name: str, model: type[EncoderConfig], values: dict[str, Any]) -> EncoderConfig:
    """`values` validated by `model`, or a one-line error naming the encoder, the key and what was expected."""
    _check_keys(name, model, values)
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "config"
        raise SparseInferError(
            f"encoder {name!r} hyperparameter {key!r}: {first['msg'].lower()}; got {first.get('input')!r}"
        ) from None


def _check_keys(name: str, model: type[EncoderConfig], values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        raise SparseInferError(
            f"encoder {name!r} has no hyperparameter(s) {unknown}; it accepts {sorted(model.model_fields)}"
        )


def configure(cls: type[Encoder], arguments: dict[str, Any]) -> EncoderConfig:
    """Validate a constructor's arguments (its `locals()`) through `cls.Config`; the result is what `cls` records.

    Constructor parameters that are not config fields (`self`, `dim`, `n_latents`) are ignored; a test checks that
    every registered constructor's other parameters are exactly its config's fields, with the same defaults.
    """
    fields = cls.Config.model_fields
    return _validate(cls.name, cls.Config, {k: v for k, v in arguments.items() if k in fields})


def hyperparameters(name: str) -> dict[str, Any]:
    """An encoder's hyperparameters (its config's fields, not dim/n_latents) with their defaults
    (`inspect.Parameter.empty` if required)."""
    fields = get(name).Config.model_fields
    empty = inspect.Parameter.empty
    return {k: empty if f.is_required() else f.get_default(call_default_factory=True) for k, f in fields.items()}


def validate_hyperparameters(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` checked against the encoder's config (unknown keys, wrong types: `SparseInferError`), as the full
    JSON config with defaults filled in; for configs read before any encoder is built (experiments, sweeps)."""
    return _validate(name, get(name).Config, params).model_dump(mode="json")


def describe(name: str) -> list[Hyperparameter]:
    """An encoder's declared hyperparameters: name, type, default and description (for the CLI's table)."""
    fields = get(name).Config.model_fields
    defaults = hyperparameters(name)
    return [Hyperparameter(k, _type_name(f.annotation), defaults[k], f.description or "") for k, f in fields.items()]


def _type_name(annotation: Any) -> str:
    """A short readable type: `int`, `float | None`, `list[int]`, `'relu' | 'topk'` (strictness markers dropped)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).removeprefix("typing.")


def needs_k(name: str) -> bool:
    """Whether the encoder keeps a fixed number `k` of latents (TopK, OMP): then a problem's K is a sensible `k`.
    Encoders whose `k` defaults to None (an optional limit, or a TopK output switched off) don't need one."""
    params = hyperparameters(name)
    return "k" in params and params["k"] is not None


def create(name: str, dim: int | None = None, n_latents: int | None = None, **hparams: Any) -> Encoder:
    """Build an encoder by name; `dim` and `n_latents` are passed only to encoders that take them.

    Hyperparameters are validated by the encoder's `Config` (unknown keys and wrong types: `SparseInferError`)."""
    cls = get(name)
    _check_keys(name, cls.Config, hparams)
    shape: dict[str, Any] = {}
    if cls.shape != "none":
        for key, value in zip(SHAPE_ARGS, (dim, n_latents), strict=True):
            if value is None and cls.shape == "required":
                raise SparseInferError(f"encoder {name!r} needs {key}")
            shape[key] = value
    try:
        return cls(**shape, **hparams)
    except TypeError as err:
        raise SparseInferError(f"encoder {name!r}: {err}") from None


def encoder_config(encoder: Encoder) -> dict[str, Any]:
    """The encoder's hyperparameters (its validated config, as given or defaulted) as JSON values: what a file
    stores so that `create(encoder.name, dim=..., n_latents=..., **config)` rebuilds the same encoder."""
    config = encoder.__dict__.get("config")
    if not isinstance(config, EncoderConfig):
        reason = encoder.__dict__.get("no_config_reason", "its constructor does not record one (see `configure`)")
        raise SparseInferError(f"encoder {encoder.name or type(encoder).__name__!r} carries no config: {reason}")
    return config.model_dump(mode="json")


def _load_builtin() -> None:
    import sparseinfer.encoders  # noqa: F401  (importing the package registers the built-in encoders)
