"""Downstream loss of a dictionary: the activation at the hook point is replaced by its reconstruction at every
position but BOS; `ce` is the next-token cross-entropy, `ce_clean` without splicing, `ce_zero` with the activation
zeroed, `loss_recovered = (ce_zero - ce) / (ce_zero - ce_clean)`, `kl` = mean over positions of
KL(clean next-token distribution || spliced one), `kl_zero` the same for the zero-ablated model and `kl_score` =
(kl_zero - kl) / kl_zero, SAEBench's normalised KL."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder
from sparseinfer.errors import SparseInferError
from sparseinfer.lm import capture, iter_documents, load_model, resolve_hook_points, tokenise_contexts
from sparseinfer.lm.hooks import HookPoint, splice
from sparseinfer.metrics.fidelity import kl_score
from sparseinfer.validation import check_count


def hook_point(label: str) -> HookPoint:
    module, _, side = label.partition(":")
    return HookPoint(module, side or "output")


def _ce_and_logits(model: torch.nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return ce, logits


Reference = tuple[Tensor, Tensor, Tensor, Tensor]  # CE clean, log-probs clean, CE zero-ablated, log-probs zero


def _reference(model: torch.nn.Module, point: HookPoint, ids: Tensor, zero: Callable[[Tensor], Tensor]) -> Reference:
    ce_clean, clean = _ce_and_logits(model, ids)
    with splice(model, point, zero):
        ce_zero, zeroed = _ce_and_logits(model, ids)
    return ce_clean, clean.log_softmax(-1), ce_zero, zeroed.log_softmax(-1)


@torch.no_grad()
def reference_passes(model: torch.nn.Module, point: HookPoint, token_ids: Tensor, keep_first: bool,
                     batch_size: int = 8) -> list[Reference]:  # fmt: skip
    """The clean and zero-ablated passes of `downstream_metrics` per batch, to share between encoders evaluated on
    the same contexts (held in memory: 2 x contexts x length x vocabulary floats)."""
    start = 1 if keep_first else 0

    def zero(act: Tensor) -> Tensor:
        new = act.clone()
        new[:, start:] = 0
        return new

    device = next(model.parameters()).device
    return [_reference(model, point, ids.to(device), zero) for ids in token_ids.split(batch_size)]


@torch.no_grad()
def downstream_metrics(
    model: torch.nn.Module,
    point: HookPoint,
    token_ids: Tensor,
    encoder: Encoder,
    dictionary: Dictionary,
    scale: float,
    keep_first: bool,
    batch_size: int = 8,
    reference: list[Reference] | None = None,
) -> dict[str, float]:
    """Cross-entropy clean / spliced / zero-ablated, loss recovered, KL(clean || spliced), KL(clean || zero-ablated)
    and the normalised KL score (see module doc). `reference`: the clean and zero-ablated passes over the same
    `token_ids` and `batch_size` (`reference_passes`), computed once for many encoders: a third of the work each."""
    start = 1 if keep_first else 0

    def reconstruct(act: Tensor) -> Tensor:
        body = act[:, start:]
        flat = body.reshape(-1, body.shape[-1]).float() * scale
        x_hat = dictionary.decode(encoder(flat, dictionary)) / scale
        new = act.clone()
        new[:, start:] = x_hat.reshape(body.shape).to(act.dtype)
        return new

    def zero(act: Tensor) -> Tensor:
        new = act.clone()
        new[:, start:] = 0
        return new

    sums = {"ce_clean": 0.0, "ce": 0.0, "ce_zero": 0.0, "kl": 0.0, "kl_zero": 0.0}
    n = 0
    batches = token_ids.split(batch_size)
    if reference is not None and len(reference) != len(batches):
        raise SparseInferError("the reference passes were computed over other token ids or another batch size")
    for i, ids in enumerate(batches):
        ids = ids.to(dictionary.atoms.device)
        ce_clean, logp, ce_zero, logz = reference[i] if reference else _reference(model, point, ids, zero)
        with splice(model, point, reconstruct):
            ce, spliced = _ce_and_logits(model, ids)
        logq = spliced.log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1).mean()
        kl_zero = (logp.exp() * (logp - logz)).sum(-1).mean()
        for key, value in zip(sums, (ce_clean, ce, ce_zero, kl, kl_zero), strict=True):
            sums[key] += float(value) * ids.shape[0]
        n += ids.shape[0]
    out = {k: v / n for k, v in sums.items()}
    gap = out["ce_zero"] - out["ce_clean"]
    out["loss_recovered"] = (out["ce_zero"] - out["ce"]) / gap if gap > 0 else math.nan
    out["kl_score"] = kl_score(max(out["kl"], 0.0), max(out["kl_zero"], 0.0)) if out["kl_zero"] > 0 else math.nan
    return out


@dataclass
class LMContext:
    """A loaded model, one hook point and the token ids of held-out (test split) contexts, BOS first."""

    model: torch.nn.Module
    point: HookPoint
    token_ids: Tensor

    @classmethod
    def load(
        cls, model: str, hook: str, text: str, contexts: int, context_length: int, dim: int | None = None
    ) -> LMContext:
        """Load `model`, resolve `hook` to exactly one point, tokenise `contexts` test contexts of `text`."""
        check_count(contexts, "contexts")
        lm, tokenizer = load_model(model)
        points = resolve_hook_points(lm, hook)
        if len(points) != 1:
            raise SparseInferError(f"hook {hook!r} matches {len(points)} points; an SAE needs exactly one")
        docs = iter_documents(text, split="test", seed=0)  # held-out documents, shuffled and mixed like a harvest
        rows = list(tokenise_contexts(docs, tokenizer, context_length, max_contexts=contexts, mix=64, seed=0))
        if not rows:
            raise SparseInferError(f"text {text!r} gave no test context of {context_length} tokens")
        ctx = cls(lm, points[0], torch.stack(rows))
        if dim is not None:
            width = ctx.activations(batch_size=1, limit=1).shape[-1]
            if width != dim:
                raise SparseInferError(f"hook {hook!r} has width {width} but the SAE's d_in is {dim}")
        return ctx

    @torch.no_grad()
    def activations(self, batch_size: int = 8, limit: int | None = None) -> Tensor:
        """The activations at the hook point on the contexts, BOS position dropped: (tokens, dim)."""
        ids = self.token_ids if limit is None else self.token_ids[:limit]
        out = [capture(self.model, chunk, [self.point])[self.point][:, 1:] for chunk in ids.split(batch_size)]
        acts = torch.cat(out)
        return acts.reshape(-1, acts.shape[-1]).float()

    def downstream(self, encoder: Encoder, dictionary: Dictionary, scale: float = 1.0) -> dict[str, float]:
        """CE, loss recovered and KL of splicing `encoder`'s reconstruction in at every position but BOS."""
        return downstream_metrics(self.model, self.point, self.token_ids, encoder, dictionary, scale, keep_first=True)
