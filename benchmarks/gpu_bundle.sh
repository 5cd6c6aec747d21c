#!/usr/bin/env bash
# Wheels for benchmarks/gpu_suite.sh on a GPU machine without internet that already has torch, transformers,
# triton, safetensors, scikit-learn, pandas, pyarrow, matplotlib, rich, tqdm and typer: this package's wheel, and
# eai-sparsify, sae-lens and what they import that such a machine lacks, each without its own dependencies (so no
# second torch). Written to benchmarks/wheels/ (git-ignored, carried with the working tree); prints the size.
#
#   bash benchmarks/gpu_bundle.sh            # PYVER=3.11 PLATFORM=manylinux2014_x86_64 by default
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
W=benchmarks/wheels
PYVER=${PYVER:-$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
PLATFORM=${PLATFORM:-manylinux2014_x86_64}
mkdir -p "$W"
$PY -m pip wheel --quiet --no-deps -w "$W" .
OURS="pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml numba llvmlite"
SPARSIFY="eai-sparsify accelerate psutil datasets dill multiprocess xxhash fsspec aiohttp aiosignal frozenlist multidict
  yarl propcache attrs aiohappyeyeballs schedulefree einops natsort simple-parsing docstring-parser"
SAELENS="sae-lens transformer-lens jaxtyping wadler-lindig fancy-einsum beartype better-abc typeguard babe nltk plotly
  plotly-express narwhals python-dotenv tenacity"
for pkg in $OURS $SPARSIFY $SAELENS; do
  $PY -m pip download --quiet --no-deps -c constraints.txt -d "$W" --only-binary=:all: \
    --python-version "$PYVER" --platform "$PLATFORM" "$pkg" \
    || $PY -m pip download --quiet --no-deps -c constraints.txt -d "$W" "$pkg" \
    || echo "bundle: could not fetch $pkg" >&2
done
du -sh "$W"
