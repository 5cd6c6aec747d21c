"""Train any registered encoder with a learned dictionary (the `learn_both` regime) on language-model activations.

This module is configuration plus callbacks around the one training loop, `training.fit`, fed a stream of batches
(from an activation store or straight from the model). It adds what SAE users expect: input normalisation (a
fixed scale making the mean squared norm equal `dim`), the decoder bias initialised at the data mean, coordinate-wise
median or geometric median (`bias_init`), unit-norm atoms with the radial gradient component removed, encoder rows
tied to the atoms at start, dead latents handled by resampling or by the AuxK loss (`dead_latents`), L1 and
learning-rate warm-up with a final linear decay, bf16 autocast on CUDA, and checkpoints that resume exactly.
Data-parallel under `torchrun` (`train_from_store(..., distributed=True)`): each rank reads its own shards of the
store, the statistics sample is gathered from all ranks, gradients are averaged, dead-latent counts, resampling and
the logged metrics use every rank's batch, and rank 0 writes; a checkpoint resumes at any world size.

Losses (`loss`): "sae" follows the usual SAE convention, loss per token = ||x - x_hat||^2 + l1 * sum |s|, converted to
the regime's per-element means so that it transfers across dictionary sizes; "study" is the reference study's
MSE / batch variance + l1 * mean |s| (see `sparseinfer.lm.losses`). Presets (`sparseinfer.lm.presets`) hold the
study's settings.

A run folder holds `run.json` (config, scale, store, history), `encoder.safetensors`, `dictionary/`, and while
training `checkpoint.pt`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparseinfer.codes import Codes, as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create
from sparseinfer.errors import SparseInferError
from sparseinfer.lm.losses import AuxK, auxk_flops, batch_variance, normaliser_flops, study_loss
from sparseinfer.lm.median import centre_of
from sparseinfer.lm.presets import preset_settings
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.distributed import DataParallel
from sparseinfer.training.fit import FitHooks, FitState, fit, learnable_parameters
from sparseinfer.training.regimes import get_regime

RUN_FILE = "run.json"
ENCODER_FILE = "encoder.safetensors"
CHECKPOINT = "checkpoint.pt"


class LMTrainConfig(BaseModel):
    """Settings of one training run on activations (validated; unknown keys are errors).

    With `preset`, the preset's settings fill every field not given explicitly (`resolve`)."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = None
    encoder: str = "relu"
    hparams: dict[str, Any] = Field(default_factory=dict)
    expansion: int = Field(8, ge=1, description="n_latents = expansion x dim (the study uses 22)")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1024, ge=1, description="tokens per step")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    decay_fraction: float = Field(0.2, ge=0, le=1, description="linear LR decay to 0 over this last fraction")
    loss: Literal["sae", "study"] = "sae"
    l1: float | None = Field(
        None,
        ge=0,
        description="sparsity weight: 'sae' loss, lambda on sum |s| against the summed squared error per token; "
        "'study' loss, lambda on mean |s|. None: 0 for TopK-style encoders (a `k`), else 5 ('sae') or 1e-4 ('study')",
    )
    l1_warmup_steps: int = Field(100, ge=0)
    normalise: bool = True
    bias_init: Literal["mean", "median", "geometric_median", "zero"] = "mean"
    dead_latents: Literal["resample", "auxk", "none"] = "resample"
    resample_every: int = Field(250, ge=1, description="steps between dead-latent resampling")
    dead_tokens: int = Field(100_000, ge=1, description="a latent is dead after this many tokens without firing")
    auxk_k: int | None = Field(None, ge=1, description="dead latents per token in AuxK; None: dim // 2")
    auxk_coef: float = Field(1 / 32, gt=0)
    checkpoint_every: int = Field(200, ge=1)
    eval_every: int = Field(50, ge=1)
    seed: int = 0
    autocast: bool = True


def resolve(config: LMTrainConfig, dim: int) -> LMTrainConfig:
    """The config with its preset's settings for width `dim` under the explicitly given fields (idempotent)."""
    if config.preset is None:
        return config
    explicit = {k: getattr(config, k) for k in config.model_fields_set}
    return LMTrainConfig(**{**preset_settings(config.preset, dim), **explicit})


