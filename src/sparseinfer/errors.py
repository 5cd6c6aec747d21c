"""The one exception type users see: a clear, one-line statement of what is wrong with their input."""


class SparseInferError(ValueError):
    """Bad input (shape, dtype, NaN, unknown name, missing or corrupt file). The CLI exits with code 2."""
