"""The `Encoder` interface, the iterative-solver base, and the registry that maps names to encoder classes.

An encoder infers codes for signals given a dictionary: `encoder(x, dictionary) -> codes`.
Amortised encoders own parameters and read only the dictionary's shape and bias; iterative encoders own
only hyperparameters and solve against the dictionary. Adding an encoder is one file plus `@register`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sparseinfer.codes import Codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_signals

_REGISTRY: dict[str, type[Encoder]] = {}


class Encoder(nn.Module):
    """Maps signals (batch, dim) to codes (batch, n_latents) or `SparseCodes`, given a dictionary."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "amortised"  # "amortised" | "iterative" | "hybrid" | "learned-iterative"
    summary: ClassVar[str] = ""

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
    """Convergence of one batched solve: iterations run, whether every sample met the tolerance, last change."""

    iterations: int
    converged: bool
    max_change: float
    n_unconverged: int = 0

    def __str__(self) -> str:
        state = "converged" if self.converged else f"{self.n_unconverged} sample(s) not converged"
        return f"{self.iterations} iterations, {state}, max relative change {self.max_change:.2e}"


class IterativeEncoder(Encoder):
    """Base of per-sample optimisers: hyperparameters only; `init` codes give a warm start (used by ITO).

    After each call `self.diagnostics` holds the batch's convergence (one summary, not a warning per sample),
    and `inference_flops` counts the iterations actually run.
    """

    kind: ClassVar[str] = "iterative"

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


def hyperparameters(name: str) -> dict[str, Any]:
    """Constructor arguments of an encoder with their defaults (`inspect.Parameter.empty` if required)."""
    params = inspect.signature(get(name).__init__).parameters
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: p.default for k, p in params.items() if k != "self" and p.kind in plain}


def needs_k(name: str) -> bool:
    """Whether the encoder keeps a fixed number `k` of latents (TopK, OMP): then a problem's K is a sensible `k`.
    Encoders whose `k` defaults to None (an optional limit, or a TopK output switched off) don't need one."""
    params = hyperparameters(name)
    return "k" in params and params["k"] is not None


def create(name: str, dim: int | None = None, n_latents: int | None = None, **hparams: Any) -> Encoder:
    """Build an encoder by name; `dim` and `n_latents` are passed only to encoders that take them."""
    cls = get(name)
    accepted = hyperparameters(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise SparseInferError(f"encoder {name!r} has no hyperparameter(s) {unknown}; it accepts {sorted(accepted)}")
    shape = {"dim": dim, "n_latents": n_latents}
    for key, value in shape.items():
        if key in accepted:
            if value is None:
                raise SparseInferError(f"encoder {name!r} needs {key}")
            hparams[key] = value
    try:
        return cls(**hparams)
    except TypeError as err:
        raise SparseInferError(f"encoder {name!r}: {err}") from None


def encoder_config(encoder: Encoder) -> dict[str, Any]:
    """The encoder's hyperparameters (constructor arguments but dim and n_latents) as JSON values: what a file
    stores so that `create(encoder.name, dim=..., n_latents=..., **config)` rebuilds the same encoder."""
    out: dict[str, Any] = {}
    for name in hyperparameters(encoder.name):
        if name in ("dim", "n_latents"):
            continue
        for attr in (name, f"has_{name}"):
            value = getattr(encoder, attr, None)
            if value is not None and not isinstance(value, torch.Tensor | torch.nn.Module):
                out[name] = value
                break
    return out


def _load_builtin() -> None:
    import sparseinfer.encoders  # noqa: F401  (importing the package registers the built-in encoders)
