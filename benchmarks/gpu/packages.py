"""Which of the suite's packages import, at which version, and whether CUDA and triton are there (packages.json).

python benchmarks/gpu/packages.py
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import json

MODULES = {"sparseinfer": "sparseinfer", "torch": "torch", "triton": "triton", "sparsify": "eai-sparsify",
           "sae_lens": "sae-lens", "transformers": "transformers"}  # fmt: skip


def probe(module: str, distribution: str) -> dict[str, str | None]:
    """The distribution's version and the module's file, or the one-line reason it does not import."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # sparsify prints on import: stdout is the JSON here
            path = getattr(importlib.import_module(module), "__file__", None)
        return {"version": importlib.metadata.version(distribution), "file": path, "error": None}
    except Exception as error:  # any import failure is a finding here, not a crash
        return {"version": None, "file": None, "error": f"{type(error).__name__}: {error}"[:300]}


def main() -> None:
    found = {module: probe(module, dist) for module, dist in MODULES.items()}
    import torch

    found["cuda"] = {"available": torch.cuda.is_available(), "version": torch.version.cuda}
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
