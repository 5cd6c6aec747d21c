"""sparseinfer: sparse inference and dictionary learning; any encoder with any dictionary, against compute."""

from sparseinfer.codes import SparseCodes
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders import Encoder, IterativeEncoder, available, create, get, register
from sparseinfer.errors import SparseInferError

__version__ = "0.1.0"
__all__ = [
    "Dictionary",
    "Encoder",
    "IterativeEncoder",
    "SparseCodes",
    "SparseInferError",
    "available",
    "create",
    "get",
    "register",
]
