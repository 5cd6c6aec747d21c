"""Language models: loading (local folder, hub id, or the built-in offline default), hooks, text and splicing."""

from sparseinfer.lm.corpora import CORPORA, Document
from sparseinfer.lm.hooks import HookPoint, capture, resolve_hook_points, splice
from sparseinfer.lm.model import BUILTIN_MODELS, DEFAULT_MODEL, describe_model, load_model
from sparseinfer.lm.text import DEFAULT_CORPUS, count_tokens, iter_corpus, iter_documents, tokenise_contexts

__all__ = [
    "BUILTIN_MODELS",
    "CORPORA",
    "DEFAULT_CORPUS",
    "DEFAULT_MODEL",
    "Document",
    "HookPoint",
    "capture",
    "count_tokens",
    "describe_model",
    "iter_corpus",
    "iter_documents",
    "load_model",
    "resolve_hook_points",
    "splice",
    "tokenise_contexts",
]
