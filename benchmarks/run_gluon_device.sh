#!/usr/bin/env bash
# One device call for the Gluon FP8 GEMM (kernels/fp8_gemm_gluon.py):
#   1. a smoke run under a short timeout (a kernel that deadlocks must not eat the call: Triton's
#      automatic warp specialization did, BENCHMARKS.md tenth session), right or not on two shapes;
#   2. its GPU tests (tests/test_kernels_gpu.py -k gluon, plus $TESTS);
#   3. bench_kernels.py's sections in $SECTIONS (default gemm: ours, Triton and Gluon, against cuBLAS).
#   SMOKE_S=90 TEST_S=150 BENCH_S=300 [SECTIONS=gemm,grouped] bash benchmarks/run_gluon_device.sh
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout ${SMOKE_S:-90} python3 - <<'PY' 2>&1 | tee "$OUT/smoke.log"
import time
import torch
from kernels.fp8_gemm import fp8_gemm_gluon_checked, fp8_gemm_ref
from kernels.fp8_quant import act_quant, weight_quant
for M, N, K in ((512, 1024, 2048), (257, 384, 384)):  # an even and an odd count of slices per program
    aq, as_ = act_quant(torch.randn(M, K, device="cuda"))
    wq, ws = weight_quant(torch.randn(N, K, device="cuda") / K**0.5)
    t = time.time()
    c = fp8_gemm_gluon_checked(aq, as_, wq, ws, 128, torch.float32)
    torch.cuda.synchronize()
    ref = fp8_gemm_ref(aq, as_, wq, ws, 128, compute_dtype=torch.float64)
    err = ((c.double() - ref).norm() / ref.norm()).item()
    print(f"smoke {M}x{N}x{K}: rel err {err:.2e} ({time.time() - t:.1f} s with compile)", flush=True)
    assert err < 5e-4, err
PY
rc=$?
[ $rc = 0 ] || { echo "smoke rc=$rc (124: hung): the rest skipped"; exit 1; }
timeout ${TEST_S:-150} python3 -m pytest tests/test_kernels_gpu.py -q -rs -p no:cacheprovider -n 4 \
  -k "gluon${TESTS:+ or $TESTS}" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")"
grep -E "^E |FAILED|SKIPPED" "$OUT/tests.log" | head -20 | cut -c1-300
timeout ${BENCH_S:-300} python3 benchmarks/bench_kernels.py --sections ${SECTIONS:-gemm} --json "$OUT/bench.json" \
  > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\||^#" "$OUT/bench.log" | cut -c1-600
