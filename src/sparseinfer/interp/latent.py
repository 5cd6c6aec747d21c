"""One latent through the scorers: explain it (unless an explanation is given), then detection, fuzzing and the
embedding score. Shared by the pipeline and its controls so that both are measured the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient
from sparseinfer.interp.embedding import Embedder, embedding_score
from sparseinfer.interp.examples import LatentExamples
from sparseinfer.interp.explain import explain
from sparseinfer.interp.score import detection, fuzzing

METRICS = ("detection_bacc", "detection_f1", "detection_auroc", "fuzzing_bacc", "fuzzing_f1", "fuzzing_auroc",
           "embedding_auroc")  # fmt: skip


@dataclass(frozen=True)
class InterpretConfig:
    """How many latents and examples, the example windows, which scorers, and the controls."""

    n_latents: int = 20
    n_top: int = 20
    n_explain: int = 10
    n_samples: int = 10
    n_negatives: int = 10
    left: int = 30
    right: int = 5
    min_count: int = 20
    fuzz: bool = True
    embedding: bool = True
    logit_tokens: int = 10
    seed: int = 0
    controls: bool = False
    n_planted: int = 24
    shuffled_fuzz: bool = False
    n_fuzz: int | None = None  # held-out windows fuzzed (2 questions each); None: n_samples, as detection's positives


def score_latent(client: ChatClient, record: LatentExamples, config: InterpretConfig, embed: Embedder | None = None,
                 explanation: str | None = None, logit_tokens: list[str] | None = None,
                 fuzz: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """A row: the explanation (asked for unless given), `<scorer>_{bacc,f1,auroc}`, `embedding_auroc`, the
    number of unparsed answers and the seconds it took. A scorer without enough windows gives NaN, not a zero."""
    start = time.perf_counter()
    if explanation is None:
        explanation = explain(client, record, config.n_explain, logit_tokens=logit_tokens)
    row: dict[str, Any] = {"latent": record.latent, "frequency": record.frequency, "unparsed": 0,
                           "max_activation": record.max_activation, "explanation": explanation}  # fmt: skip
    fuzz = config.fuzz if fuzz is None else fuzz
    n_fuzz = config.n_samples if config.n_fuzz is None else config.n_fuzz
    scorers = [("detection", detection, config.n_samples)] + ([("fuzzing", fuzzing, n_fuzz)] if fuzz else [])
    for name, scorer, n_positives in scorers:
        try:
            score = scorer(client, explanation, record, config.n_explain, n_positives)
        except SparseInferError:  # too few held-out or negative windows
            row |= {f"{name}_{m}": float("nan") for m in ("bacc", "f1", "auroc", "bacc_at_half")}
            continue
        row |= {f"{name}_bacc": score.balanced_accuracy, f"{name}_f1": score.f1, f"{name}_auroc": score.auroc,
                f"{name}_bacc_at_half": score.balanced_accuracy_at_half}  # fmt: skip
        row["unparsed"] += score.unparsed
    if embed is not None:
        try:
            row["embedding_auroc"] = embedding_score(embed, explanation, record, config.n_explain, config.n_samples)
        except SparseInferError:  # no held-out windows, or an empty explanation
            row["embedding_auroc"] = float("nan")
    row["seconds"] = time.perf_counter() - start
    return row
