"""Damaged or edited activation stores are refused on open with one line naming the file and the field."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from _stores import clustered_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from sparseinfer.data.store import MANIFEST, ActivationStore, manifest_checksum
from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_count, check_finite, check_k, check_matrix, check_positive


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return clustered_store(tmp_path_factory.mktemp("store") / "s", dim=4, clusters=3, scale=1, noise=0.1, offset=0)


def copy(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "s"))


def edit(folder: Path, change, resign: bool = True) -> None:
    """Apply `change` to the manifest dict; `resign` recomputes the checksum (so only the shard checks can fail)."""
    path = folder / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    if resign and isinstance(data, dict) and "checksum" in data:
        data["checksum"] = manifest_checksum(data)
    path.write_text(json.dumps(data))


def one_line_error(folder: Path, match: str) -> str:
    with pytest.raises(SparseInferError, match=match) as info:
        ActivationStore.open(folder)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_good_store_opens(good):
    m = ActivationStore.open(good).manifest
    assert m.complete and m.n_contexts == 64 and m.version == 2


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(dim=5), r"shard-00000\.safetensors: activations has shape .* \(field dim\)"),
        (lambda d: d.update(dim=0), r"field dim: Input should be greater than or equal to 1"),
        (lambda d: d.update(context_length=8), r"shard-00000\.safetensors: activations .*field context_length"),
        (lambda d: d["shards"][2].update(contexts=15), r"shard-00002\.safetensors: activations .*field contexts"),
        (lambda d: d["shards"][1].pop("sha256"), r"field shards\.1\.sha256: Field required"),
        (lambda d: d.update(shards="shard-00000.safetensors"), r"field shards: Input should be a valid list"),
        (lambda d: d.update(dtype="float16"), r"activations has dtype F32, the manifest says float16"),
        (lambda d: d["shards"][0].update(file="../x.safetensors"), r"shards\.0\.file is '\.\./x\.safetensors'"),
        (lambda d: d.update(bos="yes"), r"field bos: Input should be a valid boolean"),
    ],
)
def test_edited_manifest_names_the_field(good, tmp_path, change, match):
    folder = copy(good, tmp_path)
    edit(folder, change)
    one_line_error(folder, match)


def test_edits_without_a_new_checksum_are_caught(good, tmp_path):
    folder = copy(good, tmp_path)
    edit(folder, lambda d: d.update(hook="other"), resign=False)
    one_line_error(folder, "was edited or is damaged")
    edit(folder, lambda d: d.pop("checksum"), resign=False)
    one_line_error(folder, "has no checksum")


def test_not_utf8_and_not_json(good, tmp_path):
    folder = copy(good, tmp_path)
    (folder / MANIFEST).write_bytes(b"\xff\xfe\x00{")
    one_line_error(folder, "is not UTF-8 text")
    (folder / MANIFEST).write_text("[1, 2]")
    one_line_error(folder, "must hold a JSON object, got list")


def test_shard_missing_its_tensor_or_wrong_width(good, tmp_path):
    folder = copy(good, tmp_path)
    for tensors, match in [
        ({"token_ids": torch.zeros(16, 9).long()}, "has no 'activations' tensor"),
        ({"activations": torch.zeros(16, 9, 3), "token_ids": torch.zeros(16, 9).long()}, r"\(field dim\)"),
    ]:
        data = save(tensors)
        (folder / "shard-00001.safetensors").write_bytes(data)
        edit(folder, lambda d, n=len(data): d["shards"][1].update(bytes=n))
        one_line_error(folder, r"shard-00001\.safetensors" + ".*" + match)


def test_incomplete_store_is_refused_with_how_to_resume(good, tmp_path):
    folder = copy(good, tmp_path)
    edit(folder, lambda d: d.update(complete=False, planned_contexts=100))
    one_line_error(folder, r"is incomplete \(64 of 100 contexts.*rerun the same `sparseinfer harvest`")
    assert ActivationStore.open(folder, require_complete=False).manifest.n_contexts == 64


def test_batch_larger_than_the_store_is_refused(good):
    with pytest.raises(SparseInferError, match="exceeds the 512 tokens"):
        next(ActivationStore.open(good).iter_batches(513))


# ---- property-based: random corruptions of the manifest always give SparseInferError ------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), resign=st.booleans(), legacy=st.booleans())
def test_random_manifest_corruptions_give_sparseinfer_error(good, tmp_path_factory, data, resign, legacy):
    folder = Path(shutil.copytree(good, tmp_path_factory.mktemp("h") / "s"))
    manifest = json.loads((folder / MANIFEST).read_text())
    if legacy:  # format 1 has no checksum: corruptions reach the schema and the shard checks
        manifest.pop("checksum")
        manifest["version"] = 1
    paths = [p for p in _paths(manifest) if p]
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["replace", "delete"]))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON)
    if resign and not legacy:
        manifest["checksum"] = manifest_checksum(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    try:
        store = ActivationStore.open(folder, require_complete=False)
        store.verify()
    except SparseInferError as err:
        assert "\n" not in str(err)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_random_manifest_bytes_give_sparseinfer_error(good, tmp_path_factory, raw):
    folder = Path(shutil.copytree(good, tmp_path_factory.mktemp("b") / "s"))
    (folder / MANIFEST).write_bytes(raw)
    with pytest.raises(SparseInferError):
        ActivationStore.open(folder)


# ---- property-based: the shared input validators ------------------------------------------------------------
DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool]


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), max_size=3),
    dtype=st.sampled_from(DTYPES),
    poison=st.sampled_from([None, float("nan"), float("inf"), -float("inf")]),
    cols=st.none() | st.integers(0, 4),
)
def test_check_matrix_accepts_exactly_finite_float_matrices(shape, dtype, poison, cols):
    t = torch.ones(shape, dtype=dtype)
    if poison is not None and t.is_floating_point() and t.numel():
        t.view(-1)[0] = poison
    ok = t.ndim == 2 and t.is_floating_point() and (cols is None or t.shape[1] == cols)
    ok = ok and bool(torch.isfinite(t).all())
    if ok:
        assert check_matrix(t, "x", cols) is t
    else:
        with pytest.raises(SparseInferError):
            check_matrix(t, "x", cols)


@given(value=JSON)
def test_check_matrix_refuses_non_tensors(value):
    with pytest.raises(SparseInferError):
        check_matrix(value, "x")


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=20))
def test_check_finite_raises_iff_a_value_is_not_finite(values):
    t = torch.tensor(values)
    if all(abs(v) < float("inf") for v in values):
        assert check_finite(t, "t") is t
    else:
        with pytest.raises(SparseInferError, match="NaN/Inf"):
            check_finite(t, "t")


@given(k=st.integers(-5, 50), n=st.integers(1, 40))
def test_check_k_accepts_one_to_n(k, n):
    if 1 <= k <= n:
        assert check_k(k, n) == k
    else:
        with pytest.raises(SparseInferError):
            check_k(k, n)


@given(value=st.integers(-5, 5) | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=3) | st.none())
def test_check_count_accepts_only_positive_integers(value):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        assert check_count(value, "n") == value
    else:
        with pytest.raises(SparseInferError):
            check_count(value, "n")


@given(value=st.floats(allow_nan=False), allow_zero=st.booleans())
def test_check_positive(value, allow_zero):
    """Finite positive (or zero, when allowed) numbers pass unchanged; infinities and the rest are refused."""
    if math.isfinite(value) and (value > 0 or (allow_zero and value == 0)):
        assert check_positive(value, "v", allow_zero) == value
    else:
        with pytest.raises(SparseInferError):
            check_positive(value, "v", allow_zero)
