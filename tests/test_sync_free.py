"""The training step never waits for the device: no tensor is read back to Python between logging steps.

On the CPU, real training steps (a synthetic `fit` and the LM `train_from_store` path on a tiny store) run under a
patch that records every `Tensor.item`, `__bool__`, `__int__`, `__float__`, `tolist`, `cpu` and `numpy` call with the
step it happened in; only logging steps (and the periodic resampling and checkpoint steps, placed on them) may read
back. On a GPU, `torch.cuda.set_sync_debug_mode("error")` makes any synchronising call inside a step an error.
Two read-backs are of host tensors on any device, so they are not counted: the optimiser's step counter (a host
tensor by torch's design) and `Dictionary.decode`'s index bound check, which runs on CPU indices only.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _stores import clustered_store

from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders import create
from sparseinfer.errors import SparseInferError
from sparseinfer.training import TrainConfig, fit, get_regime
from sparseinfer.training.activations import LMTrainConfig, train_from_store
from sparseinfer.training.activations import callbacks as callbacks_module
from sparseinfer.training.activations import train as train_module
from sparseinfer.training.activations.lm_config import l0_controller_step
from sparseinfer.training.distributed import DataParallel

pytestmark = pytest.mark.usefixtures("one_thread")

READ_BACKS = ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy")
DIM, STEPS, EVERY = 16, 12, 6


class ReadBacks:
    """Records (step, method) for each read-back while a step is armed; `step` is set by the data or schedule."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step, self.armed, self.calls = 0, False, []
        for name in READ_BACKS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name: str, original):
        def patched(tensor, *args, **kwargs):
            if self.armed and not _host_only(sys._getframe(1)):
                self.calls.append((self.step, name))
            return original(tensor, *args, **kwargs)

        return patched

    def enter(self, step: int) -> None:
        """Step `step` starts: armed unless it is a logging step."""
        self.step, self.armed = step, not (step % EVERY == 0 or step == STEPS)


def _host_only(frame) -> bool:
    """Whether the read-back's caller is one of the two host-only places (see the module docstring)."""
    path = frame.f_code.co_filename.replace("\\", "/")
    return "torch/optim/" in path or (path.endswith("sparseinfer/dictionary.py") and frame.f_code.co_name == "decode")


def test_the_patch_catches_a_read_back(monkeypatch):
    spy = ReadBacks(monkeypatch)
    spy.enter(1)
    float(torch.ones(()))
    bool(torch.ones(()) > 0)
    torch.zeros(2).tolist()
    spy.enter(EVERY)
    torch.ones(()).item()  # a logging step: allowed
    assert spy.calls == [(1, "__float__"), (1, "__bool__"), (1, "tolist")]


@pytest.mark.parametrize("name, hparams", [("topk", {"k": 3}), ("relu", {})])
def test_synthetic_fit_steps_read_nothing_back(monkeypatch, name, hparams):
    data = make_synthetic(n_latents=24, dim=DIM, k=3, n_train=256, n_test=8, seed=0)
    encoder = create(name, dim=DIM, n_latents=24, **hparams)
    dictionary = Dictionary.random(24, DIM, seed=1, bias=True)
    spy = ReadBacks(monkeypatch)

    def schedule(step: int) -> tuple[float, float]:
        spy.enter(step)
        return 1.0, 1.0

    config = TrainConfig(steps=STEPS, lr=1e-2, batch_size=32, l1=1e-3, eval_every=EVERY)
    history = fit(encoder, dictionary, data.train_x, get_regime("learn_both"), config, schedule=schedule)
    assert [r["step"] for r in history] == [0, EVERY, STEPS] and all(math.isfinite(r["loss"]) for r in history[1:])
    assert spy.calls == []


