"""Declarative experiments: a run is a `RunConfig`; a sweep is a base config plus a grid, expanded into runs.

Both are plain YAML validated by pydantic, so unknown keys, wrong types and impossible values fail with a message
that names the key. A sweep's whole grid is checked before any run starts (`check_runnable`: also what only an
encoder's constructor or the memory guard would refuse), and the error names the grid entry.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sparseinfer.data.synthetic import SyntheticConfig
from sparseinfer.encoders.base import create, validate_hyperparameters
from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.runner import RunSpec
from sparseinfer.memory import check_synthetic_memory
from sparseinfer.training.config import TrainConfig

Setting = Literal["known_codes", "known_dictionary", "learn_both"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncoderSpec(_Strict):
    """A registered encoder by name plus its hyperparameters (checked against the encoder's typed config)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> EncoderSpec:
        validate_hyperparameters(self.name, self.params)  # a SparseInferError (a ValueError) names the key
        return self


class ITOConfig(_Strict):
    """Inference-time optimisation of the test codes against the (frozen) dictionary after training.

    `start="encoder"` warm-starts from the trained encoder's codes (the intended method); `start="cold"` starts every
    exp-parameterised code at u = `init_log` (what the original study actually ran).
    """

    steps: int = Field(20_000, ge=1)
    lr: float = Field(1e-3, gt=0)
    start: Literal["encoder", "cold"] = "encoder"
    init_log: float = -10.0
    log_every: int = Field(100, ge=1)


class RunConfig(_Strict):
    """One training run: what to train (`kind` + `encoder`), in which setting, on which data, for how long."""

    setting: Setting
    method: str = Field(min_length=1)
    kind: Literal["encoder", "sparse_coding", "sklearn_dictionary_learning"] = "encoder"
    encoder: EncoderSpec | None = None
    data: SyntheticConfig = Field(default_factory=SyntheticConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ito: ITOConfig | None = None
    sklearn_alpha: float = Field(0.05, gt=0)
    seed: int = 0
    save_weights: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.kind == "encoder" and self.encoder is None:
            raise ValueError("kind 'encoder' needs an `encoder: {name: ..., params: {...}}` entry")
        if self.kind != "encoder" and self.setting != "learn_both":
            raise ValueError(f"kind {self.kind!r} learns a dictionary: it runs in setting 'learn_both' only")
        if self.kind == "sparse_coding":
            if self.train.batch_size is not None:
                raise ValueError("sparse_coding keeps one code per training sample: use full batch (batch_size: null)")
            if self.ito is None:
                raise ValueError("sparse_coding infers test codes by ITO: give an `ito` section")
        if self.setting == "known_codes" and self.ito is not None:
            raise ValueError("ITO refines codes against a dictionary: not available in setting 'known_codes'")
        return self

    def spec(self) -> RunSpec:
        """This run as the runner's unit of work: its folder name and its plain config."""
        return RunSpec(self.run_id(), self.model_dump(mode="json"))

    def run_id(self) -> str:
        """A readable, unique folder name: setting, method, sizes, seed and a hash of the whole config."""
        digest = hashlib.sha1(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]
        d = self.data
        safe_method = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.method)
        return f"{self.setting}-{safe_method}-{d.n_latents}x{d.dim}x{d.k}-s{self.seed}-{digest}"


class SweepConfig(_Strict):
    """A grid over a base run: `methods` (partial run configs) x every `grid` axis (dotted keys -> values) x seeds."""

    base: dict[str, Any] = Field(default_factory=dict)
    methods: list[dict[str, Any]] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])

    def expand(self) -> list[RunConfig]:
        """Every combination, validated and checked runnable before any run starts (the first bad one is refused,
        named by its method entry, grid values and seed); duplicated runs (same resolved config) are kept once."""
        axes = list(self.grid.items())
        runs: dict[str, RunConfig] = {}
        for index, method in enumerate(self.methods):
            for values in itertools.product(*(v for _, v in axes)):
                for seed in self.seeds:
                    raw = deep_merge(self.base, method)
                    for (key, _), value in zip(axes, values, strict=True):
                        raw = deep_merge(raw, dotted(key, value))
                    raw["seed"] = seed
                    try:
                        run = parse_run(raw)
                        check_runnable(run)
                    except SparseInferError as err:
                        grid = "".join(f", {key}={value!r}" for (key, _), value in zip(axes, values, strict=True))
                        entry = f"methods[{index}] (method {raw.get('method')!r}{grid}, seed {seed})"
                        reason = str(err).removeprefix("invalid run config: ")
                        raise SparseInferError(f"invalid sweep entry {entry}: {reason}") from None
                    runs.setdefault(run.run_id(), run)
        return list(runs.values())


def dotted(key: str, value: Any) -> dict[str, Any]:
    """`dotted("data.n_latents", 32)` -> {"data": {"n_latents": 32}}."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `update` over `base`, merging nested dicts."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(err: ValidationError, what: str) -> SparseInferError:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    return SparseInferError(f"invalid {what}: {where}: {msg}{more}")


def parse_run(raw: dict[str, Any]) -> RunConfig:
    """Validate a run config dict; one-line error naming the offending key."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise _explain(err, "run config") from None


def check_runnable(run: RunConfig) -> None:
    """Refuse now what the run would only refuse once started: its encoder is built on the meta device (no memory;
    the constructor checks its hyperparameters against the sizes, e.g. k <= N) and its synthetic data is checked
    against the memory available."""
    d = run.data
    check_synthetic_memory(d.n_train + d.n_test, d.n_latents, d.dim, d.torch_dtype)
    if run.kind != "encoder" or run.encoder is None:
        return
    try:
        with torch.device("meta"):
            create(run.encoder.name, dim=d.dim, n_latents=d.n_latents, **run.encoder.params)
    except SparseInferError as err:
        raise SparseInferError(f"invalid run config: encoder: {err}") from None
    except Exception:  # a constructor that cannot run on the meta device: the run itself builds it for real
        pass


def parse_sweep(raw: dict[str, Any]) -> SweepConfig:
    """Validate a sweep config dict; one-line error naming the offending key."""
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise _explain(err, "sweep config") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with clear errors for missing files and bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise SparseInferError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise SparseInferError(f"{path} is not a YAML config (not UTF-8 text)") from None
    except yaml.YAMLError as err:
        raise SparseInferError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SparseInferError(f"{path} must hold a mapping of keys to values")
    return data


def load_runs(path: str | Path) -> list[RunConfig]:
    """A YAML file holding either one run or a sweep (`methods:` key) -> the runs it describes."""
    raw = load_yaml(path)
    if "methods" in raw:
        return parse_sweep(raw).expand()
    run = parse_run(raw)
    check_runnable(run)
    return [run]
