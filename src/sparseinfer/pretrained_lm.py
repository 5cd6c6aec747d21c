"""Downstream loss of a pretrained SAE's codes (its own or refined): splice each reconstruction into the language
model at the SAE's hook point and measure next-token CE, loss recovered and KL (see `activations_evaluate`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from sparseinfer.activations_evaluate import downstream_metrics
from sparseinfer.errors import SparseInferError
from sparseinfer.lm import capture, iter_documents, load_model, resolve_hook_points, tokenise_contexts
from sparseinfer.lm.hooks import HookPoint
from sparseinfer.pretrained import RefinedEncoder, RefineResult
from sparseinfer.validation import check_count


@dataclass
class DownstreamResult(RefineResult):
    """A comparison row plus the spliced model's losses (clean and zero-ablated CE are the same for every row)."""

    ce: float = 0.0
    ce_clean: float = 0.0
    ce_zero: float = 0.0
    loss_recovered: float = 0.0
    kl: float = 0.0


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
        docs = iter_documents(text, split="test")
        rows = list(tokenise_contexts(docs, tokenizer, context_length, max_contexts=contexts))
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

    def downstream(self, refined: RefinedEncoder, row: RefineResult) -> DownstreamResult:
        """`row` with CE, loss recovered and KL of splicing `refined`'s reconstruction in at every position but BOS."""
        metrics: dict[str, Any] = downstream_metrics(
            self.model, self.point, self.token_ids, refined, refined.sae.dictionary, scale=1.0, keep_first=True
        )
        return DownstreamResult(**asdict(row), **{k: float(v) for k, v in metrics.items()})
