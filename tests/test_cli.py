"""The `sparseinfer` command as a user runs it: real subprocesses, tables on stdout, one-line errors with exit 2."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sparseinfer.data.synthetic import make_synthetic

STUDY_ENCODERS = {
    "relu",
    "topk",
    "batch_topk",
    "jumprelu",
    "mlp",
    "ista",
    "fista",
    "lca",
    "omp",
    "matching_pursuit",
    "gradient",
    "ito",
    "lista",
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparseinfer", *args], capture_output=True, text=True, timeout=300)


def metric(output: str, name: str) -> float:
    match = re.search(rf"{name}\s*│\s*([-0-9.e+]+)", output)
    assert match, output
    return float(match.group(1))


def test_help_lists_commands():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("encoders", "infer", "run", "reproduce", "report"):
        assert command in out.stdout


def test_version_from_the_script_and_python_m():
    """`sparseinfer --version` and `python -m sparseinfer --version` print the package's version (the installed
    distribution's too) and exit 0 without running a command."""
    import importlib.metadata
    from pathlib import Path

    import sparseinfer

    assert sparseinfer.__version__ == importlib.metadata.version("sparseinfer")
    script = Path(sys.executable).parent / "sparseinfer"
    script_run = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=300)
    for out in (cli("--version"), script_run):
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"sparseinfer {sparseinfer.__version__}"
    assert "--version" in cli("--help").stdout


def test_encoders_lists_every_encoder_with_hyperparameters():
    out = cli("encoders")
    assert out.returncode == 0, out.stderr
    names = set(re.findall(r"^│ (\w+)\s", out.stdout, flags=re.M))
    assert STUDY_ENCODERS <= names
    assert "penalty=" in out.stdout and "max_iter=" in out.stdout


def test_infer_fista_recovers_the_protocol_codes():
    out = cli("infer", "--encoder", "fista", "--n-latents", "16", "--dim", "8", "--k", "3")
    assert out.returncode == 0, out.stderr
    assert metric(out.stdout, "latent_mcc") > 0.98
    assert "FLOPs" in out.stdout and "converged" in out.stdout


def test_infer_from_files(tmp_path):
    data = make_synthetic(n_latents=12, dim=10, k=2, n_train=1, n_test=64, seed=1)
    np.save(tmp_path / "x.npy", data.test_x.numpy())
    np.save(tmp_path / "atoms.npy", data.dictionary.atoms.detach().numpy())
    out = cli(
        "infer",
        "--encoder",
        "omp",
        "--param",
        "k=2",
        "--signals",
        str(tmp_path / "x.npy"),
        "--dictionary",
        str(tmp_path / "atoms.npy"),
        "--out",
        str(tmp_path / "codes.safetensors"),
    )
    assert out.returncode == 0, out.stderr
    assert metric(out.stdout, "fvu") < 1e-3
    codes = load_file(str(tmp_path / "codes.safetensors"))["codes"]
    assert codes.shape == (64, 12) and torch.count_nonzero(codes, dim=1).max() <= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("infer", "--encoder", "nope"), "unknown encoder 'nope'; known encoders: "),
        (("infer", "--encoder", "omp", "--k", "20"), "exceeds"),
        (("infer", "--encoder", "fista", "--param", "penalty=-1"), "penalty"),
        (("infer", "--encoder", "fista", "--param", "bogus=1"), "no hyperparameter"),
        (("infer", "--signals", "/no/such.npy", "--dictionary", "/no/such.npy"), "not found"),
        (("run", "/no/such/config.yaml"), "not found"),
        (("report", "/no/such/folder"), "results.parquet"),
        (("reproduce", "everything"), "known targets"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2


def test_corrupt_files_are_clear_errors(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not an array")
    (tmp_path / "d.safetensors").write_bytes(b"\x00garbage")
    out = cli("infer", "--signals", str(tmp_path / "x.npy"), "--dictionary", str(tmp_path / "d.safetensors"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    nan = np.full((4, 8), np.nan, dtype=np.float32)
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "atoms.npy", np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32))
    out = cli("infer", "--signals", str(tmp_path / "nan.npy"), "--dictionary", str(tmp_path / "atoms.npy"))
    assert out.returncode == 2 and "NaN" in out.stderr


def test_bad_config_key_exits_2(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("setting: learn_both\nmethod: sae\nencoder: {name: relu}\ntrain: {stepz: 3}\n")
    out = cli("run", str(config), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and "train.stepz: unknown key" in out.stderr
