#!/usr/bin/env bash
# One device call: GPU tests, all benchmarks, SASS check of the Triton GEMM cubins. Logs under $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" >> "$OUT/gpu.txt"
timeout ${TEST_S:-200} python3 -m pytest tests/test_kernels_gpu.py -q -rs 2>&1 | tee "$OUT/tests.log" | tail -30
timeout ${BENCH_S:-300} python3 benchmarks/bench_kernels.py --json "$OUT/bench.json" $BENCH_ARGS 2>&1 | tee "$OUT/bench.log"
{
  for f in $(find /tmp/tcache -name '*.cubin' | sort); do
    n=$(basename "$f" .cubin)
    c=$(cuobjdump --dump-sass "$f" | grep -oE '\b(QGMMA|HGMMA|HMMA|IMMA|WARPGROUP\.ARRIVE|FFMA)\b' | sort | uniq -c | tr -s ' ' | tr '\n' ';')
    echo "$n $(dirname "$f" | xargs basename | cut -c1-8): $c"
  done
} | sort | uniq | tee "$OUT/sass.txt"
g=$(find /tmp/tcache -name '_fp8_gemm_kernel.cubin' | head -1)
[ -n "$g" ] && cuobjdump --dump-sass "$g" | grep -E 'GMMA|FFMA|FMUL' | head -200 > "$OUT/fp8_gemm_sass_excerpt.txt"
[ -n "$g" ] && ls "$(dirname "$g")" > "$OUT/fp8_gemm_cache_dir.txt"
