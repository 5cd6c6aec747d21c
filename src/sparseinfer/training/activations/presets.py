"""The reference study's language-model settings as training presets (see ../shared/paper-protocol.md).

Every preset: dictionary 22 x d_model, loss = MSE normalised by the batch variance + 1e-4 * mean L1
(`loss="study"`), learned dictionary (`learn_both`) with unit-norm atoms.

The L1 weight (issue 20). The protocol says "MSE normalised by the variance of the batch + 1e-4 * mean L1". We read
"mean L1" as the mean over the batch's tokens of each code's L1 norm, sum_j |s_j|: the L1 of a token is the norm of
its code. `study_loss` averages |s| over all elements (tokens x latents), so the protocol's weight becomes
`L1 * n_latents` there (`l1_weight`). The earlier presets passed 1e-4 to the per-element mean, a weight 22 x d_model
times (12,672 x at d_model 576) smaller: against the MSE it is a per-token Lasso weight of about 1e-4 * var / 22
~ 5e-6, no sparsity pressure at all, and the study-sae dictionary came out dense (L0 ~1,900 of 12,672 after 300
steps, 81% of latents firing on more than 10% of tokens). Our input normalisation (mean squared norm = d_model) also
sets the scale: the normalised MSE does not depend on it, the L1 term grows linearly with the activations' scale, so
on raw activations (as the study used) the same weight bites harder by that scale (the RMS of a coordinate). The
study compares encoders at matched sparsity anyway: pass `target_l0` to adapt the weight from this start.
Measured with this weight (study-sae, SmolLM2-135M-Instruct resid_pre.9, 32k tokens, batch 1,024, CPU,
2026-12-02): L0 6,408 / 5,595 / 2,848 / 1,577 / 1,251 / 1,177 at steps 25 ... 150 (FVU 0.31 at 150): sparser
every step but not yet sparse after 150 steps, so short runs still need `target_l0` (or a larger `l1`).

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
L1 = 1e-4  # the protocol's weight on the mean over tokens of ||s||_1
MLP_WIDTH = 5.5  # hidden width per model dimension: 4,224 / 768


def l1_weight(dim: int) -> float:
    """The protocol's L1 weight in `study_loss`'s per-element units: L1 * n_latents (see the module docstring)."""
    return L1 * EXPANSION * dim


def _common(dim: int) -> dict[str, Any]:
    return {"expansion": EXPANSION, "loss": "study", "l1": l1_weight(dim), "dead_latents": "resample"}


def _sae(dim: int) -> dict[str, Any]:
    return {**_common(dim), "encoder": "relu", "hparams": {}}


def _mlp(dim: int) -> dict[str, Any]:
    return {**_common(dim), "encoder": "mlp", "hparams": {"hidden": [round(MLP_WIDTH * dim)]}}


def _sparse_coding(dim: int) -> dict[str, Any]:
    penalty = l1_weight(dim)  # `study_objective` averages |s| over elements too
    hparams = {"optimiser": "adam", "lr": 0.1, "max_iter": 100, "penalty": penalty, "parameterisation": "exp"}
    return {**_common(dim), "encoder": "gradient", "hparams": hparams}


def _lca(dim: int) -> dict[str, Any]:
    penalty = lasso_lambda(l1_weight(dim), dim, EXPANSION * dim)
    return {**_common(dim), "encoder": "lca", "hparams": {"penalty": penalty, "nonneg": True, "max_iter": 100}}


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
