"""FLOPs of per-sample gradient optimisation of codes (`gradient`, the refiner of `ito`) and of `lista`.

`matmul` is exactly what torch's FlopCounterMode counts; `elementwise` estimates the rest (activations, losses,
optimiser updates) at one FLOP per arithmetic operation per element.
"""

from __future__ import annotations

from sparseinfer.flops.primitives import Flops, elementwise, matmul

# Elementwise operations per code entry of one optimiser update (Adam: two moments, bias corrections, sqrt, divide).
_OPTIMISER_OPS = {"adam": 12, "sgd": 2}
# Forward + backward operations per entry of the map from parameters u to codes s.
_PARAMETERISATION_OPS = {"exp": 2, "relu": 2, "none": 0}


def gradient(
    batch: int,
    dim: int,
    n_latents: int,
    steps: int,
    optimiser: str = "adam",
    parameterisation: str = "exp",
    warm_start: bool = False,
) -> Flops:
    """`steps` optimiser steps on codes: decode s D (2 B N M) and its backward to s (2 B M N) each step.

    The dictionary is frozen, so no gradient for it is formed. Elementwise per step: the parameterisation, the
    residual, the squared error and |s| means and their gradients, and the optimiser update.
    """
    per_entry = _PARAMETERISATION_OPS[parameterisation] + 4 + _OPTIMISER_OPS[optimiser]
    per_step = (
        matmul(batch, n_latents, dim) + matmul(batch, dim, n_latents) + elementwise(batch * dim, 5)
    ) + elementwise(batch * n_latents, per_entry)
    start = elementwise(batch * n_latents, 2) if warm_start else elementwise(batch * n_latents)
    return start + per_step * steps


def lista_inference(batch: int, dim: int, n_latents: int, n_layers: int, tied: bool, nonneg: bool) -> Flops:
    """LISTA: b = x W^T (once if tied, per layer otherwise), then per layer after the first s S^T + b, threshold."""
    flops = matmul(batch, dim, n_latents) * (1 if tied else n_layers)
    flops = flops + (matmul(batch, n_latents, n_latents) + elementwise(batch * n_latents)) * (n_layers - 1)
    return flops + _lista_thresholds(batch, n_latents, n_layers, nonneg)


def lista_training(batch: int, dim: int, n_latents: int, n_layers: int, tied: bool, nonneg: bool) -> Flops:
    """Forward + backward of LISTA for one training step (x needs no gradient).

    Backward: the gradient of each W is grad_b^T x (2 B M N); each product s S^T needs the gradient of S,
    s^T grad (2 B N^2), and of s, grad S (2 B N^2). Elementwise work of the backward is taken as twice the forward's.
    """
    forward = lista_inference(batch, dim, n_latents, n_layers, tied, nonneg)
    backward = matmul(n_latents, batch, dim) * (1 if tied else n_layers)
    backward = backward + (matmul(n_latents, batch, n_latents) + matmul(batch, n_latents, n_latents)) * (n_layers - 1)
    return forward + backward + Flops(elementwise=2 * forward.elementwise)


def _lista_thresholds(batch: int, n_latents: int, n_layers: int, nonneg: bool) -> Flops:
    """Per layer: softplus of the threshold, then one-sided (2 ops) or two-sided (4 ops) shrinkage per entry."""
    return elementwise(batch * n_latents, 2 if nonneg else 4) * n_layers + elementwise(2 * n_layers)