def _tracked(spy: ReadBacks, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The store's batches, arming the spy for the step each one feeds (disarmed while the store reads)."""
    for step, xb in enumerate(batches, 1):
        spy.enter(step)
        yield xb
        spy.armed = False


@pytest.mark.parametrize("target_l0", [None, 3.0])
def test_lm_training_steps_read_nothing_back(monkeypatch, tmp_path, target_l0):
    store = clustered_store(tmp_path / "s", DIM, clusters=6, scale=3.0, noise=0.3, offset=2.0)
    spy = ReadBacks(monkeypatch)
    real_stream = train_module.store_stream

    def store_stream(*args, **kwargs):
        sample, batches = real_stream(*args, **kwargs)
        return sample, _tracked(spy, batches)

    monkeypatch.setattr(train_module, "store_stream", store_stream)
    encoder, hparams = ("topk", {"k": 3}) if target_l0 is None else ("relu", {})
    cfg = LMTrainConfig(
        encoder=encoder, hparams=hparams, expansion=2, steps=STEPS, batch_size=32, eval_every=EVERY,
        resample_every=EVERY, checkpoint_every=EVERY, warmup_steps=2, l1_warmup_steps=2, dead_tokens=64,
        target_l0=target_l0, autocast=True,
    )  # fmt: skip
    info = train_from_store(cfg, store, tmp_path / "run", progress=False, resume=False)
    assert [r["step"] for r in info["history"]] == [EVERY, STEPS]
    assert spy.calls == []
    if target_l0 is not None:
        assert info["l1_final"] != info["l1"]  # the controller did adapt, on the device


def test_the_device_controller_follows_the_reference_step(tmp_path):
    """`_control` (float64 device scalars) against the same trend filter run with `l0_controller_step` in Python."""
    cfg = LMTrainConfig(encoder="relu", steps=100, l1_warmup_steps=0, decay_fraction=0.0, target_l0=8.0)
    encoder = create("relu", dim=4, n_latents=8)
    dictionary = Dictionary.random(8, 4, seed=0)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    cb = callbacks_module.Callbacks(cfg, encoder, dictionary, opt, tmp_path / "c.pt", 1.0, DataParallel())
    log_scale, last, trend = 0.0, None, 0.0
    for step, l0 in enumerate([20.0, 14.0, 9.0, 2.0, 0.0, 8.0], 1):
        cb._control(step, torch.tensor(l0, dtype=torch.float64))
        log_l0 = math.log(max(l0, 1e-3))
        trend = trend if last is None else 0.9 * trend + 0.1 * (log_l0 - last)
        last = log_l0
        predicted = math.exp(log_l0 + callbacks_module.TREND_HORIZON * trend)
        log_scale = l0_controller_step(log_scale, predicted, cfg.target_l0, cfg.target_l0_rate)
        assert cb.l1_scale == pytest.approx(math.exp(log_scale), rel=1e-12)


def test_a_nan_in_a_streamed_batch_is_reported_at_the_next_logging_step():
    data = make_synthetic(n_latents=24, dim=DIM, k=3, n_train=64, n_test=8, seed=0)
    batches = [data.train_x[i : i + 16].clone() for i in range(0, 64, 16)]
    batches[1][0, 0] = float("nan")
    encoder, dictionary = create("topk", dim=DIM, n_latents=24, k=3), Dictionary.random(24, DIM, seed=1, bias=True)
    config = TrainConfig(steps=4, lr=1e-2, batch_size=16, l1=0.0, eval_every=3)
    with pytest.raises(SparseInferError, match="steps 1-3 contains NaN/Inf"):
        fit(encoder, dictionary, iter(batches), get_regime("learn_both"), config)
    with pytest.raises(SparseInferError, match="NaN/Inf"):  # a user-facing call is still checked at once
        encoder(batches[1], dictionary)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_steps_do_not_synchronise(monkeypatch, tmp_path: Path):
    """Synthetic TopK `fit` and the LM callbacks (batches already on the device) under the sync debug mode."""
    device = torch.device("cuda")
    data = make_synthetic(n_latents=64, dim=DIM, k=3, n_train=512, n_test=8, seed=0)
    x = data.train_x.to(device)

    def strict(step: int) -> None:
        logging = step % EVERY == 0 or step == STEPS
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("default" if logging else "error")

    def schedule(step: int) -> tuple[float, float]:
        strict(step)
        return 1.0, 1.0

    encoder = create("topk", dim=DIM, n_latents=64, k=3).to(device)
    dictionary = Dictionary.random(64, DIM, seed=1, bias=True).to(device)
    config = TrainConfig(steps=STEPS, lr=1e-2, batch_size=64, l1=0.0, eval_every=EVERY)
    try:
        fit(encoder, dictionary, x, get_regime("learn_both"), config, schedule=schedule, autocast=True)
        real = callbacks_module.Callbacks.schedule

        def lm_schedule(self, step):
            strict(step)
            return real(self, step)

        monkeypatch.setattr(callbacks_module.Callbacks, "schedule", lm_schedule)
        batches = (x[i % 8 * 64 : (i % 8 + 1) * 64] for i in range(STEPS))
        cfg = LMTrainConfig(
            encoder="relu", expansion=4, steps=STEPS, batch_size=64, eval_every=EVERY, resample_every=EVERY,
            checkpoint_every=EVERY, warmup_steps=2, l1_warmup_steps=2, target_l0=3.0, normalise=False,
        )  # fmt: skip
        train_module.train_on_activations(cfg, batches, tmp_path / "r", DIM, data.train_x[:256], device=device,
                                          progress=False, resume=False)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
