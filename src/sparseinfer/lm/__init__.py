"""Language models: loading (local folder, hub id, or the built-in offline default), hooks, text and splicing."""

from sparseinfer.lm.hooks import HookPoint, capture, resolve_hook_points, splice
from sparseinfer.lm.model import DEFAULT_MODEL, load_model
from sparseinfer.lm.text import DEFAULT_CORPUS, iter_documents, tokenise_contexts

__all__ = [
    "DEFAULT_CORPUS",
    "DEFAULT_MODEL",
    "HookPoint",
    "capture",
    "iter_documents",
    "load_model",
    "resolve_hook_points",
    "splice",
    "tokenise_contexts",
]
