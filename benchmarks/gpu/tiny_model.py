"""Write the tiny random Llama of the tests into a folder (the harvest row's model when no real model is installed).

python benchmarks/gpu/tiny_model.py FOLDER
"""

from __future__ import annotations

import sys

from sparseinfer.lm.tiny import build_tiny_model

if __name__ == "__main__":
    print(build_tiny_model(sys.argv[1]))
