#!/usr/bin/env bash
# The memory layer's GPU checks in one prepared run (< 8 minutes, nothing downloaded there):
# the CUDA tests, scripts/bench_memory.py at the issue's shapes in fp32 and bf16 (memzoo sparse and
# dense beside lucidrains' PKM), and two short trainer=gpu runs. Every output goes to one folder.
#
#   here:  bash scripts/gpu_wheels.sh                       # memzoo + missing packages as wheels in .whl/
#   there: bash scripts/gpu_check.sh "$OUT"                 # with .whl carried
set -uo pipefail
OUT=$(realpath -m "${1:-gpu_check_out}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$REPO"/.whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# run outside the source tree, so that the installed wheel (not the sources) is what is tested
rm -rf /tmp/memzoo_tests && cp -r "$REPO/tests" /tmp/memzoo_tests && cd /tmp
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, zoo; print('torch', torch.__version__, 'triton', triton.__version__, 'memzoo', zoo.__file__)"

echo "== CUDA tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider /tmp/memzoo_tests/memory/test_memory_triton.py \
  /tmp/memzoo_tests/memory/test_memory_precision.py /tmp/memzoo_tests/memory/test_memory_layer.py \
  /tmp/memzoo_tests/memory/test_memory_optim.py /tmp/memzoo_tests/mixers/test_mamba2.py /tmp/memzoo_tests/mixers/test_mamba.py

echo "== memory benchmark (the issue's shapes: 16384 tokens, d_model 1024, 4 heads, top-32, k_dim 512)"
for dtype in fp32 bf16; do
  timeout 150 python3 "$REPO/scripts/bench_memory.py" --device cuda --dtype "$dtype" --tokens 16384 \
    --d-model 1024 --heads 4 --knn 32 --k-dim 512 --log2-slots 16 20 22 --kinds read --steps 5 --warmup 2 \
    --out "$OUT/bench_memory_cuda_$dtype.json" | tail -n 12
done

echo "== trainer=gpu runs"
timeout 60 memzoo-train trainer=gpu memory=pkm hydra.run.dir=/tmp/run_pkm trainer.enable_progress_bar=false | tail -n 3
timeout 90 memzoo-train trainer=gpu backbone=hybrid memory=pkm_large trainer.max_steps=200 \
  trainer.val_check_interval=100 hydra.run.dir=/tmp/run_hybrid_pkm_large trainer.enable_progress_bar=false | tail -n 3
for run in run_pkm run_hybrid_pkm_large; do cp "/tmp/$run/metrics.json" "$OUT/${run}_metrics.json"; done
