#!/usr/bin/env bash
# One device call: GPU kernel tests, all kernel benchmarks, SASS check of the Triton GEMM cubins,
# (WIDTHS set) the FP8-vs-BF16 width scan of the real model, and (GRAPHS set) bench_graphs.py: the
# model's blocks eager against CUDA graphs, with an eager step's host syncs. Logs under $OUT.
# With two GPUs the tests, the width scan and the graphs run on GPU 1 while the benchmarks have GPU 0
# to themselves (timings are CUDA events on GPU 0; the tests only compile and check there).
#   TEST_S=240 BENCH_S=420 WIDTHS="--scales 1 2 4" bash benchmarks/run_device.sh
#   BENCH_S=0 GRAPHS="--scales 1 4" bash benchmarks/run_device.sh     (tests and graphs only)
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache PYTHONWARNINGS=ignore
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep multicast off
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" >> "$OUT/gpu.txt"
NGPU=$(nvidia-smi -L | wc -l)
SIDE=$(( NGPU > 1 ? 1 : 0 ))

side() {  # tests, then the width scan and the graphs (they need the training wheels: deepspeed, pydantic, ...)
  CUDA_VISIBLE_DEVICES=$SIDE timeout ${TEST_S:-240} python3 -m pytest tests/test_kernels_gpu.py -q -rs -n ${TEST_WORKERS:-6} \
    -p no:cacheprovider > "$OUT/tests.log" 2>&1
  echo "tests rc=$? $(tail -1 "$OUT/tests.log")"
  if [ -n "$WIDTHS$GRAPHS" ]; then
    # NOTE: `python3 -m pip`, not `pip`: the bare pip on the PATH belongs to another interpreter
    python3 -m pip install -q --no-index --find-links .whl -r .whl/requirements.txt > /tmp/pip.log 2>&1 \
      || python3 -m pip install -q --no-index --no-deps --find-links .whl -r .whl/requirements.txt >> /tmp/pip.log 2>&1
  fi
  if [ -n "$WIDTHS" ]; then
    CUDA_VISIBLE_DEVICES=$SIDE timeout ${WIDTH_S:-300} python3 benchmarks/bench_pretrain.py widths \
      "$OUT/widths.json" $WIDTHS > "$OUT/widths.log" 2>&1
    echo "widths rc=$?"; cat "$OUT/widths.log" | grep -v Warning | tail -12
  fi
  if [ -n "$GRAPHS" ]; then
    CUDA_VISIBLE_DEVICES=$SIDE timeout ${GRAPHS_S:-300} python3 benchmarks/bench_graphs.py "$OUT/graphs.json" \
      $GRAPHS > "$OUT/graphs.log" 2>&1
    echo "graphs rc=$?"; grep -v -i warn "$OUT/graphs.log" | tail -30 | cut -c1-400
  fi
}

bench() {
  [ "${BENCH_S:-420}" = 0 ] && return
  CUDA_VISIBLE_DEVICES=0 timeout ${BENCH_S:-420} python3 benchmarks/bench_kernels.py --json "$OUT/bench.json" \
    $BENCH_ARGS > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
}

if [ "$NGPU" -gt 1 ]; then side & bench; wait; else side; bench; fi
grep -E "^\||^#|rc=" "$OUT/bench.log" | cut -c1-400
grep -E "passed|failed|Error" "$OUT/tests.log" | tail -15 | cut -c1-300
{
  for f in $(find /tmp/tcache -name '*.cubin' | sort); do
    n=$(basename "$f" .cubin)
    c=$(cuobjdump --dump-sass "$f" | grep -oE '\b(QGMMA|HGMMA|HMMA|IMMA|UTMALDG|UTMASTG|WARPGROUP\.ARRIVE|FFMA)\b' | sort | uniq -c | tr -s ' ' | tr '\n' ';')
    echo "$n $(dirname "$f" | xargs basename | cut -c1-8): $c"
  done
} | sort | uniq > "$OUT/sass.txt"
cut -d: -f2- "$OUT/sass.txt" | sort | uniq -c | sort -rn | head -5
awk '{print $1}' "$OUT/sass.txt" | sort | uniq -c
g=$(find /tmp/tcache -name '_fp8_gemm_tma_kernel.cubin' | head -1)  # an excerpt, appended to sass.txt
[ -n "$g" ] && { echo "== excerpt of $g"; cuobjdump --dump-sass "$g" | grep -E 'GMMA|FFMA|FMUL|UTMA|BAR' | head -300; } >> "$OUT/sass.txt"
cat "$OUT/gpu.txt" >> "$OUT/bench.log"; rm -f "$OUT/gpu.txt"  # at most 8 files come back
exit 0
