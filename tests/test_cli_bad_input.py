"""Every bad input of issue 19 (and more) through the real CLI: exit 2, one line naming the input, no traceback,
nothing already written lost or overwritten, no hang.

Each case runs `python -m sparseinfer ARGS` (forked from a preloaded interpreter, see `_cli_fork`) in a folder of
its own, prepared by its `setup` from module-wide fixtures: a small activation store, a finished run, a run
interrupted with a checkpoint, signals and atoms, a tiny random Llama. Every file present before the command (in
the case folder and the fixtures) must be there afterwards with the same bytes, and no new file may appear but a
folder lock. A case that outlives its timeout (a hang) fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_fork import ForkedCLI, fresh_cli
from _stores import clustered_store
from safetensors.torch import save, save_file

from sparseinfer.data.store import MANIFEST, ActivationStore, manifest_checksum
from sparseinfer.locks import LOCK_FILE, folder_lock
from sparseinfer.training.checkpoint import CHECKPOINT, decode_checkpoint, encode_checkpoint

# the run every training case asks for: small enough to finish in a second
TRAIN = ("--encoder", "topk", "--param", "k=2", "--expansion", "2", "--steps", "6", "--batch-size", "64")
DIM = 8
PRELOAD = (
    "sparseinfer.cli.app",
    "sparseinfer.evaluation.inference",
    "sparseinfer.evaluation.refine",
    "sparseinfer.evaluation.runs",
    "sparseinfer.training.activations",
    "sparseinfer.data.harvest",
    "sparseinfer.experiments.reproduce",
    "sparseinfer.experiments.runner",
    "transformers.models.llama.modeling_llama",
)


# ---- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli():
    runner = ForkedCLI(PRELOAD)
    yield runner
    runner.close()


def _interrupted_run(store: Path, out: Path) -> Path:
    """A run of TRAIN stopped after step 3 of 6: its checkpoint (step 2) is in `out`, no run.json."""
    from sparseinfer.training.activations import LMTrainConfig
    from sparseinfer.training.activations.train import train_on_activations

    cfg = LMTrainConfig(encoder="topk", hparams={"k": 2}, expansion=2, steps=6, batch_size=64, checkpoint_every=2)
    st = ActivationStore.open(store)

    def batches():
        for i, batch in enumerate(st.iter_batches(64, seed=cfg.seed)):
            if i == 3:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        train_on_activations(cfg, batches(), out, DIM, st.sample(512), progress=False)
    assert (out / CHECKPOINT).exists() and not (out / "run.json").exists()
    return out


@pytest.fixture(scope="module")
def fx(tmp_path_factory, cli) -> Path:
    """The module's good inputs (never modified by a case): store, run, ckpt (interrupted run), x.npy, atoms.npy,
    model (a tiny Llama), corpus.txt."""
    from sparseinfer.lm.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("bad-input-fixtures")
    clustered_store(root / "store", dim=DIM, clusters=4, scale=1, noise=0.1, offset=0)
    done = cli("train", "run", "--store", "store", *TRAIN, cwd=root)
    assert done.returncode == 0, done.stderr
    _interrupted_run(root / "store", root / "ckpt")
    rng = np.random.default_rng(0)
    np.save(root / "x.npy", rng.normal(size=(32, DIM)).astype(np.float32))
    np.save(root / "atoms.npy", rng.normal(size=(16, DIM)).astype(np.float32))
    build_tiny_model(root / "model")
    (root / "corpus.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    return root


# ---- helpers for setups ----------------------------------------------------------------------------------------
def copy(fx: Path, name: str, case: Path, as_: str | None = None) -> Path:
    src, dst = fx / name, case / (as_ or name)
    if src.is_dir():
        return Path(shutil.copytree(src, dst))
    return Path(shutil.copy2(src, dst))


def manifest(case: Path, change: Callable[[dict], object], resign: bool = True) -> None:
    """Apply `change` to the manifest of the store copied to `case/s`; `resign` recomputes the checksum,
    so only the checks behind it can fail."""
    path = case / "s" / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    if resign:
        data["checksum"] = manifest_checksum(data)
    path.write_text(json.dumps(data))


def store_edit(change: Callable[[dict], object], resign: bool = True) -> Callable[[Path, Path], None]:
    def setup(case: Path, fx: Path) -> None:
        copy(fx, "store", case, "s")
        manifest(case, change, resign)

    return setup


def shard_bytes(index: int, change: Callable[[bytes], bytes], resize: bool = False) -> Callable[[Path, Path], None]:
    """Replace shard `index`'s bytes by `change(bytes)`; `resize` records the new size in a re-signed manifest (so
    the header checks, not the size check, must catch it)."""

    def setup(case: Path, fx: Path) -> None:
        copy(fx, "store", case, "s")
        path = case / "s" / f"shard-{index:05d}.safetensors"
        data = change(path.read_bytes())
        path.write_bytes(data)
        if resize:
            manifest(case, lambda d: d["shards"][index].update(bytes=len(data)))

    return setup


def flip(offset_from_end: int) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        at = len(data) - offset_from_end
        return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]

    return change


def checkpoint_edit(change: Callable[[dict, dict], object]) -> Callable[[Path, Path], None]:
    """Copy the interrupted run to `case/c` and rewrite its checkpoint, validly sealed, after `change(tensors,
    state)`: only the checks behind the checksum can catch it."""

    def setup(case: Path, fx: Path) -> None:
        path = copy(fx, "ckpt", case, "c") / CHECKPOINT
        tensors, state = decode_checkpoint(path.read_bytes(), path)
        change(tensors, state)
        path.write_bytes(encode_checkpoint(tensors, state))

    return setup


def checkpoint_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def setup(case: Path, fx: Path) -> None:
        path = copy(fx, "ckpt", case, "c") / CHECKPOINT
        path.write_bytes(change(path.read_bytes()))

    return setup


def run_file(name: str, content: bytes | None) -> Callable[[Path, Path], None]:
    """Copy the finished run to `case/r` and replace its file `name` by `content` (None: delete it)."""

    def setup(case: Path, fx: Path) -> None:
        path = copy(fx, "run", case, "r") / name
        path.unlink()
        if content is not None:
            path.write_bytes(content)

    return setup


def run_copy(case: Path, fx: Path) -> None:
    """The finished run, copied to `case/r`."""
    copy(fx, "run", case, "r")


def cfg_edit(change: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def setup(case: Path, fx: Path) -> None:
        path = copy(fx, "run", case, "r") / "cfg.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return setup


def write(name: str, content: bytes | str) -> Callable[[Path, Path], None]:
    def setup(case: Path, fx: Path) -> None:
        path = case / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def npy(name: str, array: np.ndarray) -> Callable[[Path, Path], None]:
    def setup(case: Path, fx: Path) -> None:
        np.save(case / name, array, allow_pickle=True)

    return setup


def both(*setups: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(case: Path, fx: Path) -> None:
        for one in setups:
            one(case, fx)

    return setup


def fifo(name: str) -> Callable[[Path, Path], None]:
    def setup(case: Path, fx: Path) -> None:
        os.mkfifo(case / name)

    return setup


def device(name: str, minor: int) -> Callable[[Path, Path], None]:
    """A character device of the memory driver (major 1: 3 is null, 7 is full) in the case folder, never the
    system's own: a writer that renames over its target would replace only this copy. Needs root (else skipped)."""

    def setup(case: Path, fx: Path) -> None:
        try:
            os.mknod(case / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        except PermissionError:
            pytest.skip("making a device node needs root")

    return setup


def model_with_pickle(case: Path, fx: Path) -> None:
    """The tiny model with its weights as `pytorch_model.bin` (a pickle) instead of safetensors."""
    folder = copy(fx, "model", case, "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)


def nothing(case: Path, fx: Path) -> None:
    """No files: the inputs are the fixtures' own (or none)."""


# ---- the table ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """`sparseinfer ARGS` ("{fx}" is the fixtures' folder) in a folder prepared by `setup`; the one-line error must
    contain `names`. `lock`: a folder (relative to the case) this test holds locked while the command runs."""

    id: str
    args: tuple[str, ...]
    names: str
    setup: Callable[[Path, Path], None] = nothing
    timeout: float = 60
    lock: str | None = None


def train_on(store: str, *extra: str) -> tuple[str, ...]:
    return ("train", "new", "--store", store, *TRAIN, *extra)


RESUME = ("train", "c", "--store", "{fx}/store", *TRAIN)
X, ATOMS = "{fx}/x.npy", "{fx}/atoms.npy"
FILES = ("--signals", X, "--dictionary", ATOMS)
SAE = ("infer", "--sae", "r", "--signals", X, "--encoder", "fista")
EVAL = ("evaluate", "r", "--store", "{fx}/store", "--contexts", "0", "--tokens", "64")
HARVEST = ("--model", "{fx}/model", "--hook", "resid_pre.1", "--contexts", "4", "--context-length", "8")

CASES = [
    # -- stores: edited, damaged, incomplete (train must refuse them, naming the file and the field)
    Case("store-dim-edited", train_on("s"), "s/manifest.json", store_edit(lambda d: d.update(dim=16), False)),
    Case("store-dim-edited-resigned", train_on("s"), "field dim", store_edit(lambda d: d.update(dim=16))),
    Case("store-context-length", train_on("s"), "context_length", store_edit(lambda d: d.update(context_length=5))),
    Case("store-contexts", train_on("s"), "shard-00002", store_edit(lambda d: d["shards"][2].update(contexts=20))),
    Case("store-d-model-0", train_on("s"), "field dim", store_edit(lambda d: d.update(dim=0))),
    Case("store-incomplete", train_on("s"), "incomplete", store_edit(lambda d: d.update(complete=False))),
    Case("store-no-sha256", train_on("s"), "sha256", store_edit(lambda d: [s.pop("sha256") for s in d["shards"]])),
    Case("store-shards-string", train_on("s"), "shards", store_edit(lambda d: d.update(shards="shard-00000"))),
    Case("store-dtype", train_on("s"), "float16", store_edit(lambda d: d.update(dtype="float16"))),
    Case("store-version", train_on("s"), "format 99", store_edit(lambda d: d.update(version=99))),
    Case("store-no-checksum", train_on("s"), "no checksum", store_edit(lambda d: d.pop("checksum"), False)),
    Case(
        "store-manifest-not-utf8",
        train_on("s"),
        "UTF-8",
        both(store_edit(lambda d: None), write("s/manifest.json", b"\xff\xfe{\x00")),
    ),
    Case(
        "store-manifest-empty",
        train_on("s"),
        "s/manifest.json",
        both(store_edit(lambda d: None), write("s/manifest.json", b"")),
    ),
    Case(
        "store-manifest-list",
        train_on("s"),
        "s/manifest.json",
        both(store_edit(lambda d: None), write("s/manifest.json", "[1, 2]")),
    ),
    Case(
        "store-no-manifest",
        train_on("s"),
        "s",
        both(store_edit(lambda d: None), lambda c, f: (c / "s" / MANIFEST).unlink()),
    ),
    Case("store-missing", train_on("nowhere"), "nowhere"),
    Case("store-is-a-file", train_on("s"), "s", write("s", "not a store")),
    Case(
        "shard-missing-tensor",
        train_on("s"),
        "shard-00001",
        shard_bytes(1, lambda b: save({"token_ids": torch.zeros(16, 9).long()}), resize=True),
    ),
    Case(
        "shard-wrong-width",
        train_on("s"),
        "shard-00001",
        shard_bytes(
            1,
            lambda b: save({"activations": torch.zeros(16, 9, 3), "token_ids": torch.zeros(16, 9).long()}),
            resize=True,
        ),
    ),
    Case("shard-bit-flip", train_on("s"), "shard-00003", shard_bytes(3, flip(100))),
    Case("shard-truncated", train_on("s"), "shard-00001", shard_bytes(1, lambda b: b[:-10])),
    Case(
        "shard-deleted",
        train_on("s"),
        "shard-00002",
        both(store_edit(lambda d: None), lambda c, f: (c / "s" / "shard-00002.safetensors").unlink()),
    ),
    Case("shard-garbage", train_on("s"), "shard-00000", shard_bytes(0, lambda b: b"\x00" * len(b))),
    # -- train: options, folders
    Case("train-finished-run", ("train", "{fx}/run", "--store", "{fx}/store", *TRAIN), "--force"),
    Case("train-batch-larger-than-store", train_on("{fx}/store", "--batch-size", "100000"), "100000", timeout=60),
    Case("train-device-potato", train_on("{fx}/store", "--device", "potato"), "potato"),
    Case("train-device-cuda", train_on("{fx}/store", "--device", "cuda"), "cuda"),
    Case("train-param-bad-yaml", train_on("{fx}/store", "--param", "k=[1,"), "k=[1,"),
    Case(
        "train-param-k-bool", ("train", "new", "--store", "{fx}/store", "--encoder", "topk", "--param", "k=true"), "k"
    ),
    Case("train-encoder-potato", ("train", "new", "--store", "{fx}/store", "--encoder", "potato"), "potato"),
    Case("train-preset-potato", ("train", "new", "--store", "{fx}/store", "--preset", "potato"), "potato"),
    Case("train-lr-negative", train_on("{fx}/store", "--lr", "-1"), "lr"),
    Case("train-lr-nan", train_on("{fx}/store", "--lr", "nan"), "lr"),
    Case("train-steps-0", train_on("{fx}/store", "--steps", "0"), "--steps"),
    Case("train-out-is-a-file", ("train", "f", "--store", "{fx}/store", *TRAIN), "f", write("f", "x")),
    Case("train-locked", ("train", "l", "--store", "{fx}/store", *TRAIN), "l", write("l/.keep", ""), lock="l"),
    # -- checkpoints: damaged, sealed but wrong, of another config
    Case("ckpt-empty", RESUME, CHECKPOINT, checkpoint_bytes(lambda b: b"")),
    Case("ckpt-truncated", RESUME, CHECKPOINT, checkpoint_bytes(lambda b: b[: len(b) // 2])),
    Case("ckpt-bit-flip", RESUME, CHECKPOINT, checkpoint_bytes(flip(7))),
    Case("ckpt-header-flip", RESUME, CHECKPOINT, checkpoint_bytes(lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:])),
    Case("ckpt-garbage", RESUME, CHECKPOINT, checkpoint_bytes(lambda b: os.urandom(len(b)))),
    Case("ckpt-state-empty", RESUME, CHECKPOINT, checkpoint_edit(lambda t, s: s.clear())),
    Case("ckpt-history-string", RESUME, CHECKPOINT, checkpoint_edit(lambda t, s: s.update(history="x"))),
    Case(
        "ckpt-wrong-shape",
        RESUME,
        "encoder.linear.weight",
        checkpoint_edit(lambda t, s: t.update({"encoder.linear.weight": torch.zeros(3, 3)})),
    ),
    Case("ckpt-missing-tensor", RESUME, CHECKPOINT, checkpoint_edit(lambda t, s: t.pop("dictionary.atoms"))),
    Case(
        "ckpt-nan-weights",
        RESUME,
        CHECKPOINT,
        checkpoint_edit(lambda t, s: t.update({k: t[k] * float("nan") for k in t if k.startswith("encoder.")})),
    ),
    Case("ckpt-huge-step", RESUME, "step", checkpoint_edit(lambda t, s: s.update(step=10**15)), timeout=60),
    Case("ckpt-negative-step", RESUME, "step", checkpoint_edit(lambda t, s: s.update(step=-1))),
    Case("ckpt-step-bool", RESUME, "step", checkpoint_edit(lambda t, s: s.update(step=True))),
    Case("ckpt-scalars-wrong", RESUME, CHECKPOINT, checkpoint_edit(lambda t, s: s.update(scalars={"scale": "x"}))),
    Case(
        "ckpt-legacy-pickle",
        RESUME,
        "checkpoint.pt",
        both(checkpoint_bytes(lambda b: b), lambda c, f: (c / "c" / CHECKPOINT).rename(c / "c" / "checkpoint.pt")),
    ),
    Case(
        "ckpt-is-a-folder",
        RESUME,
        CHECKPOINT,
        both(
            checkpoint_bytes(lambda b: b),
            lambda c, f: ((c / "c" / CHECKPOINT).unlink(), (c / "c" / CHECKPOINT).mkdir()),
        ),
    ),
    Case("resume-other-encoder", (*RESUME, "--encoder", "relu"), "encoder", checkpoint_bytes(lambda b: b)),
    Case("resume-fewer-steps", (*RESUME, "--steps", "4"), "steps", checkpoint_bytes(lambda b: b)),
    Case("resume-other-lr", (*RESUME, "--lr", "0.01"), "lr", checkpoint_bytes(lambda b: b)),
    Case("resume-other-expansion", (*RESUME, "--expansion", "4"), "expansion", checkpoint_bytes(lambda b: b)),
    # -- infer: files
    Case(
        "infer-signals-empty-file", ("infer", "--signals", "x.npy", "--dictionary", ATOMS), "x.npy", write("x.npy", b"")
    ),
    Case(
        "infer-signals-npz",
        ("infer", "--signals", "x.npy", "--dictionary", ATOMS),
        "x.npy",
        lambda c, f: np.savez(c / "x.npz", a=np.zeros((4, DIM))) or (c / "x.npz").rename(c / "x.npy"),
    ),
    Case(
        "infer-signals-pickle",
        ("infer", "--signals", "x.npy", "--dictionary", ATOMS),
        "x.npy",
        npy("x.npy", np.array([{"a": 1}], dtype=object)),
    ),
    Case(
        "infer-signals-1d", ("infer", "--signals", "x.npy", "--dictionary", ATOMS), "x.npy", npy("x.npy", np.zeros(8))
    ),
    Case(
        "infer-signals-empty-array",
        ("infer", "--signals", "x.npy", "--dictionary", ATOMS),
        "x.npy",
        npy("x.npy", np.zeros((0, DIM), np.float32)),
    ),
    Case(
        "infer-signals-int",
        ("infer", "--signals", "x.npy", "--dictionary", ATOMS),
        "x.npy",
        npy("x.npy", np.zeros((4, DIM), np.int64)),
    ),
    Case(
        "infer-signals-nan",
        ("infer", "--signals", "x.npy", "--dictionary", ATOMS),
        "NaN",
        npy("x.npy", np.full((4, DIM), np.nan, np.float32)),
    ),
    Case(
        "infer-signals-width",
        ("infer", "--signals", "x.npy", "--dictionary", ATOMS),
        "columns",
        npy("x.npy", np.zeros((4, 5), np.float32)),
    ),
    Case(
        "infer-signals-folder",
        ("infer", "--signals", "x.npy", "--dictionary", ATOMS),
        "x.npy",
        lambda c, f: (c / "x.npy").mkdir(),
    ),
    Case("infer-signals-txt", ("infer", "--signals", "x.txt", "--dictionary", ATOMS), "x.txt", write("x.txt", "1 2")),
    Case(
        "infer-signals-safetensors-many",
        ("infer", "--signals", "x.safetensors", "--dictionary", ATOMS),
        "x.safetensors",
        lambda c, f: save_file({"a": torch.zeros(2, 8), "b": torch.zeros(2, 8)}, str(c / "x.safetensors")),
    ),
    Case(
        "infer-signals-safetensors-empty",
        ("infer", "--signals", "x.safetensors", "--dictionary", ATOMS),
        "x.safetensors",
        lambda c, f: save_file({}, str(c / "x.safetensors")),
    ),
    Case("infer-signals-without-dictionary", ("infer", "--signals", X), "--dictionary"),
    Case("infer-dictionary-empty", ("infer", "--signals", X, "--dictionary", "d.npy"), "d.npy", write("d.npy", b"")),
    Case(
        "infer-dictionary-zero-atoms",
        ("infer", "--signals", X, "--dictionary", "d.npy"),
        "d.npy",
        npy("d.npy", np.zeros((0, DIM), np.float32)),
    ),
    Case(
        "infer-dictionary-zero-atom",
        ("infer", "--signals", X, "--dictionary", "d.npy"),
        "atom",
        npy("d.npy", np.zeros((4, DIM), np.float32)),
    ),
    Case(
        "infer-dictionary-empty-folder",
        ("infer", "--signals", X, "--dictionary", "d"),
        "d",
        lambda c, f: (c / "d").mkdir(),
    ),
    # -- infer: --out
    Case("infer-out-no-folder", ("infer", *FILES, "--out", "nodir/c.safetensors"), "nodir"),
    Case("infer-out-is-a-folder", ("infer", *FILES, "--out", "o"), "o", lambda c, f: (c / "o").mkdir()),
    Case(
        "infer-out-parent-is-a-file", ("infer", *FILES, "--out", "f/c.safetensors"), "f/c.safetensors", write("f", "x")
    ),
    Case("infer-out-unwritable", ("infer", *FILES, "--out", "/proc/c.safetensors"), "/proc/c.safetensors"),
    Case("infer-out-device-full", ("infer", *FILES, "--out", "full"), "full", device("full", 7)),
    Case("infer-out-device-null", ("infer", *FILES, "--out", "null"), "null", device("null", 3)),
    Case("infer-out-fifo", ("infer", *FILES, "--out", "p"), "p", fifo("p"), timeout=30),
    Case("infer-out-synthetic-device-full", ("infer", "--out", "full"), "full", device("full", 7)),
    Case("sae-out-device-full", (*SAE, "--out", "full"), "full", both(run_copy, device("full", 7))),
    # -- infer: sizes and parameters
    Case("infer-param-bad-yaml", ("infer", "--param", "penalty=[1,"), "penalty=[1,"),
    Case("infer-param-no-value", ("infer", "--param", "penalty"), "penalty"),
    Case("infer-param-binary", ("infer", "--param", "penalty=\x01\x02"), "penalty"),
    Case("infer-huge-n-samples", ("infer", "--n-samples", "100000000000000"), "samples", timeout=30),
    Case("infer-huge-n-latents", ("infer", "--n-latents", "4000000000", "--encoder", "relu"), "4000000000", timeout=30),
    Case("infer-huge-dim", ("infer", "--dim", "3000000000", "--n-latents", "4000000000"), "3000000000", timeout=30),
    Case("infer-param-dim-negative", ("infer", "--param", "dim=-1"), "dim"),
    Case("infer-dim-0", ("infer", "--dim", "0"), "dim"),
    Case("infer-n-samples-0", ("infer", "--n-samples", "0"), "--n-samples"),
    Case("infer-k-0", ("infer", "--k", "0"), "k"),
    Case("infer-k-above-n", ("infer", "--k", "20"), "k"),
    Case("infer-penalty-inf-signed", ("infer", "--signed", "--param", "penalty=inf"), "penalty"),
    Case("infer-penalty-nan", ("infer", "--param", "penalty=nan"), "penalty"),
    Case("infer-penalty-string", ("infer", "--param", "penalty=abc"), "penalty"),
    Case("infer-k-bool", ("infer", "--encoder", "omp", "--param", "k=true"), "k"),
    Case("infer-k-float", ("infer", "--encoder", "omp", "--param", "k=2.5"), "k"),
    Case("infer-max-iter-bool", ("infer", "--param", "max_iter=true"), "max_iter"),
    Case("infer-max-iter-huge", ("infer", "--param", "max_iter=1e30"), "max_iter"),
    Case("infer-dtype-potato", ("infer", "--dtype", "potato"), "potato"),
    Case("infer-dtype-int", ("infer", "--dtype", "int64"), "int64"),
    Case("infer-encoder-potato", ("infer", "--encoder", "potato"), "potato"),
    Case("infer-k-not-a-number", ("infer", "--k", "x"), "--k"),
    # -- SAE folders (cfg.json and weights)
    Case("sae-cfg-list", SAE, "cfg.json", run_file("cfg.json", b"[1, 2]")),
    Case("sae-cfg-binary", SAE, "cfg.json", run_file("cfg.json", b"\xff\xfe\x00\x01")),
    Case("sae-cfg-empty", SAE, "cfg.json", run_file("cfg.json", b"")),
    Case("sae-cfg-metadata-list", SAE, "metadata", cfg_edit(lambda d: d.update(metadata=[1]))),
    Case("sae-cfg-k-bool", SAE, "k", cfg_edit(lambda d: d.update(hparams={**d.get("hparams", {}), "k": True}))),
    Case("sae-cfg-hparams-string", SAE, "hparams", cfg_edit(lambda d: d.update(hparams="k=2"))),
    Case("sae-cfg-encoder-potato", SAE, "potato", cfg_edit(lambda d: d.update(encoder="potato"))),
    Case("sae-cfg-missing", SAE, "r", run_file("cfg.json", None)),
    Case("sae-weights-corrupt", SAE, "encoder.safetensors", run_file("encoder.safetensors", b"\x00garbage")),
    Case("sae-weights-missing", SAE, "encoder.safetensors", run_file("encoder.safetensors", None)),
    Case("sae-folder-missing", ("infer", "--sae", "nowhere", "--signals", X), "nowhere"),
    Case(
        "sae-signals-width",
        ("infer", "--sae", "{fx}/run", "--signals", "x.npy"),
        "signals",
        npy("x.npy", np.zeros((4, 5), np.float32)),
    ),
    # -- evaluate
    Case("evaluate-run-json-corrupt", EVAL, "run.json", run_file("run.json", b"{not json")),
    Case("evaluate-run-json-binary", EVAL, "run.json", run_file("run.json", b"\xff\xfe\x00")),
    Case("evaluate-run-json-list", EVAL, "run.json", run_file("run.json", b"[]")),
    Case("evaluate-run-json-missing", EVAL, "r", run_file("run.json", None)),
    Case("evaluate-encoder-corrupt", EVAL, "encoder.safetensors", run_file("encoder.safetensors", b"garbage!")),
    Case("evaluate-encoder-missing", EVAL, "encoder.safetensors", run_file("encoder.safetensors", None)),
    Case(
        "evaluate-dictionary-truncated",
        EVAL,
        "dictionary.safetensors",
        lambda c, f: (p := copy(f, "run", c, "r") / "dictionary.safetensors").write_bytes(p.read_bytes()[:-8]),
    ),
    Case("evaluate-run-missing", ("evaluate", "nowhere", "--store", "{fx}/store", "--contexts", "0"), "nowhere"),
    Case(
        "evaluate-store-damaged",
        ("evaluate", "{fx}/run", "--store", "s", "--contexts", "0"),
        "shard-00001",
        shard_bytes(1, flip(50)),
    ),
    Case("evaluate-target-l0", (*EVAL, "--infer-with", "fista", "--target-l0", "1,x"), "1,x", run_copy),
    Case("evaluate-infer-with-potato", (*EVAL, "--infer-with", "potato"), "potato", run_copy),
    # -- reproduce, run/sweep configs
    Case("reproduce-seeds", ("reproduce", "all", "--seeds", "1,x", "--out", "o"), "1,x"),
    Case("reproduce-target", ("reproduce", "potato", "--out", "o"), "potato"),
    Case("reproduce-preset", ("reproduce", "all", "--preset", "potato", "--out", "o"), "potato"),
    Case("reproduce-data", ("reproduce", "all", "--data", "potato", "--out", "o"), "potato"),
    Case("reproduce-variant", ("reproduce", "all", "--variant", "potato", "--out", "o"), "potato"),
    Case("reproduce-encoders", ("reproduce", "learn-both", "--encoders", "potato", "--out", "o"), "potato"),
    Case("reproduce-llm-stop-after", ("reproduce", "llm", "--stop-after", "potato", "--out", "o"), "stop_after"),
    Case(
        "reproduce-llm-interp-methods",
        ("reproduce", "llm", "--interp-methods", "topk:potato", "--out", "o"),
        "interp_methods entry 'topk:potato'",
    ),
    Case("sweep-binary-yaml", ("sweep", "c.yaml", "--out", "o"), "c.yaml", write("c.yaml", bytes(range(256)))),
    Case("sweep-yaml-list", ("sweep", "c.yaml", "--out", "o"), "c.yaml", write("c.yaml", "[1, 2]\n")),
    Case("sweep-yaml-broken", ("sweep", "c.yaml", "--out", "o"), "c.yaml", write("c.yaml", "a: [1,\n")),
    Case("sweep-config-folder", ("sweep", "c", "--out", "o"), "c", lambda c, f: (c / "c").mkdir()),
    Case(
        "sweep-unknown-encoder",
        ("sweep", "c.yaml", "--out", "o"),
        "potato",
        write("c.yaml", "setting: learn_both\nmethod: sae\nencoder: {name: potato}\n"),
    ),
    # -- harvest
    Case("harvest-empty-text", ("harvest", "h", *HARVEST, "--text", "e.txt"), "e.txt", write("e.txt", "")),
    Case(
        "harvest-binary-text",
        ("harvest", "h", *HARVEST, "--text", "b.txt"),
        "b.txt",
        write("b.txt", bytes(range(256)) * 4),
    ),
    Case("harvest-text-missing", ("harvest", "h", *HARVEST, "--text", "none.txt"), "none.txt"),
    Case(
        "harvest-pickled-model",
        (
            "harvest",
            "h",
            "--model",
            "m",
            "--hook",
            "resid_pre.1",
            "--text",
            "{fx}/corpus.txt",
            "--contexts",
            "4",
            "--context-length",
            "8",
        ),
        "pytorch_model.bin",
        model_with_pickle,
    ),
    Case("harvest-model-missing", ("harvest", "h", "--model", "./nomodel", "--text", "{fx}/corpus.txt"), "nomodel"),
    Case(
        "harvest-hook-potato",
        ("harvest", "h", "--model", "{fx}/model", "--hook", "potato", "--text", "{fx}/corpus.txt"),
        "potato",
    ),
    Case(
        "harvest-dtype-potato", ("harvest", "h", *HARVEST, "--text", "{fx}/corpus.txt", "--dtype", "potato"), "potato"
    ),
    Case(
        "harvest-split-potato", ("harvest", "h", *HARVEST, "--text", "{fx}/corpus.txt", "--split", "potato"), "potato"
    ),
    Case("harvest-out-is-a-file", ("harvest", "h", *HARVEST, "--text", "{fx}/corpus.txt"), "h", write("h", "x")),
    Case(
        "harvest-into-other-store",
        ("harvest", "s", *HARVEST, "--text", "{fx}/corpus.txt"),
        "s",
        store_edit(lambda d: None),
    ),
    Case(
        "harvest-device-potato", ("harvest", "h", *HARVEST, "--text", "{fx}/corpus.txt", "--device", "potato"), "potato"
    ),
    # -- report, dashboard, interpret
    Case("report-parquet-corrupt", ("report", "o"), "results.parquet", write("o/results.parquet", b"PAR1garbage")),
    Case("report-not-a-folder", ("report", "o"), "o", write("o", "x")),
    Case("dashboard-missing", ("dashboard", "nowhere"), "nowhere"),
    Case("interpret-store-missing", ("interpret", "{fx}/run", "--store", "nowhere", "--out", "o"), "nowhere"),
    Case("llm-fetch-potato", ("llm", "fetch", "potato"), "potato"),
    Case("command-potato", ("potato",), "potato"),
]


# progress that may precede the error: timestamped log lines, progress bars (tqdm's carriage returns included)
PROGRESS = re.compile(r"^(\[\d\d:\d\d:\d\d\] |.*\r|.*\d+%\|)")


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under `roots`: files by content, links by target, others by kind (FIFOs are never opened)."""
    out: dict[str, tuple] = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                out[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                out[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[str(path)] = ("kind", stat.S_IFMT(mode))
    return out


def check_outcome(case: Case, done, before: dict[str, tuple], after: dict[str, tuple]) -> None:
    """Exit 2, one `error:` line naming the input, no traceback, nothing lost or changed, no new file but a lock."""
    text = done.stdout + done.stderr
    assert "timed out" not in done.stderr, f"{case.id}: hung\n{text[-2000:]}"
    assert "Traceback" not in text, f"{case.id}: traceback\n{text[-3000:]}"
    assert done.returncode == 2, f"{case.id}: exit {done.returncode}\n{text[-2000:]}"
    lines = [line for line in done.stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1, f"{case.id}: {len(lines)} lines on stderr\n{done.stderr[-2000:]}"
    assert lines[0].startswith("error: "), f"{case.id}: {lines[0]}"
    assert case.names in lines[0], f"{case.id}: the message does not name {case.names!r}: {lines[0]}"
    assert done.stderr.rstrip().endswith(lines[0]), f"{case.id}: the error is not the last line"
    lost = {p: v for p, v in before.items() if after.get(p) != v}
    assert not lost, f"{case.id}: changed or lost {sorted(lost)}"
    new = [p for p, v in after.items() if p not in before and v[0] == "file" and not p.endswith(LOCK_FILE)]
    assert not new, f"{case.id}: wrote {new}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clean_line(case: Case, cli, fx: Path, tmp_path: Path) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    case.setup(folder, fx)
    before = snapshot(folder, fx)
    args = tuple(a.replace("{fx}", str(fx)) for a in case.args)
    if case.lock:
        with folder_lock(folder / case.lock, "test"):
            done = cli(*args, cwd=folder, timeout=case.timeout)
    else:
        done = cli(*args, cwd=folder, timeout=case.timeout)
    check_outcome(case, done, before, snapshot(folder, fx))


def test_the_fixtures_are_good(cli, fx: Path, tmp_path: Path) -> None:
    """The same commands on the undamaged inputs succeed: the refusals above are about the damage."""
    resumed = copy(fx, "ckpt", tmp_path, "c")
    done = cli("train", str(resumed), "--store", str(fx / "store"), *TRAIN, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (resumed / "run.json").exists() and not (resumed / CHECKPOINT).exists()
    done = cli("infer", "--signals", str(fx / "x.npy"), "--dictionary", str(fx / "atoms.npy"), "--out", "c.safetensors",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = cli("infer", "--sae", str(fx / "run"), "--signals", str(fx / "x.npy"), "--encoder", "fista", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("index", [0, 24, 60])
def test_a_fresh_interpreter_answers_the_same(index: int, cli, fx: Path, tmp_path: Path) -> None:
    """The forked runner is `python -m sparseinfer`: a few cases give the same exit code and stderr in a new
    interpreter."""
    case = CASES[index]
    answers = []
    for run in (cli, fresh_cli):
        folder = tmp_path / f"case-{len(answers)}"
        folder.mkdir()
        case.setup(folder, fx)
        args = tuple(a.replace("{fx}", str(fx)) for a in case.args)
        done = run(*args, cwd=folder, timeout=300)
        answers.append((done.returncode, done.stderr.replace(str(folder), "CASE")))
    assert answers[0] == answers[1]
