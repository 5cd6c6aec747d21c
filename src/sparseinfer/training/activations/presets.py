"""The reference study's language-model settings as training presets (see ../shared/paper-protocol.md).

Every preset: dictionary 22 x d_model, loss = MSE normalised by the batch variance + 1e-4 * mean |s|
(`loss="study"`), learned dictionary (`learn_both`) with unit-norm atoms.

- `study-sae`: the SAE, encoder with bias and ReLU, decoder with bias; dead latents resampled.
- `study-mlp`: MLP encoder d_model -> 5.5 d_model -> 22 d_model (768 -> 4,224 -> 16,896 for GPT-2 small).
- `study-sparse-coding`: no encoder; per batch, 100 Adam steps on exp-parameterised codes (u = -10 cold start,
  lr 0.1: our choice, so that u can reach O(1) within 100 steps; the protocol does not give it) against the
  current dictionary, which then takes its gradient step.
- `study-lca`: LCA codes (non-negative, 100 iterations) against the current dictionary, with the Lasso weight
  that has the same minimisers as the study's per-element objective (`lasso_lambda`).

Full size on GPT-2 small's layer-9 residual stream, as in the study (a GPU is advisable):

    sparseinfer harvest store --model gpt2 --hook resid_pre.9 --text hf:openwebtext --contexts 100000
    sparseinfer train runs/sae --store store --preset study-sae --steps 50000 --batch-size 4096 --device cuda
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparseinfer.encoders.gradient import lasso_lambda
from sparseinfer.errors import SparseInferError

EXPANSION = 22
L1 = 1e-4
MLP_WIDTH = 5.5  # hidden width per model dimension: 4,224 / 768


def _common() -> dict[str, Any]:
    return {"expansion": EXPANSION, "loss": "study", "l1": L1, "dead_latents": "resample"}


def _sae(dim: int) -> dict[str, Any]:
    return {**_common(), "encoder": "relu", "hparams": {}}


def _mlp(dim: int) -> dict[str, Any]:
    return {**_common(), "encoder": "mlp", "hparams": {"hidden": [round(MLP_WIDTH * dim)]}}


def _sparse_coding(dim: int) -> dict[str, Any]:
    hparams = {"optimiser": "adam", "lr": 0.1, "max_iter": 100, "penalty": L1, "parameterisation": "exp"}
    return {**_common(), "encoder": "gradient", "hparams": hparams}


def _lca(dim: int) -> dict[str, Any]:
    penalty = lasso_lambda(L1, dim, EXPANSION * dim)
    return {**_common(), "encoder": "lca", "hparams": {"penalty": penalty, "nonneg": True, "max_iter": 100}}


PRESETS: dict[str, Callable[[int], dict[str, Any]]] = {
    "study-sae": _sae,
    "study-mlp": _mlp,
    "study-sparse-coding": _sparse_coding,
    "study-lca": _lca,
}


def preset_settings(name: str, dim: int) -> dict[str, Any]:
    """The training settings of preset `name` for activations of width `dim`."""
    if name not in PRESETS:
        raise SparseInferError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name](dim)
