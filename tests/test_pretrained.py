"""Refining a pretrained SAE's codes: matched L0, FVU no worse than the SAE's own on its support, the CLI path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseinfer import Dictionary, SparseInferError, create
from sparseinfer.cli import app
from sparseinfer.io import load_sae, save_saelens, save_sparsify
from sparseinfer.pretrained import compare, refine

N, M, K = 24, 10, 3


@pytest.fixture
def sae_folder(tmp_path):
    torch.manual_seed(0)
    dictionary = Dictionary.random(N, M, seed=0, bias=True)
    encoder = create("topk", dim=M, n_latents=N, k=K)
    with torch.no_grad():  # a rough encoder: the transposed dictionary plus noise
        encoder.linear.weight.copy_(dictionary.atoms + 0.3 * torch.randn(N, M))
    save_sparsify(encoder, dictionary, tmp_path / "sparsify")
    save_saelens(encoder, dictionary, tmp_path / "saelens")
    return tmp_path


def _signals(n: int = 200) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    truth = Dictionary.random(N, M, seed=0)
    codes = torch.zeros(n, N).scatter(
        1, torch.randint(0, N, (n, K), generator=gen), torch.rand(n, K, generator=gen) + 0.5
    )
    return codes @ truth.atoms.detach()


def test_refiners_match_l0_and_improve_fvu(sae_folder) -> None:
    x = _signals(100)
    sae = load_sae(sae_folder / "sparsify")
    rows = {r.method: r for r in compare(sae, x, ["ito", "omp", "fista"])}
    own = rows["sae"]
    assert 1 < own.l0 <= K
    assert rows["ito"].l0 <= own.l0 and rows["ito"].fvu <= own.fvu + 1e-9  # least squares on the same support
    assert rows["omp"].l0 <= round(own.l0)
    assert abs(rows["fista"].l0 - own.l0) <= 0.5  # bisection matched the mean L0
    for name in ("ito", "omp", "fista"):
        assert rows[name].fvu < own.fvu and rows[name].extra_flops > 0


def test_ito_is_exact_nnls_on_support(sae_folder) -> None:
    """Reference: scipy's NNLS per sample on the SAE's own support."""
    from scipy.optimize import nnls

    x = _signals(20).double()
    sae = load_sae(sae_folder / "saelens")
    sae.encoder.double(), sae.dictionary.double()
    own = sae.encode(x)
    codes, _ = refine(sae, x, "ito")
    atoms, centred = sae.dictionary.atoms.detach().numpy(), sae.dictionary.centre(x).detach().numpy()
    for i in range(x.shape[0]):
        support = own[i].nonzero().flatten().numpy()
        ref, _ = nnls(atoms[support].T, centred[i])
        obj = np.sum((centred[i] - codes[i].numpy() @ atoms) ** 2)
        assert obj <= np.sum((centred[i] - ref @ atoms[support]) ** 2) + 1e-9


def test_bad_refiner(sae_folder) -> None:
    with pytest.raises(SparseInferError, match="unknown refiner"):
        refine(load_sae(sae_folder / "saelens"), _signals(5), "nope")


def test_cli_infer_with_sae(sae_folder, tmp_path) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    save_file({"x": _signals(50)}, str(tmp_path / "acts.safetensors"))
    args = ["infer", "--sae", str(sae_folder / "saelens"), "--signals", str(tmp_path / "acts.safetensors")]
    result = CliRunner().invoke(app, [*args, "--encoder", "ito"])
    assert result.exit_code == 0, result.output
    assert "ito" in result.output and "FVU" in result.output
    bad = CliRunner().invoke(app, [*args, "--encoder", "relu"])
    assert isinstance(bad.exception, SparseInferError)