def schedule(config: LMTrainConfig, step: int) -> tuple[float, float]:
    """(LR multiplier, L1 multiplier) at `step` (1-based): linear warm-ups, linear LR decay over the last part."""
    warm = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
    decay_start = config.steps * (1 - config.decay_fraction)
    decay = 1.0 if step <= decay_start else max(0.0, (config.steps - step) / max(1.0, config.steps - decay_start))
    l1 = min(1.0, step / config.l1_warmup_steps) if config.l1_warmup_steps else 1.0
    return warm * decay, l1


def default_l1(encoder: Encoder, loss: str = "sae") -> float:
    """0 for encoders that fix their sparsity by a `k` (TopK, BatchTopK, MLP with k), else 5 ('sae') / 1e-4."""
    if getattr(encoder, "k", None):
        return 0.0
    return 5.0 if loss == "sae" else 1e-4


def _tied_rows(encoder: Encoder, n_latents: int, dim: int) -> list[tuple[str, torch.nn.Parameter]]:
    """Encoder parameters holding one row per latent: (n_latents, dim) matrices and (n_latents,) biases."""
    return [(n, p) for n, p in encoder.named_parameters() if p.shape in ((n_latents, dim), (n_latents,))]


def data_scale(sample: Tensor) -> float:
    """The factor making the mean squared norm of scaled activations equal their dimension (so lr/l1 transfer)."""
    return math.sqrt(sample.shape[1] / sample.float().pow(2).sum(1).mean().item())


def build(config: LMTrainConfig, dim: int, sample: Tensor | None = None) -> tuple[Encoder, Dictionary]:
    """Encoder and dictionary for `dim`: random unit atoms, bias at `bias_init` of the (scaled) `sample`, tied rows."""
    config = resolve(config, dim)
    n_latents = config.expansion * dim
    gen = torch.Generator().manual_seed(config.seed)
    atoms = torch.randn(n_latents, dim, generator=gen)
    bias = centre_of(sample.float(), config.bias_init) if sample is not None else torch.zeros(dim)
    dictionary = Dictionary(atoms, bias=bias)
    torch.manual_seed(config.seed)
    encoder = create(config.encoder, dim=dim, n_latents=n_latents, **config.hparams)
    if getattr(encoder, "k", None) and hasattr(encoder, "sparse_output") and "sparse_output" not in config.hparams:
        encoder.sparse_output = True  # k codes per token: decode them as an embedding bag, not a dense product
    with torch.no_grad():
        for _, p in _tied_rows(encoder, n_latents, dim):
            p.copy_(dictionary.atoms if p.ndim == 2 else torch.zeros_like(p))
    return encoder, dictionary


def project_radial(dictionary: Dictionary) -> None:
    """Remove each atom's gradient component along the atom, so steps move along the unit sphere."""
    g, a = dictionary.atoms.grad, dictionary.atoms
    if g is not None:
        g.sub_((g * a).sum(1, keepdim=True) * a)


