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
MSE / batch variance + l1 * mean |s| (see `losses`). Presets (`presets`) hold the study's settings.

A run folder holds the trained SAE in the one format of `io.save_sae` (cfg.json with the scale and provenance,
encoder.safetensors, dictionary.safetensors: `io.load_sae(run)` reads it), `run.json` (config, scale, store,
history), and while training `checkpoint.safetensors` (`training.checkpoint`: checksummed, no pickle). A resume
must match the checkpoint's config (any other encoder, size, steps or learning rate is refused, naming the fields);
a folder holding a finished run is refused unless `force=True` (which trains afresh and replaces it).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseinfer import atomic
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.io import RUN_FILE, load_sae, save_sae
from sparseinfer.io.native import run_provenance
from sparseinfer.locks import locks_folder
from sparseinfer.memory import check_training_memory
from sparseinfer.training import checkpoint as ckpt
from sparseinfer.training.activations.callbacks import Callbacks, project_radial
from sparseinfer.training.activations.initialise import build, data_scale
from sparseinfer.training.activations.lm_config import LMTrainConfig, default_l1, resolve
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.distributed import DataParallel
from sparseinfer.training.fit import FitHooks, FitState, fit, learnable_parameters
from sparseinfer.training.regimes import get_regime

CHECKPOINT = ckpt.CHECKPOINT


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
    force: bool = False,
) -> dict[str, Any]:
    """Train `config.encoder` and a dictionary on `batches` of raw activations with `training.fit`; write `out`.

    `sample` (raw activations, some thousand tokens) sets the scale and the bias init. Returns `run.json`'s content.
    With a `group` of several ranks, `batches` and `sample` are this rank's own (equal batch sizes on every rank);
    the sample is gathered so that all ranks compute the same statistics. `force`: train afresh into a folder that
    holds a finished run (else refused); `resume`: continue from the folder's checkpoint (checked against `config`).
    """
    check_out(out, force)
    config = resolve(config, dim)
    check_training_memory(config.batch_size, dim, config.expansion * dim, device)
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
    callbacks = Callbacks(config, encoder, dictionary, optimiser, out / CHECKPOINT, scale, group)
    state, schedule = FitState(), callbacks.schedule
    resume = resume and not force
    if resume:
        ckpt.refuse_legacy(out)
    if resume and callbacks.checkpoint.exists():
        state, checkpoint = callbacks.load()
        scale = callbacks.scale
        schedule = _restoring_rng(callbacks.schedule, checkpoint)
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
            seed=config.seed, progress=progress and group.is_main, schedule=schedule,
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
        "l1_final": l1_weight * callbacks.l1_scale,  # after the target-L0 controller (= l1 without target_l0)
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


def check_out(out: str | Path, force: bool = False) -> None:
    """Refuse to train into a folder that holds a finished run (its `run.json`) unless `force`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SparseInferError(f"run folder {out} exists and is not a folder")
    if (out / RUN_FILE).exists() and not force:
        raise SparseInferError(
            f"{out} holds a finished run ({RUN_FILE}); pass --force to train it again from scratch (replacing it), "
            "or choose another folder"
        )


def _restoring_rng(schedule: Callable[[int], Any], checkpoint: ckpt.Checkpoint) -> Callable[[int], Any]:
    """`schedule`, restoring the checkpoint's RNG states at its first call: `fit` seeds the RNGs when it starts and
    calls the schedule at the top of each step, so the resumed steps draw what the uninterrupted run drew."""
    pending = [checkpoint]

    def wrapped(step: int) -> Any:
        if pending:
            ckpt.restore_rng(pending.pop())
        return schedule(step)

    return wrapped


def save_run(out: Path, encoder: Encoder, dictionary: Dictionary, info: dict[str, Any]) -> None:
    """Write the trained pair in the one SAE format (`io.save_sae`, with the run's scale and provenance) at the top
    of the run folder, plus `run.json` (config, scale, source, history)."""
    provenance = run_provenance(info)
    store = info.get("source", {}).get("store")
    manifest = Path(store) / "manifest.json" if store else None
    if manifest is not None and manifest.exists():  # what SAEBench's loader reads: context size and BOS
        m = json.loads(manifest.read_text())
        provenance |= {"context_size": m.get("context_length"), "prepend_bos": m.get("bos")}
    provenance["dataset_path"] = provenance.get("dataset_path", "on the fly")
    save_sae(encoder, dictionary, out, input_scale=info["scale"], provenance=provenance)
    atomic.write_text(out / RUN_FILE, json.dumps(info, indent=1))  # run.json marks the run finished: never half written


def load_run(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, Dictionary, dict[str, Any]]:
    """Read a finished `sparseinfer train` run (any layout) through `io.load_sae`: (encoder, dictionary, run info)."""
    folder = Path(folder)
    if not (folder / RUN_FILE).exists():
        raise SparseInferError(f"{folder} is not a finished training run (no {RUN_FILE})")
    sae = load_sae(folder).to(device)
    return sae.encoder, sae.dictionary, json.loads((folder / RUN_FILE).read_text())


@locks_folder("out", "train")
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
    force: bool = False,
) -> dict[str, Any]:
    """Train on an activation store, streaming shuffled batches across its shards (forever, epoch after epoch).

    `distributed`: this process is one rank of a `torchrun` launch (gloo on CPU, nccl on CUDA, one GPU per rank by
    LOCAL_RANK); the ranks split the store's shards and `config.batch_size` (see `store_stream`). `force`: train
    afresh into a folder holding a finished run."""
    from sparseinfer.data.store import ActivationStore

    check_out(out, force)
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
        return train_on_activations(
            config, batches, out, m.dim, sample, source, device, progress, resume, group, force=force
        )
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
    available = store.usable_tokens(shards=mine)
    if config.batch_size // world > available:  # an endless stream that could never fill one batch
        raise SparseInferError(
            f"batch size {config.batch_size} exceeds the {available} usable tokens of store {store.folder}"
            f"{' for this rank' if world > 1 else ''}; give a smaller --batch-size or harvest more contexts"
        )
    sample = store.sample(max(1, sample_tokens // world), seed=config.seed + 1, shards=mine)
    batches = store.iter_batches(
        config.batch_size // world, seed=config.seed, shards_in_memory=shards_in_memory, shards=mine
    )
    return sample, batches


@locks_folder("out", "train")
def train_on_the_fly(
    config: LMTrainConfig,
    harvest: Any,
    out: str | Path,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    sample_tokens: int = 8192,
    force: bool = False,
) -> dict[str, Any]:
    """Train straight from the model (no store): `harvest` is a `HarvestConfig` with one hook point."""
    check_out(out, force)
    from sparseinfer.data.harvest import on_the_fly
    from sparseinfer.lm.model import load_model

    lm = load_model(harvest.model, device)
    sample = next(on_the_fly(harvest, sample_tokens, model=lm), None)
    if sample is None:
        raise SparseInferError("the text gives fewer tokens than the statistics sample needs; raise n_contexts")
    batches = on_the_fly(harvest, config.batch_size, model=lm)
    source = {"on_the_fly": True, "model": harvest.model, "hook": ",".join(harvest.hooks)}
    return train_on_activations(
        config, batches, out, sample.shape[1], sample.cpu(), source, device, progress, resume, force=force
    )
