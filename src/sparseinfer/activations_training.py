"""Train any registered encoder with a learned dictionary (the `learn_both` regime) on language-model activations.

The data stream from an activation store (or straight from the model) does not fit `training.fit`, which takes
one in-memory tensor, so this is a streaming loop that reuses the regime's loss and after-step renormalisation and
the FLOP accounting, and adds what SAE users expect: input normalisation (a fixed scale making the mean squared
norm equal `dim`), decoder bias initialised at the data mean, unit-norm atoms with the radial gradient component
removed, encoder rows tied to the atoms at start, dead-latent resampling, L1 and learning-rate warm-up with a final
linear decay, bf16 autocast on CUDA, and checkpoints that resume exactly. `l1` follows the usual SAE convention,
loss per token = ||x - x_hat||^2 + l1 * sum |s|, converted to the regime's per-element means so that it transfers
across dictionary sizes.

A run folder holds `run.json` (config, scale, store, history), `encoder.safetensors`, `dictionary/`, and while
training `checkpoint.pt`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from sparseinfer.codes import SparseCodes, as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder, create
from sparseinfer.errors import SparseInferError
from sparseinfer.training.accounting import training_step_flops
from sparseinfer.training.regimes import get_regime

RUN_FILE = "run.json"
ENCODER_FILE = "encoder.safetensors"
CHECKPOINT = "checkpoint.pt"


class LMTrainConfig(BaseModel):
    """Settings of one training run on activations (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = "relu"
    hparams: dict[str, Any] = Field(default_factory=dict)
    expansion: int = Field(8, ge=1, description="n_latents = expansion x dim (the study uses 22)")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1024, ge=1, description="tokens per step")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    decay_fraction: float = Field(0.2, ge=0, le=1, description="linear LR decay to 0 over this last fraction")
    l1: float | None = Field(
        None,
        ge=0,
        description="lambda on sum |s| against the summed squared error per token; None: 0 for TopK-style"
        " encoders (a `k`), else 5",
    )
    l1_warmup_steps: int = Field(100, ge=0)
    normalise: bool = True
    resample_every: int = Field(250, ge=1, description="steps between dead-latent resampling")
    dead_tokens: int = Field(100_000, ge=1, description="a latent is dead after this many tokens without firing")
    checkpoint_every: int = Field(200, ge=1)
    eval_every: int = Field(50, ge=1)
    seed: int = 0
    autocast: bool = True


def _schedule(config: LMTrainConfig, step: int) -> tuple[float, float]:
    """(LR multiplier, L1 multiplier) at `step` (1-based)."""
    warm = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
    decay_start = config.steps * (1 - config.decay_fraction)
    decay = 1.0 if step <= decay_start else max(0.0, (config.steps - step) / max(1.0, config.steps - decay_start))
    l1 = min(1.0, step / config.l1_warmup_steps) if config.l1_warmup_steps else 1.0
    return warm * decay, l1


def default_l1(encoder: Encoder) -> float:
    """0 for encoders that fix their sparsity by a `k` (TopK, BatchTopK, MLP with k), else the usual SAE value 5."""
    return 0.0 if getattr(encoder, "k", None) else 5.0


def _tied_rows(encoder: Encoder, n_latents: int, dim: int) -> list[tuple[str, torch.nn.Parameter]]:
    """Encoder parameters holding one row per latent: (n_latents, dim) matrices and (n_latents,) biases."""
    return [(n, p) for n, p in encoder.named_parameters() if p.shape in ((n_latents, dim), (n_latents,))]