@torch.no_grad()
def resample(
    encoder: Encoder, dictionary: Dictionary, optimiser: torch.optim.Optimizer | None, x: Tensor, dead: Tensor,
    generator: torch.Generator,
) -> int:  # fmt: skip
    """Point dead atoms at the worst-reconstructed inputs of `x` and reset their encoder rows and Adam moments."""
    idx = torch.nonzero(dead).flatten().to(dictionary.atoms.device)
    if idx.numel() == 0:
        return 0
    residual = x - dictionary.decode(encoder(x, dictionary)).float()
    err = residual.pow(2).sum(1).double().cpu()
    pick = torch.multinomial(err / err.sum(), idx.numel(), replacement=idx.numel() > x.shape[0], generator=generator)
    directions = torch.nn.functional.normalize(residual[pick.to(residual.device)], dim=1)
    dictionary.atoms[idx] = directions.to(dictionary.atoms.dtype)
    rows = _tied_rows(encoder, dictionary.n_latents, dictionary.dim)
    alive = ~dead.to(dictionary.atoms.device)
    for _, p in rows:
        if p.ndim == 2:
            norm = p[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
            p[idx] = directions.to(p.dtype) * 0.2 * norm
        else:
            p[idx] = 0.0
    if optimiser is not None:
        for p in [dictionary.atoms, *(p for _, p in rows)]:
            for moment in optimiser.state.get(p, {}).values():
                if isinstance(moment, Tensor) and moment.shape == p.shape:
                    moment[idx] = 0.0
    return int(idx.numel())


class _Callbacks:
    """The LM-specific parts of a run, as `fit` hooks: loss (SAE or study, + AuxK), dead-latent tracking and
    resampling, per-row training metrics, checkpoints. Under data parallelism the dead-latent counts, resampling
    and metrics use every rank's batch (so all ranks stay identical), and only rank 0 writes checkpoints."""

    def __init__(
        self, config: LMTrainConfig, encoder: Encoder, dictionary: Dictionary, optimiser: torch.optim.Optimizer,
        checkpoint: Path, scale: float, group: DataParallel,
    ) -> None:  # fmt: skip
        self.config, self.encoder, self.dictionary, self.optimiser = config, encoder, dictionary, optimiser
        self.checkpoint, self.scale, self.group = checkpoint, scale, group
        self.since_fired = torch.zeros(dictionary.n_latents, dtype=torch.long)
        self.auxk = None
        if config.dead_latents == "auxk":
            self.auxk = AuxK(encoder, config.auxk_k or max(1, dictionary.dim // 2), config.auxk_coef)
        self._batch = 0

    def dead(self) -> Tensor:
        """Latents that have not fired for `dead_tokens` tokens."""
        return self.since_fired >= self.config.dead_tokens

    def loss(self, x: Tensor, codes: Codes, x_hat: Tensor, l1: float, penalty: Tensor | None) -> Tensor:
        self._batch = x.shape[0]
        x_hat = x_hat.float()
        if self.config.loss == "study":
            total = study_loss(x, codes, x_hat, l1, penalty)
        else:
            total = get_regime("learn_both").loss(x, codes, x_hat, l1, penalty=penalty)
        if self.auxk is not None:
            aux = self.auxk.loss(x, x_hat, self.dictionary, self.dead())
            if aux is not None:
                norm = batch_variance(x.detach()) if self.config.loss == "study" else 1.0
                total = total + aux / norm
        return total

    def extra_flops(self) -> int:
        dim, n = self.dictionary.dim, self.dictionary.n_latents
        extra = normaliser_flops(self._batch, dim).total if self.config.loss == "study" else 0
        if self.auxk is not None and self.auxk.last_k:
            extra += auxk_flops(self._batch, dim, n, self.auxk.last_k).total + (1 if self.config.loss == "study" else 0)
        return extra

    def after_step(self, state: FitState, x: Tensor, codes: Codes, x_hat: Tensor | None) -> None:
        cfg, group = self.config, self.group
        dense = as_dense(codes).detach()
        fired = group.max((dense != 0).any(0).to(torch.int32)).cpu() > 0
        self.since_fired = torch.where(fired, 0, self.since_fired + x.shape[0] * group.world)
        resampled = 0
        if cfg.dead_latents == "resample" and state.step % cfg.resample_every == 0:
            if state.step < cfg.steps * (1 - cfg.decay_fraction):
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
                everyone = group.gather(x)  # the same inputs and generator on every rank: the same new atoms
                resampled = resample(self.encoder, self.dictionary, self.optimiser, everyone, self.dead(), gen)
                self.since_fired[self.dead()] = 0
        row = state.history[-1] if state.history else None
        if row is not None and row["step"] == state.step and x_hat is not None:
            xs, xh = group.gather(x), group.gather(x_hat.detach().float())
            l0 = group.gather((dense != 0).float().sum(1))
            mse = (xs - xh).pow(2).sum(1).mean()
            row.update(
                tokens=state.step * xs.shape[0],
                fvu=float(mse / (xs - xs.mean(0)).pow(2).sum(1).mean()),
                l0=float(l0.mean()),
                dead_fraction=float(self.dead().float().mean()),
                resampled=resampled,
                lr=cfg.lr * schedule(cfg, state.step)[0],
            )
        if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps and group.is_main:
            self.save(state)

    def save(self, state: FitState) -> None:
        """Write the checkpoint atomically: weights, optimiser, step, FLOPs and history (all totals over ranks)."""
        blob = {
            "encoder": self.encoder.state_dict(),
            "dictionary": self.dictionary.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "step": state.step,
            "flops": state.flops,
            "history": state.history,
            "since_fired": self.since_fired,
            "scale": self.scale,
        }
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(self.checkpoint)

    def load(self) -> FitState:
        try:  # the restricted unpickler: tensors, numbers, lists and dicts only, never arbitrary objects
            blob = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:
            raise SparseInferError(f"cannot resume from {self.checkpoint}: {str(err).splitlines()[0]}") from None
        self.encoder.load_state_dict(blob["encoder"])
        self.dictionary.load_state_dict(blob["dictionary"])
        self.optimiser.load_state_dict(blob["optimiser"])
        self.since_fired, self.scale = blob["since_fired"], float(blob["scale"])
        return FitState(blob["step"], blob["flops"], blob["history"])

    def close(self) -> None:
        if self.auxk is not None:
            self.auxk.close()


def _on_device(batches: Iterable[Tensor], device: torch.device, scale: float) -> Iterator[Tensor]:
    for xb in batches:
        yield xb.to(device, torch.float32) * scale


def train_on_activations(
    config: LMTrainConfig,
    batches: Iterable[Tensor],
    out: str | Path,
    dim: int,
    sample: Tensor,
    source: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    resume: bool = True,
    group: DataParallel | None = None,
) -> dict[str, Any]:
    """Train `config.encoder` and a dictionary on `batches` of raw activations with `training.fit`; write `out`.

    `sample` (raw activations, some thousand tokens) sets the scale and the bias init. Returns `run.json`'s content.
    With a `group` of several ranks, `batches` and `sample` are this rank's own (equal batch sizes on every rank);
    the sample is gathered so that all ranks compute the same statistics.
    """
    config = resolve(config, dim)
    group = group or DataParallel()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    regime = get_regime("learn_both")
    sample = group.gather(sample.float().to(device)).cpu()
    scale = data_scale(sample) if config.normalise else 1.0
    encoder, dictionary = build(config, dim, sample * scale)
    encoder.to(device)
    dictionary.to(device)
    group.broadcast([encoder, dictionary])
    params, _ = learnable_parameters(encoder, dictionary, regime)
    optimiser = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999))
    callbacks = _Callbacks(config, encoder, dictionary, optimiser, out / CHECKPOINT, scale, group)
    state = FitState()
    if resume and callbacks.checkpoint.exists():
        state = callbacks.load()
        scale = callbacks.scale
    l1_weight = default_l1(encoder, config.loss) if config.l1 is None else config.l1
    per_element = l1_weight * dictionary.n_latents / dim if config.loss == "sae" else l1_weight
    train_config = TrainConfig(
        steps=config.steps, lr=config.lr, batch_size=config.batch_size, l1=per_element, eval_every=config.eval_every
    )
    hooks = FitHooks(
        loss=callbacks.loss,
        extra_flops=callbacks.extra_flops,
        after_backward=project_radial,
        after_step=callbacks.after_step,
    )
    start, start_step = time.perf_counter(), state.step
    try:
        fit(
            encoder, dictionary, _on_device(batches, device, scale), regime, train_config,
            seed=config.seed, progress=progress and group.is_main, schedule=lambda step: schedule(config, step),
            hooks=group.hooks(params, hooks), state=state, optimiser=optimiser, autocast=config.autocast,
        )  # fmt: skip
    finally:
        callbacks.close()
    seconds = time.perf_counter() - start
    tokens = (state.step - start_step) * config.batch_size  # tokens per step over all ranks
    info = {
        "config": config.model_dump(),
        "dim": dim,
        "n_latents": dictionary.n_latents,
        "scale": scale,
        "l1": l1_weight,
        "source": source or {},
        "world_size": group.world,
        "train_flops": state.flops,
        "tokens_per_second": tokens / seconds if seconds > 0 else math.nan,
        "history": [r for r in state.history if r["step"] > 0],
    }
    if group.is_main:
        save_run(out, encoder, dictionary, info)
        callbacks.checkpoint.unlink(missing_ok=True)
    return info


def save_run(out: Path, encoder: Encoder, dictionary: Dictionary, info: dict[str, Any]) -> None:
    """Write the trained encoder, dictionary and `run.json`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, str(out / ENCODER_FILE))
    dictionary.save(out / "dictionary")
    (out / RUN_FILE).write_text(json.dumps(info, indent=1))


def load_run(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, Dictionary, dict[str, Any]]:
    """Read a run folder written by `train_on_activations`: (encoder, dictionary, run info)."""
    folder = Path(folder)
    if not (folder / RUN_FILE).exists():
        raise SparseInferError(f"{folder} is not a finished training run (no {RUN_FILE})")
    info = json.loads((folder / RUN_FILE).read_text())
    config = LMTrainConfig(**info["config"])
    dictionary = Dictionary.load(folder / "dictionary")
    encoder = create(config.encoder, dim=info["dim"], n_latents=info["n_latents"], **config.hparams)
    tensors = load_file(str(folder / ENCODER_FILE))
    if tensors:
        encoder.load_state_dict(tensors)
    return encoder.to(device).eval(), dictionary.to(device), info


def train_from_store(
    config: LMTrainConfig,
    store: str | Path,
    out: str | Path,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    shards_in_memory: int = 4,
    sample_tokens: int = 8192,
    distributed: bool = False,
) -> dict[str, Any]:
    """Train on an activation store, streaming shuffled batches across its shards (forever, epoch after epoch).

    `distributed`: this process is one rank of a `torchrun` launch (gloo on CPU, nccl on CUDA, one GPU per rank by
    LOCAL_RANK); the ranks split the store's shards and `config.batch_size` (see `store_stream`)."""
    from sparseinfer.data.store import ActivationStore

    st = ActivationStore.open(store)
    group = DataParallel()
    if distributed:
        if torch.device(device).type == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        group = DataParallel.join(device)
    sample, batches = store_stream(st, config, group.rank, group.world, shards_in_memory, sample_tokens)
    m = st.manifest
    source = {"store": str(store), "model": m.model, "hook": m.hook, "tokens": st.usable_tokens()}
    try:
        return train_on_activations(config, batches, out, m.dim, sample, source, device, progress, resume, group)
    finally:
        group.finish()


def store_stream(
    store: Any, config: LMTrainConfig, rank: int = 0, world: int = 1, shards_in_memory: int = 4,
    sample_tokens: int = 8192,
) -> tuple[Tensor, Iterator[Tensor]]:  # fmt: skip
    """Rank `rank`'s statistics sample and batch stream from an `ActivationStore`: shards rank, rank + world, ...

    Each rank reads only its own shards; its batches hold `batch_size / world` tokens and its sample
    `sample_tokens / world`, so that the ranks together see one batch (and one sample) of the configured size."""
    config = resolve(config, store.manifest.dim)
    n_shards = len(store.manifest.shards)
    if world > n_shards:
        raise SparseInferError(f"the store has {n_shards} shards for {world} ranks: each rank needs its own shard")
    if config.batch_size % world:
        raise SparseInferError(f"batch_size {config.batch_size} does not split evenly over {world} ranks")
    mine = list(range(rank, n_shards, world))
    sample = store.sample(max(1, sample_tokens // world), seed=config.seed + 1, shards=mine)
    batches = store.iter_batches(
        config.batch_size // world, seed=config.seed, shards_in_memory=shards_in_memory, shards=mine
    )
    return sample, batches


def train_on_the_fly(
    config: LMTrainConfig,
    harvest: Any,
    out: str | Path,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    sample_tokens: int = 8192,
) -> dict[str, Any]:
    """Train straight from the model (no store): `harvest` is a `HarvestConfig` with one hook point."""
    from sparseinfer.data.activations import on_the_fly
    from sparseinfer.lm.model import load_model

    lm = load_model(harvest.model, device)
    sample = next(on_the_fly(harvest, sample_tokens, model=lm), None)
    if sample is None:
        raise SparseInferError("the text gives fewer tokens than the statistics sample needs; raise n_contexts")
    batches = on_the_fly(harvest, config.batch_size, model=lm)
    source = {"on_the_fly": True, "model": harvest.model, "hook": ",".join(harvest.hooks)}
    return train_on_activations(config, batches, out, sample.shape[1], sample.cpu(), source, device, progress, resume)
