"""Checkpoints: safetensors + JSON, checksummed (every single-bit flip detected), finite values only, schema and
config checked on load with one-line errors; a resume matches an uninterrupted run; finished runs are refused."""

from __future__ import annotations

import random

import pytest
import torch

from sparseinfer.atomic import write_bytes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import create
from sparseinfer.errors import SparseInferError
from sparseinfer.training import checkpoint as ckpt
from sparseinfer.training.activations import LMTrainConfig, train_on_activations

CONFIG = {"encoder": "relu", "steps": 10, "lr": 1e-3, "dim": 4}


def _pair():
    torch.manual_seed(0)
    encoder = create("relu", dim=4, n_latents=8)
    dictionary = Dictionary(torch.randn(8, 4))
    optimiser = torch.optim.Adam([*encoder.parameters(), dictionary.atoms], lr=1e-3)
    loss = encoder(torch.randn(5, 4), dictionary).sum() + dictionary.atoms.sum()
    loss.backward()
    optimiser.step()
    return encoder, dictionary, optimiser


def _checkpoint(step: int = 4) -> ckpt.Checkpoint:
    encoder, dictionary, optimiser = _pair()
    opt_tensors, opt_json = ckpt.optimiser_tensors(optimiser)
    tensors = {**ckpt.module_tensors("encoder", encoder), **ckpt.module_tensors("dictionary", dictionary)}
    tensors |= opt_tensors
    history = [{"step": 0, "loss": float("nan")}, {"step": 4, "loss": 0.5}]
    return ckpt.Checkpoint(step, 123, history, tensors, opt_json, {"scale": 2.0}, dict(CONFIG))


def test_round_trip_restores_every_tensor(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / ckpt.CHECKPOINT, _checkpoint())
    back = ckpt.read_checkpoint(path, CONFIG, steps=10)
    assert (back.step, back.flops, back.scalars) == (4, 123, {"scale": 2.0})
    assert back.history[1] == {"step": 4, "loss": 0.5} and back.history[0]["loss"] != back.history[0]["loss"]
    original = _checkpoint()
    assert set(back.tensors) == set(original.tensors)
    for name, tensor in original.tensors.items():
        assert torch.equal(back.tensors[name], tensor), name
    encoder, dictionary, optimiser = create("relu", dim=4, n_latents=8), Dictionary(torch.ones(8, 4)), None
    ckpt.restore_module(path, back, "encoder", encoder)
    ckpt.restore_module(path, back, "dictionary", dictionary)
    optimiser = torch.optim.Adam([*encoder.parameters(), dictionary.atoms], lr=1e-3)
    ckpt.restore_optimiser(path, back, optimiser)
    assert torch.equal(optimiser.state_dict()["state"][0]["exp_avg"], original.tensors["optimiser.0.exp_avg"])


def test_every_single_bit_flip_is_detected(tmp_path):
    data = ckpt.encode_checkpoint(_checkpoint().tensors, {"format": ckpt.FORMAT, "step": 4})
    header = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(0)
    bits = list(range(header * 8)) + rng.sample(range(header * 8, len(data) * 8), 400)  # all header bits
    missed = []
    for bit in bits:
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            ckpt.decode_checkpoint(bytes(damaged), tmp_path / "c")
        except SparseInferError:
            continue
        missed.append(bit)
    assert not missed, f"{len(missed)} of {len(bits)} flips undetected"
    ckpt.decode_checkpoint(data, tmp_path / "c")  # the intact bytes pass


def _state(**changes):
    state = {
        "format": ckpt.FORMAT, "format_version": 1, "step": 4, "flops": 0, "history": [], "optimiser": {},
        "scalars": {}, "config": dict(CONFIG),
    }  # fmt: skip
    return {**state, **changes}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\x01\x02", "truncated"),
        (ckpt.encode_checkpoint({}, {}), "not a sparseinfer-checkpoint"),  # an empty dict
        (ckpt.encode_checkpoint({}, [1, 2]), "not a sparseinfer-checkpoint"),  # a list
        (ckpt.encode_checkpoint({}, _state(step=10**18)), "outside the run's 0..10 steps"),  # a huge step
        (ckpt.encode_checkpoint({}, _state(step="4")), "'step' is missing"),
        (ckpt.encode_checkpoint({}, _state(config={**CONFIG, "encoder": "topk", "lr": 0.01})), "encoder: 'topk'"),
        (b'{"not": "safetensors"}' * 3, "header length out of range"),
    ],
)
def test_damaged_or_foreign_checkpoints_get_one_line(tmp_path, content, message):
    path = tmp_path / ckpt.CHECKPOINT
    path.write_bytes(content)
    with pytest.raises(SparseInferError, match="cannot resume from") as err:
        ckpt.read_checkpoint(path, CONFIG, steps=10)
    text = str(err.value)
    assert message in text and "\n" not in text and str(path) in text and "afresh" in text


