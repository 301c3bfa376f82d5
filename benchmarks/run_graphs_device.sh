#!/usr/bin/env bash
# One device call (2026-12-05 session): the GPU kernel tests, then benchmarks/bench_graphs.py (the
# model's blocks eager against CUDA graphs, BF16 against FP8, with the host syncs of an eager step).
#   (on the device, .whl carried)  bash benchmarks/run_graphs_device.sh
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache PYTHONWARNINGS=ignore
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep multicast off
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail -5 "$OUT/pip.log"; }
export PYTHONPATH=/tmp/site
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
  python3 -c "import torch, triton, deepspeed; print(torch.__version__, torch.version.cuda, triton.__version__, deepspeed.__version__)"
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
timeout ${TEST_S:-200} python3 -m pytest tests/test_kernels_gpu.py -q -rs -n ${TEST_WORKERS:-8} -p no:cacheprovider \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")"
grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300
timeout ${GRAPHS_S:-300} python3 benchmarks/bench_graphs.py "$OUT/graphs.json" ${GRAPHS_ARGS:---scales 1 4} \
  > "$OUT/graphs.log" 2>&1
echo "graphs rc=$?"; grep -v -i warn "$OUT/graphs.log" | tail -30 | cut -c1-400
exit 0
