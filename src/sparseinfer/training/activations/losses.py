"""Training losses for dictionaries on language-model activations, beyond the regime's plain MSE + L1.

- `study_loss`: the reference study's LLM loss, MSE normalised by the batch variance + l1 * mean |s|:
  mean((x - x_hat)^2) / mean((x - mean_batch(x))^2) + l1 * mean |s|.
- `AuxK` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): an auxiliary loss that revives dead
  latents. With e = x - x_hat (the main reconstruction's residual, no gradient through it), the k_aux dead latents
  with the largest pre-activations reconstruct e alone: e_hat = sum over them of relu(pre_j) atom_j (no bias), and
  the loss adds coef * mean((e - e_hat)^2), divided by the same normaliser as the main term. Dead latents get a
  gradient they would never get from the TopK they lose. Gao et al. use k_aux = 512 (d_model / 2 is our default)
  and coef = 1/32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparseinfer.codes import Codes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.flops import training as step
from sparseinfer.flops.amortised import topk_activation
from sparseinfer.flops.primitives import Flops, elementwise
from sparseinfer.training.regimes import l1_penalty, reconstruction_loss
from sparseinfer.validation import check_count, check_positive


def batch_variance(x: Tensor) -> Tensor:
    """Mean over elements of (x - batch mean)^2: the normaliser of the study's loss (a constant for the gradient)."""
    return (x - x.mean(0)).pow(2).mean().clamp_min(1e-12)


def study_loss(x: Tensor, codes: Codes, x_hat: Tensor, l1: float, penalty: Tensor | None = None) -> Tensor:
    """MSE / batch variance + l1 * mean |s| (an encoder's own `penalty` replaces the L1 term when given)."""
    sparsity = penalty if penalty is not None else l1 * l1_penalty(codes)
    return reconstruction_loss(x, x_hat) / batch_variance(x.detach()) + sparsity


def normaliser_flops(batch: int, dim: int) -> Flops:
    """FLOPs `study_loss` adds to the regime's loss: the batch variance (mean: B*M + M; subtract, square, sum:
    3 B M; divide: 1) and the division of the MSE forward and backward (2)."""
    return elementwise(4 * batch * dim + dim + 3)


def pre_activation_module(encoder: Encoder) -> nn.Module:
    """The linear layer whose output is the encoder's pre-activation: `linear` (SAE-style) or an MLP's last layer."""
    if isinstance(getattr(encoder, "linear", None), nn.Linear):
        return encoder.linear
    net = getattr(encoder, "net", None)
    if isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear):
        return net[-1]
    raise SparseInferError(
        f"AuxK needs an encoder with a linear pre-activation (relu, topk, mlp...), not {encoder.name!r}"
    )


class AuxK:
    """The AuxK loss term for one encoder (see the module docstring); reads the pre-activations by a forward hook on
    the encoder's last linear layer, so they cost no second matrix product. Call `close()` when training ends.
    Its gradient reaches every dead latent's pre-activation, so a TopK encoder is switched to the plain (dense)
    backward: `fused_backward` only keeps the k selected entries."""

    def __init__(self, encoder: Encoder, k_aux: int, coef: float = 1 / 32) -> None:
        self.k_aux = check_count(k_aux, "auxk k")
        self.coef = float(check_positive(coef, "auxk coef"))
        if getattr(encoder, "fused_backward", False):
            encoder.fused_backward = False
        self._pre: Tensor | None = None
        self._handle = pre_activation_module(encoder).register_forward_hook(self._keep)
        self.last_k = 0  # latents used on the last call (0: none dead, no term)

    def _keep(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._pre = output

    def loss(self, x: Tensor, x_hat: Tensor, dictionary: Dictionary, dead: Tensor) -> Tensor | None:
        """coef * mean((e - e_hat)^2) over the dead latents (bool mask `dead`), or None when no latent is dead."""
        if self._pre is None:
            raise SparseInferError("AuxK saw no encoder forward pass before its loss")
        n_dead = int(dead.sum())
        self.last_k = min(self.k_aux, n_dead)
        if self.last_k == 0:
            return None
        masked = self._pre.masked_fill(~dead.to(self._pre.device), float("-inf"))
        values, indices = torch.topk(masked, self.last_k, dim=1)
        values = torch.relu(values)
        residual = (x - x_hat).detach()
        e_hat = dictionary.combine(values, indices)
        return self.coef * reconstruction_loss(residual, e_hat)

    def close(self) -> None:
        """Remove the forward hook."""
        self._handle.remove()


def auxk_flops(batch: int, dim: int, n_latents: int, k: int) -> Flops:
    """One AuxK term with k dead latents used: mask (B N), TopK + ReLU and its backward, the residual (B M), the
    sparse decode against the atoms with both gradients (the matrix products), its MSE, the scaling and the
    accumulation of its gradient into the pre-activations' (B N). 0 when k = 0."""
    if k == 0:
        return Flops()
    forward, backward = topk_activation(batch, n_latents, k)
    total = elementwise(batch * n_latents) + forward + backward + elementwise(batch * dim)
    total = total + step.decoder_step(batch, n_latents, dim, True, True, k=k, bias=False)
    return total + step.reconstruction_loss(batch, dim) + elementwise(2 + batch * n_latents)
