#!/usr/bin/env bash
# Wheels for benchmarks/gpu_suite.sh on a GPU machine without internet that already has torch, transformers,
# triton, safetensors, scikit-learn, pandas, pyarrow, matplotlib, rich, tqdm and typer: this package's wheel and the
# packages of benchmarks/gpu/bundle.txt (eai-sparsify, sae-lens and what they import that such a machine lacks), each
# at the version installed in .venv, installed there without dependencies (so no second torch). Written to
# benchmarks/wheels/ (git-ignored; carried to the machine with the working tree, which allows 64 MiB: the script
# fails above that). Prints the size.
#
#   bash benchmarks/gpu_bundle.sh            # PYVER=3.11 PLATFORM=manylinux_2_28_x86_64 by default
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
W=benchmarks/wheels
LIMIT_MIB=64
PYVER=${PYVER:-$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
PLATFORM=${PLATFORM:-manylinux_2_28_x86_64}
mkdir -p "$W"
rm -f "$W"/*.whl "$W"/*.tar.gz
$PY -m pip wheel --quiet --no-deps -w "$W" .
missing=0
for pkg in $(sed -e 's/#.*//' benchmarks/gpu/bundle.txt); do
  [ "$pkg" = sparseinfer ] && continue
  version=$($PY -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$pkg" 2>/dev/null) || {
    echo "bundle: $pkg is not installed in $PY (make install-all installs it)" >&2; missing=1; continue; }
  $PY -m pip download --quiet --no-deps -d "$W" --only-binary=:all: --python-version "$PYVER" \
    --platform "$PLATFORM" --platform manylinux2014_x86_64 "$pkg==$version" 2>/dev/null \
    || $PY -m pip download --quiet --no-deps -d "$W" "$pkg==$version" 2>/dev/null \
    || { echo "bundle: could not fetch $pkg==$version" >&2; missing=1; }
done
du -sh "$W"
size=$(du -sm "$W" | cut -f1)
if [ "$size" -gt "$LIMIT_MIB" ]; then echo "bundle: $size MiB is over the $LIMIT_MIB MiB that travel" >&2; exit 1; fi
exit $missing
