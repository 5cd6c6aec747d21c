"""Logit-lens tokens: the vocabulary tokens a latent's decoder atom most directly promotes as the next token.

Choice: logits = (atom * g) @ W_U.T, where W_U (vocab, dim) is the model's output embedding and g the final norm's
elementwise scale (RMSNorm as in Llama; for a LayerNorm the atom is also mean-centred first, as the norm would do).
The norm's data-dependent division by the RMS is a positive per-token scalar, so it does not change the ranking and
is left out; the norm's bias and the output bias are the same for every latent and are left out too. Atoms live in
the (possibly rescaled) activation space of the store's hook; a positive rescaling does not change the ranking.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sparseinfer.errors import SparseInferError


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied before the unembedding (`model.norm`, `final_layernorm`, `ln_f`), or None if none is found."""
    base = getattr(model, "base_model", model)
    for name in ("norm", "final_layernorm", "ln_f"):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def promoted_logits(atoms: Tensor, model: nn.Module) -> Tensor:
    """(n_latents, vocab) direct logit effect of each atom (row of `atoms`) through the final norm's scale and W_U."""
    head = model.get_output_embeddings()
    if head is None:
        raise SparseInferError("the model has no output embedding (unembedding) to read tokens from")
    w_u = head.weight.detach().to(torch.float64)
    if atoms.ndim != 2 or atoms.shape[1] != w_u.shape[1]:
        raise SparseInferError(f"atoms must have shape (n_latents, {w_u.shape[1]}), got {tuple(atoms.shape)}")
    x = atoms.detach().to(device=w_u.device, dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise SparseInferError("atoms contain NaN or Inf")
    norm = final_norm(model)
    if isinstance(norm, nn.LayerNorm):
        x = x - x.mean(dim=1, keepdim=True)
    scale = getattr(norm, "weight", None) if norm is not None else None
    if isinstance(scale, Tensor) and scale.shape == (x.shape[1],):
        x = x * scale.detach().to(x)
    return x @ w_u.T


def logit_lens_tokens(atoms: Tensor, model: nn.Module, tokenizer: Any, k: int = 10) -> list[list[str]]:
    """For each atom, its `k` most promoted tokens as decoded strings, strongest first."""
    if k < 1:
        raise SparseInferError(f"k must be a positive number of tokens, got {k}")
    logits = promoted_logits(atoms, model)
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return [[tokenizer.decode([int(t)]) for t in row] for row in top]