def test_config_mismatch_names_every_field():
    differ = ckpt.config_differences({**CONFIG, "checkpoint_every": 5}, {**CONFIG, "lr": 0.01, "steps": 5})
    assert differ == ["lr: 0.001 -> 0.01", "steps: 10 -> 5"]  # checkpoint_every may change


def test_wrong_shapes_are_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / ckpt.CHECKPOINT, _checkpoint())
    back = ckpt.read_checkpoint(path, CONFIG, steps=10)
    with pytest.raises(SparseInferError, match=r"encoder.linear.bias has shape \(8,\), this run.s has \(16,\)"):
        ckpt.restore_module(path, back, "encoder", create("relu", dim=4, n_latents=16))
    with pytest.raises(SparseInferError, match="the encoder tensors differ"):
        ckpt.restore_module(path, back, "encoder", create("jumprelu", dim=4, n_latents=8))


def test_non_finite_values_are_never_written(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT
    good = ckpt.save_checkpoint(path, _checkpoint())
    before = good.read_bytes()
    bad = _checkpoint(step=6)
    bad.tensors["dictionary.atoms"] = bad.tensors["dictionary.atoms"].clone()
    bad.tensors["dictionary.atoms"][0, 0] = float("nan")
    with pytest.raises(SparseInferError, match=r"diverged by step 6: dictionary.atoms hold NaN or Inf; the last good"):
        ckpt.save_checkpoint(path, bad)
    assert path.read_bytes() == before


def test_legacy_pickle_is_refused_unread(tmp_path):
    (tmp_path / ckpt.LEGACY_CHECKPOINT).write_bytes(b"\x80\x04garbage")
    with pytest.raises(SparseInferError, match="no longer pickles"):
        ckpt.refuse_legacy(tmp_path)


DIM = 6


def _run(steps=12, **changes):
    config = LMTrainConfig(
        encoder="relu", expansion=2, steps=steps, batch_size=16, lr=3e-3, warmup_steps=2, l1_warmup_steps=2,
        checkpoint_every=4, eval_every=2, resample_every=5, dead_tokens=40, **changes,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(16 * steps, DIM, generator=gen)
    return config, data


def _batches(data, stop=None):
    for i, batch in enumerate(data.split(16)):
        if i == stop:
            raise KeyboardInterrupt
        yield batch


def test_resume_matches_uninterrupted_and_checks_config(tmp_path):
    config, data = _run()
    full = train_on_activations(config, _batches(data), tmp_path / "full", DIM, data[:64], progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_on_activations(config, _batches(data, stop=6), tmp_path / "cut", DIM, data[:64], progress=False)
    assert (tmp_path / "cut" / ckpt.CHECKPOINT).exists()
    other = config.model_copy(update={"lr": 0.01})
    with pytest.raises(SparseInferError, match=r"another config \(lr: 0.003 -> 0.01\)"):
        train_on_activations(other, _batches(data), tmp_path / "cut", DIM, data[:64], progress=False)
    resumed = train_on_activations(config, _batches(data), tmp_path / "cut", DIM, data[:64], progress=False)
    assert resumed["history"] == full["history"]
    assert not (tmp_path / "cut" / ckpt.CHECKPOINT).exists()
    # a finished run is refused without force, retrained with it
    with pytest.raises(SparseInferError, match=r"holds a finished run .* --force"):
        train_on_activations(config, _batches(data), tmp_path / "cut", DIM, data[:64], progress=False)
    again = train_on_activations(config, _batches(data), tmp_path / "cut", DIM, data[:64], progress=False, force=True)
    assert again["history"] == full["history"]


def test_atomic_writer_refuses_special_files_and_missing_folders(tmp_path):
    with pytest.raises(SparseInferError, match="it is a character device"):
        write_bytes("/dev/null", b"x")
    with pytest.raises(SparseInferError, match="it is a folder"):
        write_bytes(tmp_path, b"x")
    with pytest.raises(SparseInferError, match="does not exist"):
        write_bytes(tmp_path / "missing" / "f", b"x")
    assert write_bytes(tmp_path / "made" / "f", b"x", parents=True).read_bytes() == b"x"
