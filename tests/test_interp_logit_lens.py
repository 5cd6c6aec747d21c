"""Logit-lens tokens against a direct computation through the model's own final norm and unembedding (tiny random
Llama with a random norm scale; a LayerNorm stub for the centring branch), and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.logit_lens import final_norm, logit_lens_tokens, promoted_logits
from sparseinfer.lm import load_model
from sparseinfer.lm.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tokenizer = load_model(str(build_tiny_model(tmp_path_factory.mktemp("lens") / "model")))
    with torch.no_grad():  # a non-trivial norm scale, so that leaving it out would change the answer
        model.model.norm.weight.copy_(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    return model, tokenizer


def test_logit_lens_matches_the_models_own_norm_and_head(tiny):
    model, tokenizer = tiny
    atoms = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    assert final_norm(model) is model.model.norm
    with torch.no_grad():  # the real path: RMSNorm (with its 1/rms) then lm_head
        reference = model.lm_head(model.model.norm(atoms)).double()
    ours = promoted_logits(atoms, model)
    ratio = reference / ours  # the norm's 1/rms: one positive constant per atom
    assert (ratio > 0).all()
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=0)
    tokens = logit_lens_tokens(atoms, model, tokenizer, k=5)
    expected = [[tokenizer.decode([int(t)]) for t in row] for row in reference.topk(5, dim=1).indices]
    assert tokens == expected and len(tokens) == 6 and all(len(t) == 5 for t in tokens)
    plain = atoms.double() @ model.lm_head.weight.double().T  # without the norm scale the ranking differs
    assert not torch.equal(plain.topk(5, dim=1).indices, reference.topk(5, dim=1).indices)


def test_layernorm_is_centred_and_scaled():
    class Stub(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.ln_f = nn.LayerNorm(8)
            nn.init.normal_(self.ln_f.weight)
            nn.init.normal_(self.ln_f.bias)
            self.head = nn.Linear(8, 20, bias=False)

        def get_output_embeddings(self) -> nn.Module:
            return self.head

    stub = Stub()
    atoms = torch.randn(3, 8)
    with torch.no_grad():  # the bias's contribution is the same for every atom and is left out
        reference = (stub.head(stub.ln_f(atoms)) - stub.head(stub.ln_f.bias)).double()
    ratio = reference / promoted_logits(atoms, stub)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=0)


def test_bad_input(tiny):
    model, tokenizer = tiny
    with pytest.raises(SparseInferError, match="shape"):
        promoted_logits(torch.randn(2, 31), model)
    with pytest.raises(SparseInferError, match="NaN"):
        promoted_logits(torch.full((2, 32), float("nan")), model)
    with pytest.raises(SparseInferError, match="positive"):
        logit_lens_tokens(torch.randn(2, 32), model, tokenizer, k=0)
