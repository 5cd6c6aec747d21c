"""`Dictionary`: decoding (dense and sparse codes) against a float64 numpy reference, unit norms, seeded
construction, save/load round trip, and clear errors for missing or corrupt files and bad atoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseinfer import Dictionary, SparseCodes, SparseInferError
from sparseinfer.dictionary import CONFIG_FILE, WEIGHTS_FILE

N, M, B, K = 16, 8, 9, 3


@pytest.fixture
def dic() -> Dictionary:
    return Dictionary.random(N, M, seed=0, bias=False, dtype=torch.float64)


def sparse_codes(seed: int = 1) -> SparseCodes:
    gen = torch.Generator().manual_seed(seed)
    indices = torch.rand(B, N, generator=gen).argsort(1)[:, :K]
    return SparseCodes(torch.randn(B, K, generator=gen, dtype=torch.float64), indices, N)


@pytest.mark.parametrize("with_bias", [False, True])
def test_decode_dense_and_sparse_agree_with_reference(with_bias: bool) -> None:
    bias = torch.linspace(-1, 1, M, dtype=torch.float64) if with_bias else None
    dic = Dictionary(torch.randn(N, M, generator=torch.Generator().manual_seed(0), dtype=torch.float64), bias=bias)
    codes = sparse_codes()
    dense = codes.to_dense()
    assert int((dense != 0).sum()) == B * K
    ref = dense.numpy() @ dic.atoms.detach().numpy() + (0 if bias is None else bias.numpy())
    np.testing.assert_allclose(dic.decode(dense).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dic.decode(codes).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dic(dense).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    if bias is not None:
        x = torch.randn(B, M, dtype=torch.float64)
        np.testing.assert_allclose(dic.centre(x).detach().numpy(), x.numpy() - bias.numpy())


def test_sparse_decode_gradients_match_dense(dic: Dictionary) -> None:
    codes = sparse_codes()
    values = codes.values.clone().requires_grad_(True)
    dic.decode(SparseCodes(values, codes.indices, N)).pow(2).sum().backward()
    grad_sparse_atoms, grad_values = dic.atoms.grad.clone(), values.grad.clone()
    dic.zero_grad()
    dense = codes.to_dense().requires_grad_(True)
    dic.decode(dense).pow(2).sum().backward()
    np.testing.assert_allclose(grad_sparse_atoms.numpy(), dic.atoms.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_values.numpy(), dense.grad.gather(1, codes.indices).numpy(), rtol=1e-12)


def test_low_precision_codes_decode_under_autocast_and_are_refused_outside() -> None:
    dic = Dictionary.random(N, M, seed=0)
    codes = sparse_codes()
    half = SparseCodes(codes.values.to(torch.bfloat16), codes.indices, N)
    reference = dic.decode(SparseCodes(half.values.float(), codes.indices, N)).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sparse = dic.decode(half).detach()
        dense = dic.decode(half.to_dense()).detach()
    assert sparse.dtype == torch.float32
    assert torch.allclose(sparse, reference, atol=1e-6)
    assert torch.allclose(dense.float(), reference, atol=0.05)  # a bf16 matrix product
    with pytest.raises(SparseInferError, match="dtype"):
        dic.decode(half)


def test_decode_rejects_wrong_code_shapes(dic: Dictionary) -> None:
    with pytest.raises(SparseInferError, match="shape"):
        dic.decode(torch.zeros(B, N + 1, dtype=torch.float64))
    with pytest.raises(SparseInferError, match="latents"):
        dic.decode(SparseCodes(torch.zeros(B, K), torch.zeros(B, K, dtype=torch.long), N + 1))


def test_unit_norm_after_construction_and_renormalise() -> None:
    raw = torch.randn(N, M, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5
    dic = Dictionary(raw)
    np.testing.assert_allclose(dic.atoms.detach().norm(dim=1).numpy(), 1.0, rtol=1e-14)
    # directions are kept
    np.testing.assert_allclose(dic.atoms.detach().numpy(), (raw / raw.norm(dim=1, keepdim=True)).numpy(), rtol=1e-14)
    with torch.no_grad():
        dic.atoms.mul_(torch.linspace(0.1, 10, N, dtype=torch.float64)[:, None])
    assert dic.renormalise_() is dic
    np.testing.assert_allclose(dic.atoms.detach().norm(dim=1).numpy(), 1.0, rtol=1e-14)
    np.testing.assert_allclose(dic.atoms.detach().numpy(), (raw / raw.norm(dim=1, keepdim=True)).numpy(), rtol=1e-13)
    kept = Dictionary(raw, normalise=False)
    np.testing.assert_array_equal(kept.atoms.detach().numpy(), raw.numpy())


def test_random_reproducible_by_seed() -> None:
    a = Dictionary.random(N, M, seed=7)
    b = Dictionary.random(N, M, seed=7)
    c = Dictionary.random(N, M, seed=8)
    assert torch.equal(a.atoms, b.atoms)
    assert not torch.allclose(a.atoms, c.atoms)
    assert (a.n_latents, a.dim, a.atoms.dtype) == (N, M, torch.float32)
    # the protocol's dictionary: standard Gaussian rows scaled to unit norm
    gauss = torch.randn(N, M, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    np.testing.assert_allclose(a.atoms.detach().numpy(), (gauss / gauss.norm(dim=1, keepdim=True)).numpy(), rtol=1e-6)
    assert Dictionary.random(N, M, seed=7, bias=True).bias is not None


def test_gram_and_lipschitz_match_reference(dic: Dictionary) -> None:
    atoms = dic.atoms.detach().numpy()
    np.testing.assert_allclose(dic.gram().detach().numpy(), atoms @ atoms.T, rtol=1e-12)
    assert dic.lipschitz() == pytest.approx(np.linalg.eigvalsh(atoms @ atoms.T).max(), rel=1e-10)


@pytest.mark.parametrize("with_bias", [False, True])
def test_save_load_roundtrip(tmp_path: Path, with_bias: bool) -> None:
    dic = Dictionary.random(N, M, seed=2, bias=with_bias)
    if with_bias:
        with torch.no_grad():
            dic.bias.copy_(torch.arange(M, dtype=torch.float32))
    folder = dic.save(tmp_path / "dic")
    assert (folder / WEIGHTS_FILE).exists()
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    assert cfg["d_sae"] == N and cfg["d_in"] == M and cfg["dtype"] == "float32"
    for source in (folder, folder / WEIGHTS_FILE):
        back = Dictionary.load(source)
        assert torch.equal(back.atoms, dic.atoms)
        assert (back.bias is None) == (not with_bias)
        if with_bias:
            assert torch.equal(back.bias, dic.bias)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SparseInferError, match="no dictionary file"):
        Dictionary.load(tmp_path / "nowhere")
    with pytest.raises(SparseInferError, match="no dictionary file"):
        Dictionary.load(tmp_path)  # an existing folder without the weights


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_load_corrupt_file(tmp_path: Path, damage: str) -> None:
    path = Dictionary.random(N, M, seed=0).save(tmp_path) / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x13\x37" * 50, "empty": b""}[damage])
    with pytest.raises(SparseInferError, match="corrupt"):
        Dictionary.load(tmp_path)


def test_load_file_without_atoms(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"W_enc": torch.zeros(M, N)}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(SparseInferError, match="W_dec"):
        Dictionary.load(tmp_path)


def test_load_rejects_nan_atoms_on_disk(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    atoms = torch.randn(N, M)
    atoms[3, 1] = float("nan")
    save_file({"W_dec": atoms}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(SparseInferError, match="NaN"):
        Dictionary.load(tmp_path)


def test_bad_atoms_and_bias() -> None:
    atoms = torch.randn(N, M)
    zero = atoms.clone()
    zero[5] = 0
    with pytest.raises(SparseInferError, match=r"zero atom.*\[5\]"):
        Dictionary(zero)
    nan = atoms.clone()
    nan[2, 2] = float("nan")
    with pytest.raises(SparseInferError, match="NaN"):
        Dictionary(nan)
    inf = atoms.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(SparseInferError, match="NaN/Inf"):
        Dictionary(inf)
    with pytest.raises(SparseInferError, match=r"bias must have shape \(8,\)"):
        Dictionary(atoms, bias=torch.zeros(M + 1))
    bad_bias = torch.zeros(M)
    bad_bias[0] = float("nan")
    with pytest.raises(SparseInferError, match="bias"):
        Dictionary(atoms, bias=bad_bias)
    with pytest.raises(SparseInferError, match="2-D"):
        Dictionary(torch.randn(M))
    with pytest.raises(SparseInferError, match="floating"):
        Dictionary(torch.ones(N, M, dtype=torch.long))
    with pytest.raises(SparseInferError, match="n_latents >= 1"):
        Dictionary.random(0, M)
