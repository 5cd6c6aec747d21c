"""`ito`: inference-time optimisation, a hybrid of any encoder (the warm start) and an iterative refiner.

Forward: codes0 = encoder(x, D) (densified), then refiner(x, D, init=codes0). Two start modes, labelled:
- "encoder": the refiner starts from the encoder's codes (the intended method);
- "cold": the refiner starts cold (for the default `gradient` refiner, u = init_log = -10 everywhere), ignoring
  the encoder, which reproduces the original study's defect. The encoder is then neither run nor counted.
FLOPs: the encoder's plus the refiner's, for the iterations the refiner actually ran on the last call.

Config: `init` and `refiner` are registered names and `init_kwargs` / `refiner_kwargs` their full configs (what
`encoder_config` of each inner encoder gives), also when they were passed as instances: `create("ito", **config)`
rebuilds the same structure, and the trained weights of an instance `init` are in the ITO's state dict
(`encoder.*`), so a file stores them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from sparseinfer.codes import as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import (
    Diagnostics,
    Encoder,
    EncoderConfig,
    IterativeEncoder,
    Shape,
    available,
    configure,
    create,
    encoder_config,
    get,
    register,
)
from sparseinfer.errors import SparseInferError

START_MODES: dict[str, str] = {
    "encoder": "warm start from the encoder's codes (intended method)",
    "cold": "cold start ignoring the encoder (the original study's defect, u = -10)",
}


def _name_of(value: Any) -> Any:
    """An Encoder instance stands for its registered name in the config."""
    return value.name if isinstance(value, Encoder) else value


def refiner_names() -> list[str]:
    """Registered encoders that can refine a warm start: the iterative ones."""
    return [name for name in available() if issubclass(get(name), IterativeEncoder)]


@register
class ITOEncoder(Encoder):
    """An `encoder` (any registered encoder, by name or instance) refined by an iterative `refiner`."""

    name = "ito"
    kind: ClassVar[str] = "hybrid"
    summary = "inference-time optimisation: any encoder's codes refined by an iterative solver (default Adam)"
    shape: ClassVar[Shape] = "optional"

    class Config(EncoderConfig):
        init: str = Field("relu", description="the warm-start encoder's registered name (or an Encoder instance)")
        refiner: str = Field("gradient", description="the iterative refiner's registered name (or an instance)")
        init_kwargs: dict[str, Any] | None = Field(None, description="the init encoder's hyperparameters")
        refiner_kwargs: dict[str, Any] | None = Field(None, description="the refiner's hyperparameters")
        start: Literal["encoder", "cold"] = Field(
            "encoder", description="; ".join(f"{k!r}: {v}" for k, v in START_MODES.items())
        )

    def __init__(
        self,
        dim: int | None = None,
        n_latents: int | None = None,
        init: str | Encoder = "relu",
        refiner: str | IterativeEncoder = "gradient",
        init_kwargs: dict[str, Any] | None = None,
        refiner_kwargs: dict[str, Any] | None = None,
        start: str = "encoder",
    ) -> None:
        named = {**locals(), "init": _name_of(init), "refiner": _name_of(refiner)}
        configure(ITOEncoder, named)  # types of the arguments (instances stand for their names)
        super().__init__()
        self.start = start
        self.encoder = self._build_encoder(init, dim, n_latents, init_kwargs)
        self.refiner = self._build_refiner(refiner, dim, n_latents, refiner_kwargs)
        self._record()

    def _record(self) -> None:
        """Keep as config the inner encoders' names and full configs (when they carry one, as registered ones do)."""
        try:
            inner = {"init_kwargs": encoder_config(self.encoder), "refiner_kwargs": encoder_config(self.refiner)}
        except SparseInferError as err:  # a custom inner encoder without a config: `encoder_config(self)` says so
            self.no_config_reason = f"its inner {err}"
            return
        self.config = self.Config(init=self.encoder.name, refiner=self.refiner.name, start=self.start, **inner)

    @classmethod
    def wrap(cls, encoder: Encoder, refiner: str | IterativeEncoder = "gradient", start: str = "encoder") -> ITOEncoder:
        """ITO around an existing (e.g. trained) encoder instance and a refiner name or instance."""
        return cls(init=encoder, refiner=refiner, start=start)

    @staticmethod
    def _build_encoder(
        init: str | Encoder, dim: int | None, n_latents: int | None, kwargs: dict[str, Any] | None
    ) -> Encoder:
        if isinstance(init, Encoder):
            if kwargs:
                raise SparseInferError("init_kwargs apply only when init is given by name, not as an encoder")
            return init
        if not isinstance(init, str):
            raise SparseInferError(f"init must be an encoder name or an Encoder, got {type(init).__name__}")
        return create(init, dim=dim, n_latents=n_latents, **(kwargs or {}))

    @staticmethod
    def _build_refiner(
        refiner: str | IterativeEncoder, dim: int | None, n_latents: int | None, kwargs: dict[str, Any] | None
    ) -> IterativeEncoder:
        if isinstance(refiner, IterativeEncoder):
            if kwargs:
                raise SparseInferError("refiner_kwargs apply only when refiner is given by name, not as an encoder")
            return refiner
        known = refiner_names()
        if not isinstance(refiner, str) or refiner not in known:
            raise SparseInferError(f"unknown refiner {refiner!r}; known refiners: {', '.join(known)}")
        built = create(refiner, dim=dim, n_latents=n_latents, **(kwargs or {}))
        assert isinstance(built, IterativeEncoder)
        return built

    @property
    def diagnostics(self) -> Diagnostics | None:
        """The refiner's convergence on the last call."""
        return self.refiner.diagnostics

    def forward(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        if self.start == "cold":
            return self.refiner(x, dictionary)
        with torch.no_grad():
            start = as_dense(self.encoder(x, dictionary)).detach()
        return self.refiner(x, dictionary, init=start)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        refine = self.refiner.inference_flops(batch, dim, n_latents)
        if self.start == "cold":
            return refine
        return self.encoder.inference_flops(batch, dim, n_latents) + refine

    def training_flops(self, batch: int, dim: int, n_latents: int, input_grad: bool = False) -> int:
        """Training trains the encoder only (the refiner has no parameters)."""
        return self.encoder.training_flops(batch, dim, n_latents, input_grad=input_grad)

    def extra_repr(self) -> str:
        return f"start={self.start!r}"