class _State:
    """Everything a checkpoint restores."""

    def __init__(self, encoder: Encoder, dictionary: Dictionary, optimiser: torch.optim.Optimizer | None) -> None:
        self.encoder, self.dictionary, self.optimiser = encoder, dictionary, optimiser
        self.step, self.flops, self.tokens = 0, 0, 0
        self.since_fired = torch.zeros(dictionary.n_latents, dtype=torch.long)
        self.history: list[dict[str, float]] = []

    def save(self, path: Path, scale: float) -> None:
        blob = {
            "encoder": self.encoder.state_dict(),
            "dictionary": self.dictionary.state_dict(),
            "optimiser": self.optimiser.state_dict() if self.optimiser else None,
            "step": self.step,
            "flops": self.flops,
            "tokens": self.tokens,
            "since_fired": self.since_fired,
            "history": self.history,
            "scale": scale,
        }
        torch.save(blob, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def load(self, path: Path) -> float:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        self.encoder.load_state_dict(blob["encoder"])
        self.dictionary.load_state_dict(blob["dictionary"])
        if self.optimiser and blob["optimiser"]:
            self.optimiser.load_state_dict(blob["optimiser"])
        self.step, self.flops, self.tokens = blob["step"], blob["flops"], blob["tokens"]
        self.since_fired, self.history = blob["since_fired"], blob["history"]
        return float(blob["scale"])


def data_scale(sample: Tensor) -> float:
    """The factor making the mean squared norm of scaled activations equal their dimension (so lr/l1 transfer)."""
    return math.sqrt(sample.shape[1] / sample.float().pow(2).sum(1).mean().item())


def build(config: LMTrainConfig, dim: int, sample: Tensor | None = None) -> tuple[Encoder, Dictionary]:
    """Encoder and dictionary for `dim`: random unit atoms, bias at the mean of the (scaled) `sample`, tied rows."""
    n_latents = config.expansion * dim
    gen = torch.Generator().manual_seed(config.seed)
    atoms = torch.randn(n_latents, dim, generator=gen)
    bias = sample.mean(0) if sample is not None else torch.zeros(dim)
    dictionary = Dictionary(atoms, bias=bias)
    torch.manual_seed(config.seed)
    encoder = create(config.encoder, dim=dim, n_latents=n_latents, **config.hparams)
    with torch.no_grad():
        for _, p in _tied_rows(encoder, n_latents, dim):
            p.copy_(dictionary.atoms if p.ndim == 2 else torch.zeros_like(p))
    return encoder, dictionary


def _project_radial(dictionary: Dictionary) -> None:
    """Remove each atom's gradient component along the atom, so steps move along the unit sphere."""
    g, a = dictionary.atoms.grad, dictionary.atoms
    if g is not None:
        g.sub_((g * a).sum(1, keepdim=True) * a)


@torch.no_grad()
def _resample(state: _State, x: Tensor, dead: Tensor) -> int:
    """Point dead atoms at the worst-reconstructed inputs of `x` and reset their encoder rows and Adam moments."""
    idx = torch.nonzero(dead).flatten()
    if idx.numel() == 0:
        return 0
    enc, dic = state.encoder, state.dictionary
    residual = x - dic.decode(enc(x, dic))
    err = residual.pow(2).sum(1)
    pick = torch.multinomial(err / err.sum(), idx.numel(), replacement=idx.numel() > x.shape[0])
    directions = torch.nn.functional.normalize(residual[pick], dim=1)
    dic.atoms[idx] = directions.to(dic.atoms.dtype)
    rows = _tied_rows(enc, dic.n_latents, dic.dim)
    alive = ~dead.to(dic.atoms.device)
    for _, p in rows:
        if p.ndim == 2:
            norm = p[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
            p[idx] = directions.to(p.dtype) * 0.2 * norm
        else:
            p[idx] = 0.0
    if state.optimiser is not None:
        for p in [dic.atoms, *(p for _, p in rows)]:
            for moment in state.optimiser.state.get(p, {}).values():
                if isinstance(moment, Tensor) and moment.shape == p.shape:
                    moment[idx] = 0.0
    state.since_fired[idx.cpu()] = 0
    return int(idx.numel())


def train_on_activations(
    config: LMTrainConfig,
    batches: Iterator[Tensor],
    out: str | Path,
    dim: int,
    sample: Tensor,
    source: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    resume: bool = True,
) -> dict[str, Any]:
    """Train `config.encoder` and a dictionary on `batches` of raw activations; write the run folder `out`.

    `sample` (raw activations, some thousand tokens) sets the scale and the bias init. Returns `run.json`'s content.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    regime = get_regime("learn_both")
    scale = data_scale(sample) if config.normalise else 1.0
    encoder, dictionary = build(config, dim, sample.float() * scale)
    encoder.to(device)
    dictionary.to(device)
    params = [*(encoder.parameters() if encoder.trainable else []), *dictionary.parameters()]
    optimiser = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999))
    state = _State(encoder, dictionary, optimiser)
    ckpt = out / CHECKPOINT
    if resume and ckpt.exists():
        scale = state.load(ckpt)
    for _ in range(state.step):  # the same data order as an uninterrupted run
        next(batches, None)
    n_params = sum(p.numel() for p in params)
    l1_weight = default_l1(encoder) if config.l1 is None else config.l1
    use_autocast = config.autocast and device.type == "cuda"
    start, start_tokens = time.perf_counter(), state.tokens
    bar = tqdm(total=config.steps, initial=state.step, disable=not progress, desc=f"train {config.encoder}")
    encoder.train()
    while state.step < config.steps:
        xb = next(batches, None)
        if xb is None:
            raise SparseInferError(f"the activation stream ran out at step {state.step}; use more data or epochs")
        x = xb.to(device, torch.float32) * scale
        state.step += 1
        lr_mult, l1_mult = _schedule(config, state.step)
        for group in optimiser.param_groups:
            group["lr"] = config.lr * lr_mult
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            codes = encoder(x, dictionary)
            penalty = encoder.sparsity_penalty(codes) if encoder.has_own_penalty() else None
            x_hat = dictionary.decode(codes)
            l1 = l1_weight * l1_mult * dictionary.n_latents / dim  # the regime's loss uses means over elements
            loss = regime.loss(x, codes, x_hat.float(), l1, penalty=penalty)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        _project_radial(dictionary)
        optimiser.step()
        regime.after_step(dictionary)
        fired = (as_dense(codes).detach() != 0).any(0).cpu()
        state.since_fired = torch.where(fired, 0, state.since_fired + x.shape[0])
        state.tokens += x.shape[0]
        sparse_k = codes.values.shape[1] if isinstance(codes, SparseCodes) else None
        state.flops += training_step_flops(encoder, dictionary, x.shape[0], regime, n_params, True, sparse_k)
        if not torch.isfinite(loss):
            raise SparseInferError(
                f"training diverged at step {state.step} (loss {float(loss.detach())}); lower the lr"
            )
        resampled = 0
        if state.step % config.resample_every == 0 and state.step < config.steps * (1 - config.decay_fraction):
            resampled = _resample(state, x, state.since_fired >= config.dead_tokens)
        if state.step % config.eval_every == 0 or state.step == config.steps:
            dense = as_dense(codes).detach().float()
            mse = (x - x_hat.detach().float()).pow(2).sum(1).mean()
            fvu = float(mse / (x - x.mean(0)).pow(2).sum(1).mean())
            row = {
                "step": state.step,
                "tokens": state.tokens,
                "train_flops": state.flops,
                "loss": float(loss.detach()),
                "fvu": fvu,
                "l0": float((dense != 0).float().sum(1).mean()),
                "dead_fraction": float((state.since_fired >= config.dead_tokens).float().mean()),
                "resampled": resampled,
                "lr": config.lr * lr_mult,
            }
            state.history.append(row)
            bar.set_postfix(fvu=f"{fvu:.3f}", l0=f"{row['l0']:.1f}")
        if state.step % config.checkpoint_every == 0 and state.step < config.steps:
            state.save(ckpt, scale)
        bar.update(1)
    bar.close()
    encoder.eval()
    seconds = time.perf_counter() - start
    info = {
        "config": config.model_dump(),
        "dim": dim,
        "n_latents": dictionary.n_latents,
        "scale": scale,
        "l1": l1_weight,
        "source": source or {},
        "tokens_per_second": (state.tokens - start_tokens) / seconds if seconds > 0 else float("nan"),
        "history": state.history,
    }
    save_run(out, encoder, dictionary, info)
    ckpt.unlink(missing_ok=True)
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
) -> dict[str, Any]:
    """Train on an activation store, streaming shuffled batches across its shards (forever, epoch after epoch)."""
    from sparseinfer.data.store import ActivationStore

    st = ActivationStore.open(store)
    sample = st.sample(sample_tokens, seed=config.seed + 1)
    batches = st.iter_batches(config.batch_size, seed=config.seed, shards_in_memory=shards_in_memory)
    m = st.manifest
    source = {"store": str(store), "model": m.model, "hook": m.hook, "tokens": st.usable_tokens()}
    return train_on_activations(config, batches, out, m.dim, sample, source, device, progress, resume)


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
