#!/usr/bin/env bash
# One device call for the Gluon FP8 GEMMs (kernels/fp8_gemm_gluon.py, pipelined; fp8_gemm_gluon_ws.py,
# warp-specialized):
#   1. a smoke run under a short timeout (a kernel that deadlocks must not eat the call: Triton's
#      automatic warp specialization did, BENCHMARKS.md tenth session): right or not on three shapes,
#      two of the wgrad layout and one grouped GEMM (FP8 and bf16), both kernels;
#   2. its GPU tests (tests/test_kernels_gpu.py -k gluon, plus $TESTS);
#   3. bench_kernels.py's sections in $SECTIONS (default gemm: ours, Triton and Gluon, against cuBLAS).
#   SMOKE_S=90 TEST_S=150 BENCH_S=300 [SECTIONS=gemm,grouped] [TIMING=gpu] bash benchmarks/run_gluon_device.sh
#   (0 skips a part; TIMING: bench_kernels.py --timing, launch or gpu)
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${SMOKE_S:-90}" != 0 ]; then  # 0 skips a part (`timeout 0` would mean no limit)
timeout ${SMOKE_S:-90} python3 - <<'PY' 2>&1 | tee "$OUT/smoke.log"
import time
import torch
from kernels.fp8_gemm import fp8_gemm_gluon_checked, fp8_gemm_ref, fp8_gemm_triton
from kernels.fp8_gemm_gluon import WS_CONFIG as ws
from kernels.fp8_quant import act_quant, weight_quant
from kernels.moe import grouped_gemm, grouped_gemm_ref
from kernels.routing import make_routing, permute

def rel(c, ref):
    return ((c.double() - ref.double()).norm() / ref.double().norm()).item()

# an even and an odd count of slices per program; 640: the warp-specialized tile's right half past N
for M, N, K in ((512, 1024, 2048), (257, 384, 384), (1000, 640, 1152)):
    aq, as_ = act_quant(torch.randn(M, K, device="cuda"))
    wq, wsc = weight_quant(torch.randn(N, K, device="cuda") / K**0.5)
    ref = fp8_gemm_ref(aq, as_, wq, wsc, 128, compute_dtype=torch.float64)
    bound = 1.25 * rel(ref.to(torch.bfloat16), ref)  # a bf16 result: the reference's own rounding
    for config, out, tol in ((0, torch.float32, 5e-4), (ws, torch.bfloat16, bound)):
        t = time.time()
        c = fp8_gemm_gluon_checked(aq, as_, wq, wsc, 128, out, config=config)
        torch.cuda.synchronize()
        err = rel(c, ref)
        print(f"smoke {M}x{N}x{K} config {config} {str(out)[6:]}: rel err {err:.2e} (bound {tol:.1e}; "
              f"{time.time() - t:.1f} s with compile)", flush=True)
        assert err < tol, err
    # the same bits as the Triton TMA kernel? (auto may choose either, run to run: kernels/autoselect.py)
    same = torch.equal(fp8_gemm_gluon_checked(aq, as_, wq, wsc, 128, torch.bfloat16, config=ws),
                       fp8_gemm_triton(aq, as_, wq, wsc, 128, torch.bfloat16, impl="tma"))
    print(f"smoke {M}x{N}x{K}: warp-specialized bf16 result bitwise equal to Triton TMA's: {same}", flush=True)
# the wgrad layout, warp-specialized: B in 1x128 tiles too (a scale per column and slice), N=200 ragged
for M, N, K in ((512, 1024, 2048), (300, 200, 704)):
    aq, as_ = act_quant(torch.randn(M, K, device="cuda"))
    bq, bs = act_quant(torch.randn(N, K, device="cuda"))
    ref = fp8_gemm_ref(aq, as_, bq, bs, 1, compute_dtype=torch.float64)
    bound = 1.25 * rel(ref.to(torch.bfloat16), ref)
    t = time.time()
    c = fp8_gemm_gluon_checked(aq, as_, bq, bs, 1, torch.bfloat16, config=ws)
    torch.cuda.synchronize()
    err = rel(c, ref)
    same = torch.equal(c, fp8_gemm_triton(aq, as_, bq, bs, 1, torch.bfloat16, impl="tma"))
    print(f"smoke wgrad {M}x{N}x{K} config {ws}: rel err {err:.2e} (bound {bound:.1e}; {time.time() - t:.1f} s "
          f"with compile); bitwise equal to Triton TMA's: {same}", flush=True)
    assert err < bound, err
# the experts' grouped GEMM, warp-specialized: 16 experts, N=640
x = torch.randn(2000, 1152, device="cuda", dtype=torch.bfloat16)
r = make_routing(torch.randn(2000, 16, device="cuda").topk(2).indices, 16)
xq, xs = act_quant(x)
xq, xs = permute(xq, r), permute(xs, r)
wq, wsc = weight_quant(torch.randn(16 * 640, 1152, device="cuda") / 34)
wq, wsc = wq.view(16, 640, 1152), wsc.view(16, 5, 9)
rows = r.row_of.flatten()
ref = grouped_gemm_ref(xq, wq, r, xs, wsc, out_dtype=torch.float32)[rows].double()
out = grouped_gemm(xq, wq, r, xs, wsc, impl="gluon", config=ws)
torch.cuda.synchronize()
err, bound = rel(out[rows], ref), 1.25 * rel(ref.to(torch.bfloat16), ref)
print(f"smoke grouped 16 experts config {ws}: rel err {err:.2e} (bound {bound:.1e}); padding rows zero: "
      f"{not out[r.src_token < 0].any()}; bitwise equal to impl='tma': "
      f"{torch.equal(out, grouped_gemm(xq, wq, r, xs, wsc, impl='tma'))}", flush=True)
assert err < bound and not out[r.src_token < 0].any()
w16 = (torch.randn(16, 640, 1152, device="cuda") / 34).to(torch.bfloat16)
xp = permute(x, r)
out = grouped_gemm(xp, w16, r, impl="gluon_ws")
torch.cuda.synchronize()
ref = grouped_gemm_ref(xp, w16, r, out_dtype=torch.float32)[rows].double()
err, bound = rel(out[rows], ref), 1.25 * rel(ref.to(torch.bfloat16), ref)
print(f"smoke grouped bf16 16 experts gluon_ws: rel err {err:.2e} (bound {bound:.1e}); padding rows zero: "
      f"{not out[r.src_token < 0].any()}; bitwise equal to impl='tma': "
      f"{torch.equal(out, grouped_gemm(xp, w16, r, impl='tma'))}", flush=True)
assert err < bound and not out[r.src_token < 0].any()
PY
rc=$?
[ $rc = 0 ] || { echo "smoke rc=$rc (124: hung): the rest skipped"; exit 1; }
fi
if [ "${TEST_S:-150}" != 0 ]; then
timeout ${TEST_S:-150} python3 -m pytest tests/test_kernels_gpu.py -q -rs -p no:cacheprovider -n 4 \
  -k "gluon${TESTS:+ or $TESTS}" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")"
grep -E "^E |FAILED|SKIPPED" "$OUT/tests.log" | head -20 | cut -c1-300
fi
[ "${BENCH_S:-300}" != 0 ] || exit 0
timeout ${BENCH_S:-300} python3 benchmarks/bench_kernels.py --sections ${SECTIONS:-gemm} --timing ${TIMING:-launch} \
  --json "$OUT/bench.json" \
  > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\||^#" "$OUT/bench.log" | cut -c1-600
