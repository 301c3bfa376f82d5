"""All kernel benchmarks in one call; prints tables, writes JSON (`--json PATH`).

    python benchmarks/bench_kernels.py [--quick] [--json results.json] [--timing launch|gpu]

1. FP8 blockwise GEMM (ours, Triton: classic and TMA-persistent) against torch._scaled_mm with
   rowwise and blockwise scales (cuBLAS) and against a bf16 matmul, on DeepSeek-V3 shapes, MoE
   expert shapes and small shapes; our dgrad / wgrad layouts; what `backend="auto"` picks, three
   times from an empty cache (is the choice stable?), with the medians it measured.
2. Quantization kernels' bandwidth.
3. Grouped GEMM over experts (ours classic / TMA, bf16 / FP8; torch._grouped_mm) against a
   per-expert loop and one dense GEMM with the same FLOPs, as the expert count grows; the
   autotuner's time for every TMA config at one shape.
4. The experts' FP8 weight gradient: one grouped launch against the per-expert loop it replaced.
5. One FP8 linear's training step (forward + backward, 16,384 tokens): the 2026-12 path (weight cached
   per optimizer step, both layouts per read, bf16 wgrad) against the 2026-11-30 sequence of passes
   and against bf16 (section "linear").
The FP8 training step of the real model (tokens/s by width) is benchmarks/bench_pretrain.py's
`widths`; the MLP stand-in that used to be section 3 here is superseded by it.

Times are medians after a warm-up call; inputs are fresh random tensors (never zeros). `--timing
launch` (the default, how every earlier table was timed): triton.testing.do_bench, each call between
CUDA events after an L2 flush, so a call whose host launch outlasts the flush is charged its launch
(an eager loop's cost). `--timing gpu`: kernels/autoselect.py's device timer, a sleep kernel queued
ahead of each call, so only its device time counts (what a CUDA-graph replay pays, and what a kernel's
TFLOP/s means); no L2 flush. NOTE: on a slow host the two differ far beyond noise: an H200 machine of
2026-12-06 ran cuBLAS on 4096 x 1024 x 1024 at 127 TFLOP/s launch-timed, where an H100's gave 483.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402  (a GPU script: triton is required here)

import kernels.fp8_gemm as fp8_gemm_mod  # noqa: E402
import kernels.fp8_gemm_gluon_ws as ws_mod  # noqa: E402
from kernels import autoselect  # noqa: E402
import kernels.moe as moe  # noqa: E402
from kernels.fp8_gemm import (fp8_gemm, fp8_gemm_cublas, fp8_gemm_gluon_checked, fp8_gemm_triton,  # noqa: E402
                              pick_backend)
from kernels.fp8_gemm_gluon import GLUON_CONFIGS, WS_CONFIG  # noqa: E402
from kernels.fp8_linear import FP8Linear  # noqa: E402
from kernels.fp8_quant import (act_quant_dual_triton, act_quant_triton, weight_quant_dual_triton,  # noqa: E402
                               weight_quant_triton)
from kernels.weight_cache import invalidate_fp8_weights  # noqa: E402
from kernels.moe import grouped_gemm, grouped_wgrad_fp8  # noqa: E402
from kernels.routing import make_routing, permute  # noqa: E402

GEMM_SHAPES = [  # (M, N, K, label)
    (4096, 7168, 16384, "V3 goal"),
    (4096, 2048, 7168, "V3 goal"),
    (16384, 1024, 1024, "V3 goal"),
    (8192, 8192, 8192, "V3 goal"),
    (4096, 4096, 7168, "V3 expert w1|w3 (fused)"),
    (4096, 7168, 2048, "V3 expert w2"),
    (4096, 1024, 1024, "small"),
    (8192, 512, 512, "small"),
]


TIMING = "launch"  # --timing


def bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    if TIMING == "launch":
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # ms
    autoselect.set_timing("gpu")
    try:
        return statistics.median(autoselect.cuda_timer({"fn": fn}, warmup=3, iters=25)["fn"])  # ms
    finally:
        autoselect.set_timing("launch")


def tflops(flop: float, ms: float) -> float:
    return flop / ms / 1e9


def try_bench(fn):
    try:
        return bench(fn)
    except Exception as e:  # a peer that this torch / cuBLAS refuses: record why
        return f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:80]})"


def config_timings(autotuner) -> dict:
    """The autotuner's median time (ms) of every config it tried at its last key: inf = did not fit."""
    out = {}
    for cfg, t in getattr(autotuner, "configs_timings", {}).items():
        out[str(cfg.kwargs) + f" w{cfg.num_warps} s{cfg.num_stages}"] = t[0] if isinstance(t, (list, tuple)) else t
    return out


def gemm_section(shapes) -> list[dict]:
    rows = []
    for M, N, K, label in shapes:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        xq, xs = act_quant_triton(x)
        wq, ws = weight_quant_triton(w)
        flop = 2.0 * M * N * K
        r = {"M": M, "N": N, "K": K, "label": label}
        r["bf16"] = bench(lambda: x @ w.t())
        # rowwise: one scale per row of A and per column of B
        sa_row = x.float().abs().amax(1, keepdim=True).div(448).contiguous()
        sb_row = w.float().abs().amax(1, keepdim=True).div(448).t().contiguous()
        r["fp8_rowwise_cublas"] = try_bench(lambda: torch._scaled_mm(
            xq, wq.t(), scale_a=sa_row, scale_b=sb_row, out_dtype=torch.bfloat16))
        r["fp8_blockwise_cublas"] = try_bench(lambda: fp8_gemm_cublas(xq, xs, wq, ws, 128))
        r["fp8_blockwise_classic"] = try_bench(lambda: fp8_gemm_triton(xq, xs, wq, ws, 128, impl="classic"))
        r["fp8_blockwise_tma"] = try_bench(lambda: fp8_gemm_triton(xq, xs, wq, ws, 128, impl="tma"))
        r["tma_configs"] = config_timings(fp8_gemm_mod._fp8_gemm_tma_tuned)
        # the Gluon kernels, every config: the pipelined one (promotion overlapped with the next slice's
        # MMA; the best config kept) and the warp-specialized one (128x256 tiles)
        gl_ms = {i: try_bench(lambda i=i: fp8_gemm_gluon_checked(xq, xs, wq, ws, 128, config=i))
                 for i in range(len(GLUON_CONFIGS))}
        r["gluon_configs"] = {str(GLUON_CONFIGS[i]): v for i, v in gl_ms.items()}
        pipelined = {i: v for i, v in gl_ms.items() if isinstance(v, float) and not GLUON_CONFIGS[i].warp_specialized}
        best_gl = min(pipelined, key=pipelined.get) if pipelined else 0
        r["fp8_blockwise_gluon"] = gl_ms[best_gl]
        r["fp8_blockwise_gluon_ws"] = gl_ms[WS_CONFIG]
        # the backward layouts of the same layer (TMA kernel): dgrad (M,N)x(N,K) and wgrad over M tokens
        dyq, dys = act_quant_triton(torch.randn(M, N, device="cuda", dtype=torch.bfloat16))
        wtq, wts = wq.t().contiguous(), ws.t().contiguous()
        r["dgrad_tma"] = try_bench(lambda: fp8_gemm_triton(dyq, dys, wtq, wts, 128, impl="tma"))
        dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        dtq, dts = act_quant_triton(dy.t())
        xtq, xts = act_quant_triton(x.t())
        r["wgrad_tma"] = try_bench(lambda: fp8_gemm_triton(dtq, dts, xtq, xts, 1, torch.float32, impl="tma"))
        r["dgrad_gluon"] = try_bench(lambda: fp8_gemm_gluon_checked(dyq, dys, wtq, wts, 128, config=best_gl))
        r["dgrad_gluon_ws"] = try_bench(lambda: fp8_gemm_gluon_checked(dyq, dys, wtq, wts, 128, config=WS_CONFIG))
        r["wgrad_gluon"] = try_bench(lambda: fp8_gemm_gluon_checked(dtq, dts, xtq, xts, 1, torch.float32,
                                                                    config=best_gl))
        r["dgrad_cublas"] = try_bench(lambda: fp8_gemm_cublas(dyq, dys, wtq, wts, 128))
        r["wgrad_cublas"] = try_bench(lambda: fp8_gemm_cublas(dtq, dts, xtq, xts, 1, torch.float32))
        # bf16 out: what the training path asks for (the weight's dtype); the warp-specialized kernel
        # writes 2-byte results only
        r["wgrad_cublas_bf16"] = try_bench(lambda: fp8_gemm_cublas(dtq, dts, xtq, xts, 1, torch.bfloat16))
        r["wgrad_gluon_ws_bf16"] = try_bench(lambda: fp8_gemm_gluon_checked(dtq, dts, xtq, xts, 1, torch.bfloat16,
                                                                            config=WS_CONFIG))
        ws_mod.WS_WGRAD_PART = 128  # the other part width: halves
        try:
            r["wgrad_gluon_ws_halves_bf16"] = try_bench(lambda: fp8_gemm_gluon_checked(
                dtq, dts, xtq, xts, 1, torch.bfloat16, config=WS_CONFIG))
        finally:
            ws_mod.WS_WGRAD_PART = 64
        # what "auto" picks, three times from an empty cache, and the medians of its last pick
        picks = []
        for _ in range(3):
            fp8_gemm_mod._BACKEND_CACHE.clear()
            picks.append(pick_backend(xq, xs, wq, ws, 128, torch.bfloat16))
        r["auto_picks"] = picks
        r["auto_choice"] = fp8_gemm_mod.backend_choices()[-1]
        for key in ("bf16", "fp8_rowwise_cublas", "fp8_blockwise_cublas", "fp8_blockwise_classic",
                    "fp8_blockwise_tma", "dgrad_tma", "wgrad_tma", "fp8_blockwise_gluon", "dgrad_gluon",
                    "wgrad_gluon", "dgrad_cublas", "wgrad_cublas", "fp8_blockwise_gluon_ws", "dgrad_gluon_ws",
                    "wgrad_cublas_bf16", "wgrad_gluon_ws_bf16", "wgrad_gluon_ws_halves_bf16"):
            if isinstance(r[key], float):
                r[key + "_tflops"] = tflops(flop, r[key])
        rows.append(r)
        print(fmt_gemm_row(r), flush=True)
    return rows


def fmt(v):
    return f"{v:7.0f}" if isinstance(v, float) else "    n/a"


def fmt_gemm_row(r):
    t = lambda k: fmt(r.get(k + "_tflops"))  # noqa: E731
    best = max((r.get(k + "_tflops") or 0) for k in ("fp8_blockwise_classic", "fp8_blockwise_tma"))
    ratio = best / r["fp8_blockwise_cublas_tflops"] if r.get("fp8_blockwise_cublas_tflops") else float("nan")
    picks = "/".join(p.replace("triton_", "") for p in r["auto_picks"])

    def vs_cublas(k, peer):
        return (f"{r[k + '_tflops'] / r[peer + '_tflops']:.2f}"
                if r.get(k + "_tflops") and r.get(peer + "_tflops") else "n/a")

    return (f"| {r['M']} x {r['N']} x {r['K']} | {r['label']} | {t('bf16')} | {t('fp8_rowwise_cublas')} | "
            f"{t('fp8_blockwise_cublas')} | {t('fp8_blockwise_classic')} | {t('fp8_blockwise_tma')} | "
            f"{ratio:.2f} | {t('fp8_blockwise_gluon')} | {vs_cublas('fp8_blockwise_gluon', 'fp8_blockwise_cublas')} | "
            f"{t('fp8_blockwise_gluon_ws')} | {vs_cublas('fp8_blockwise_gluon_ws', 'fp8_blockwise_cublas')} | "
            f"{t('dgrad_tma')} | {t('dgrad_gluon')} | {t('dgrad_gluon_ws')} | {t('dgrad_cublas')} | "
            f"{t('wgrad_tma')} | {t('wgrad_gluon')} | {t('wgrad_cublas')} | {t('wgrad_gluon_ws_bf16')} | "
            f"{t('wgrad_gluon_ws_halves_bf16')} | "
            f"{t('wgrad_cublas_bf16')} | {vs_cublas('wgrad_gluon_ws_bf16', 'wgrad_cublas_bf16')} | {picks} |")


def quant_section() -> list[dict]:
    """GB/s of each kernel (bytes read + written once), and what the dual kernels replace: the two
    single-layout passes over an activation (the second a transposed read), the weight quantization
    followed by a transpose of its FP8 copy."""
    rows = []
    for M, K in [(4096, 7168), (16384, 2048), (16376, 1024)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        nbytes = M * K * (2 + 1) + M * (K // 128) * 4
        ms_a = bench(lambda: act_quant_triton(x))
        ms_t = bench(lambda: act_quant_triton(x.t(), pad_to=128))
        ms_w = bench(lambda: weight_quant_triton(x))
        ms_ad = bench(lambda: act_quant_dual_triton(x))
        ms_wd = bench(lambda: weight_quant_dual_triton(x))

        def weight_then_transpose():
            q, sc = weight_quant_triton(x)
            return q.t().contiguous(), sc.t().contiguous()

        ms_wt = bench(weight_then_transpose)
        dual_bytes = M * K * (2 + 1 + 1) + 2 * M * (K // 128) * 4
        rows.append({"shape": f"{M}x{K}", "act_quant_GBps": nbytes / ms_a / 1e6,
                     "act_quant_transposed_GBps": nbytes / ms_t / 1e6, "weight_quant_GBps": nbytes / ms_w / 1e6,
                     "act_dual_GBps": dual_bytes / ms_ad / 1e6, "weight_dual_GBps": dual_bytes / ms_wd / 1e6,
                     "ms": {"act": ms_a, "act_t": ms_t, "act_dual": ms_ad, "weight": ms_w,
                            "weight_then_transpose": ms_wt, "weight_dual": ms_wd}})
        r = rows[-1]
        print(f"| {M} x {K} | {r['act_quant_GBps']:.0f} | {r['act_quant_transposed_GBps']:.0f} | "
              f"{r['weight_quant_GBps']:.0f} | {r['act_dual_GBps']:.0f} | {r['weight_dual_GBps']:.0f} | "
              f"{ms_a + ms_t:.3f} -> {ms_ad:.3f} | {ms_wt:.3f} -> {ms_wd:.3f} |", flush=True)
    return rows


def bench_just_written(fn, x: torch.Tensor, src: torch.Tensor, iters: int = 50) -> float:
    """Median ms of fn() right after x.copy_(src): x has just been written, as an activation is in a
    training step by the kernel before its quantization (it may still sit in L2). bench() instead
    empties L2 before every call (triton.testing.do_bench)."""
    fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        x.copy_(src)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in events)


def act_dual_section() -> list[dict]:
    """Both layouts of an activation (what act_quant_dual picks among), on the `small` trainer's
    layouts: 16,384 tokens x its linears' widths, and the experts' 69,632 padded rows x 1,024 / 512.
    ms, and GB/s counting one read and both writes (what the one-read kernels move): with L2 emptied
    before each call, and right after the activation was written (`bench_just_written`)."""
    from kernels.fp8_quant import act_quant_two_pass_triton
    rows = []
    for M, K in [(16384, 1024), (16384, 384), (16384, 288), (16384, 256), (16384, 1536), (16384, 2048),
                 (16384, 512), (69632, 1024), (69632, 512), (4096, 7168)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        src = torch.randn_like(x)
        nbytes = M * K * (2 + 1 + 1) + 2 * M * math.ceil(K / 128) * 4
        fns = {"two_pass": lambda: act_quant_two_pass_triton(x), "sweeps": lambda: act_quant_dual_triton(x),
               "strips": lambda: act_quant_dual_triton(x, kernel="strips")}
        ms = {k: bench(f) for k, f in fns.items()}
        warm = {k: bench_just_written(f, x, src) for k, f in fns.items()}
        rows.append({"shape": f"{M}x{K}", "ms": ms, "GBps": {k: nbytes / v / 1e6 for k, v in ms.items()},
                     "ms_just_written": warm})
        print(f"| {M} x {K} | " + " | ".join(f"{v:.4f} ({nbytes / v / 1e6:,.0f})" for v in ms.values())
              + f" | {ms['two_pass'] / ms['strips']:.2f} | "
              + " | ".join(f"{v:.4f}" for v in warm.values()) + f" | {warm['two_pass'] / warm['strips']:.2f} |",
              flush=True)
    return rows


def combine_backward_section(tokens: int = 16384, topk: int = 4, E: int = 32) -> list[dict]:
    """The experts' combine backward (d out_perm and d topk_w), `small`'s MoE layer: the eager
    reference (what the FP8 experts ran before 2026-12-06) against the one-pass Triton kernel, ms."""
    from kernels.routing import combine_backward, combine_backward_ref
    rows = []
    for N in (1024, 4096):
        ids = torch.stack([torch.randperm(E, device="cuda")[:topk] for _ in range(tokens)])
        r = make_routing(ids, E)
        tw = torch.softmax(torch.randn(tokens, topk, device="cuda"), -1)
        dy = torch.randn(tokens, N, device="cuda", dtype=torch.bfloat16)
        o = torch.randn(r.padded_rows, N, device="cuda", dtype=torch.bfloat16)
        ms = {"eager": bench(lambda: combine_backward_ref(dy, o, tw, r)),
              "triton": bench(lambda: combine_backward(dy, o, tw, r))}
        rows.append({"N": N, "ms": ms})
        print(f"| {tokens} x {N}, top {topk} of {E} | {ms['eager']:.3f} | {ms['triton']:.3f} | "
              f"{ms['eager'] / ms['triton']:.1f} |", flush=True)
    return rows


def previous_fp8_linear_step(x, w, dy):
    """The 2026-11-30 FP8Linear's passes, called in sequence (no autograd): weight quantized every
    call, its FP8 copy transposed for the dgrad, dy and x quantized again along the tokens, the
    weight gradient in fp32 and then cast."""
    xq, xs = act_quant_triton(x)
    wq, ws = weight_quant_triton(w)
    fp8_gemm(xq, xs, wq, ws, 128, out_dtype=x.dtype)
    dyq, dys = act_quant_triton(dy)
    fp8_gemm(dyq, dys, wq.t().contiguous(), ws.t().contiguous(), 128, out_dtype=dy.dtype)
    dytq, dyts = act_quant_triton(dy.t(), pad_to=128)
    xtq, xts = act_quant_triton(x.t(), pad_to=128)
    return fp8_gemm(dytq, dyts, xtq, xts, 1, out_dtype=torch.float32).to(w.dtype)


def linear_section(tokens: int = 16384) -> list[dict]:
    """Forward + backward of one linear layer in ms: bf16 nn.Linear, our FP8Linear with its weight
    cached (a micro-step inside an accumulation window) and re-quantized every call (one micro-step
    per optimizer step), and the previous sequence of FP8 passes. NOTE: the previous sequence runs
    without autograd, so it is timed slightly in its favour."""
    rows = []
    for fin, fout, what in [(1024, 512, "small expert width"), (1024, 2816, "small dense up"),
                            (4096, 2048, "4x expert width"), (4096, 11264, "4x dense up")]:
        lin = torch.nn.Linear(fin, fout, bias=False, device="cuda", dtype=torch.bfloat16)
        fp8 = FP8Linear.from_linear(lin)
        x = torch.randn(tokens, fin, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(tokens, fout, device="cuda", dtype=torch.bfloat16)

        def step(m, invalidate=False):
            if invalidate:
                invalidate_fp8_weights()
            m(x).backward(dy)

        r = {"what": what, "in": fin, "out": fout, "tokens": tokens,
             "bf16_ms": bench(lambda: step(lin)), "fp8_cached_ms": bench(lambda: step(fp8)),
             "fp8_requant_ms": bench(lambda: step(fp8, True)),
             "fp8_previous_ms": bench(lambda: previous_fp8_linear_step(x.detach(), lin.weight.detach(), dy))}
        rows.append(r)
        print(f"| {what} | {fin} -> {fout} | {r['bf16_ms']:.3f} | {r['fp8_previous_ms']:.3f} | "
              f"{r['fp8_requant_ms']:.3f} | {r['fp8_cached_ms']:.3f} | "
              f"{r['bf16_ms'] / r['fp8_cached_ms']:.2f} |", flush=True)
    return rows


def dispatch_section(tokens: int = 16384, topk: int = 4, E: int = 32) -> list[dict]:
    """The trainer's FP8 experts (training/expert_parallel.py at ep_size 1), forward + backward, ms: as
    they run now (one FP8SwiGLUExpertsFunction: the rows quantized once, SwiGLU's product and its
    gradients made inside their quantizations) against the composition before 2026-12-05's eleventh
    session (three FP8 grouped linears around the eager SwiGLU), same weights and routing, back to
    back; and bf16 experts (torch._grouped_mm) for scale."""
    from types import SimpleNamespace

    from kernels.experts import CombineFunction, GroupedLinearFunction, PermuteFunction
    from kernels.fp8_quant import swiglu
    from kernels.routing import make_routing
    from training import distributed
    from training.expert_parallel import ExpertParallelExperts

    distributed.init()
    rows = []
    for D, I, what in [(1024, 512, "small (1x)"), (4096, 2048, "4x width")]:
        w = [torch.randn(E, a, b, device="cuda", dtype=torch.bfloat16) / math.sqrt(b) for a, b in ((I, D), (D, I), (I, D))]
        wrapped = ExpertParallelExperts(SimpleNamespace(w1=w[0], w2=w[1], w3=w[2]), ep_size=1)
        x = torch.randn(tokens, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        ids = torch.stack([torch.randperm(E, device="cuda")[:topk] for _ in range(tokens)])
        gate = torch.softmax(torch.randn(tokens, topk, device="cuda"), -1)
        dy = torch.randn(tokens, D, device="cuda", dtype=torch.bfloat16)
        b = wrapped.block

        def unfused():  # grouped_swiglu's FP8 path before the fused SwiGLU quantizations
            r = make_routing(ids, E)
            xp = PermuteFunction.apply(x, r)
            h1, h3 = (GroupedLinearFunction.apply(xp, wi, r, True, False) for wi in (b.w1, b.w3))
            return CombineFunction.apply(GroupedLinearFunction.apply(swiglu(h1, h3), b.w2, r, True, False), gate, r)

        def step(fn):
            fn().backward(dy)

        r = {"what": what, "D": D, "I": I, "E": E, "tokens": tokens, "topk": topk}
        wrapped.fp8 = None
        r["bf16_ms"] = bench(lambda: step(lambda: wrapped(x, ids, gate)))
        wrapped.fp8 = "gpu"
        r["fp8_unfused_ms"] = bench(lambda: step(unfused))
        r["fp8_ms"] = bench(lambda: step(lambda: wrapped(x, ids, gate)))
        rows.append(r)
        print(f"| {what} | {r['bf16_ms']:.3f} | {r['fp8_unfused_ms']:.3f} | {r['fp8_ms']:.3f} | "
              f"{r['fp8_unfused_ms'] / r['fp8_ms']:.2f} | {r['bf16_ms'] / r['fp8_ms']:.2f} |", flush=True)
    return rows


def hbm_bandwidth() -> float:
    """Bytes/s of a 4 GiB device-to-device copy, counting the read and the write."""
    src = torch.empty(2**31, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * 2**32 / (ms * 1e-3)


def grouped_bounds(E, rows_total, used_rows, rows_64, N, K, flop, dense_ms, bw, elt=2) -> dict:
    """Two ceilings on a grouped GEMM, as fractions of the dense GEMM of the same FLOPs:
    - padding: every computed row ran at the dense GEMM's speed, padding rows (segments rounded up
      to 128) included: rows_total / used_rows; with 64-row tiles, which skip those of padding
      alone (rows_64 rows computed): rows_total / rows_64;
    - memory: E weight matrices (the dense GEMM reads one), the routed rows and the output, each
      moved once at the copy's bandwidth: no faster than those bytes take."""
    weights, rows_in, rows_out = E * N * K * elt, used_rows * K * elt, used_rows * N * 2
    memory_ms = (weights + rows_in + rows_out) / bw * 1e3
    return {"used_rows": used_rows, "padding_bound": rows_total / used_rows, "rows_64": rows_64,
            "padding_bound_64": rows_total / rows_64,
            "memory_ms": memory_ms, "memory_bound": dense_ms / memory_ms,
            "memory_bound_tflops": tflops(flop, memory_ms)}


def grouped_section(expert_counts, rows_total=32768, K=2048, N=1536) -> list[dict]:
    out = []
    bw = hbm_bandwidth()
    print(f"(HBM copy bandwidth, read + write: {bw / 1e12:.2f} TB/s)")
    x_tok = torch.randn(rows_total, K, device="cuda", dtype=torch.bfloat16)
    dense_w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    flop = 2.0 * rows_total * N * K
    (dxq, dxs), (dwq, dws) = act_quant_triton(x_tok), weight_quant_triton(dense_w)  # the dense FP8 GEMM's operands
    for E in expert_counts:
        # rows_total (token, expert) pairs, top-1 routing of rows_total tokens, uniform experts
        ids = torch.randint(0, E, (rows_total, 1), device="cuda")
        r = make_routing(ids, E)
        xp = permute(x_tok, r)
        w = torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16) / math.sqrt(K)
        res = {"experts": E, "hbm_TBps": bw / 1e12}
        res["dense_ms"] = bench(lambda: x_tok @ dense_w.t())  # again for every row: it drifts 5-10%
        res["bounds_bf16"] = grouped_bounds(E, rows_total, int(r.offsets[E]), 64 * int(r.row_tiles[1]), N, K,
                                            flop, res["dense_ms"], bw)
        res["classic_bf16_ms"] = try_bench(lambda: grouped_gemm(xp, w, r, impl="classic"))
        res["tma_bf16_ms"] = try_bench(lambda: grouped_gemm(xp, w, r, impl="tma"))
        res["gluon_ws_bf16_ms"] = try_bench(lambda: grouped_gemm(xp, w, r, impl="gluon_ws"))
        xq, xs = act_quant_triton(xp)
        wq, ws = weight_quant_triton(w.view(E * N, K))
        wq, ws = wq.view(E, N, K), ws.view(E, N // 128, K // 128)
        res["classic_fp8_ms"] = try_bench(lambda: grouped_gemm(xq, wq, r, xs, ws, impl="classic"))
        res["tma_fp8_ms"] = try_bench(lambda: grouped_gemm(xq, wq, r, xs, ws, impl="tma"))
        gl_ms = [try_bench(lambda i=i: grouped_gemm(xq, wq, r, xs, ws, impl="gluon", config=i))
                 for i in range(len(GLUON_CONFIGS))]
        res["gluon_fp8_configs"] = {str(GLUON_CONFIGS[i]): v for i, v in enumerate(gl_ms)}
        res["gluon_fp8_ms"] = min((v for i, v in enumerate(gl_ms) if isinstance(v, float)
                                   and not GLUON_CONFIGS[i].warp_specialized), default=gl_ms[0])
        res["gluon_ws_fp8_ms"] = gl_ms[WS_CONFIG]
        # the dense FP8 GEMM of the same FLOPs, as the training path runs it (fp8_gemm's `auto`)
        res["dense_fp8_ms"] = try_bench(lambda: fp8_gemm(dxq, dxs, dwq, dws, 128, out_dtype=torch.bfloat16))
        # the autotuner's key holds E: each count tunes its own, and its timings compare the 128-row
        # tiles with the 64-row ones that skip tiles of padding alone, on the same routing
        res["tma_bf16_configs"] = config_timings(moe._gg_tma_tuned[False])
        res["tma_fp8_configs"] = config_timings(moe._gg_tma_tuned[True])
        grouped_gemm(xp, w, r)  # impl="auto": measured once per (E, N, K, dtype)
        res["auto_bf16"] = moe.impl_choices()[-1]
        offs, counts = r.offsets.tolist(), r.counts.tolist()

        def loop():
            for e in range(E):
                if counts[e]:
                    xp[offs[e]:offs[e] + counts[e]] @ w[e].t()
        res["loop_bf16_ms"] = bench(loop)
        # torch's own grouped GEMM (cuBLAS / CUTLASS), on the unpadded sorted rows
        if hasattr(torch, "_grouped_mm"):
            xs_sorted = x_tok[torch.argsort(ids[:, 0])]
            ends = torch.cumsum(r.counts, 0).to(torch.int32)
            wt = w.transpose(1, 2)  # (E, K, N)
            res["torch_grouped_mm_ms"] = try_bench(lambda: torch._grouped_mm(xs_sorted, wt, offs=ends))
        for k in list(res):
            if k.endswith("_ms") and isinstance(res[k], float):
                res[k.replace("_ms", "_tflops")] = tflops(flop, res[k])
        best = min(v for k, v in res.items() if k in ("classic_bf16_ms", "tma_bf16_ms") and isinstance(v, float))
        res["best_bf16_vs_dense"] = res["dense_ms"] / best
        if isinstance(res["gluon_ws_bf16_ms"], float):
            res["gluon_ws_bf16_vs_dense"] = res["dense_ms"] / res["gluon_ws_bf16_ms"]
        for impl in ("tma", "gluon", "gluon_ws"):
            if isinstance(res[f"{impl}_fp8_ms"], float) and isinstance(res["dense_fp8_ms"], float):
                res[f"{impl}_fp8_vs_dense_fp8"] = res["dense_fp8_ms"] / res[f"{impl}_fp8_ms"]
        out.append(res)
        g = lambda k: fmt(res.get(k))  # noqa: E731
        b = res["bounds_bf16"]
        print(f"| {E} | {g('dense_tflops')} | {g('classic_bf16_tflops')} | {g('tma_bf16_tflops')} | "
              f"{g('classic_fp8_tflops')} | {g('tma_fp8_tflops')} | {g('loop_bf16_tflops')} | "
              f"{g('torch_grouped_mm_tflops')} | {res['best_bf16_vs_dense']:.2f} | {g('gluon_ws_bf16_tflops')} | "
              f"{res.get('gluon_ws_bf16_vs_dense', float('nan')):.2f} | "
              f"{min(b['padding_bound'], b['memory_bound']):.2f} ({b['padding_bound']:.2f}, {b['memory_bound']:.2f}) | "
              f"{b['padding_bound_64']:.2f} | {g('dense_fp8_tflops')} | "
              f"{res.get('tma_fp8_vs_dense_fp8', float('nan')):.2f} | {g('gluon_fp8_tflops')} | "
              f"{res.get('gluon_fp8_vs_dense_fp8', float('nan')):.2f} | {g('gluon_ws_fp8_tflops')} | "
              f"{res.get('gluon_ws_fp8_vs_dense_fp8', float('nan')):.2f} | {res['auto_bf16']['impl']} |", flush=True)
    print("\nBest TMA config by row-tile height (autotuner timings, ms): 128-row tiles compute every expert's "
          "padding, 64-row tiles skip the tiles of padding alone")
    print("| experts | bf16 128-row | bf16 64-row | 128 / 64 | FP8 128-row | FP8 64-row | 128 / 64 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for res in out:
        cells = []
        for key in ("tma_bf16_configs", "tma_fp8_configs"):
            best = {h: min((t for c, t in res[key].items() if f"'BLOCK_M': {h}," in c), default=float("nan"))
                    for h in (128, 64)}
            res[key.replace("configs", "best_by_height")] = best
            cells += [f"{best[128]:.4f}", f"{best[64]:.4f}", f"{best[128] / best[64]:.3f}"]
        print(f"| {res['experts']} | " + " | ".join(cells) + " |")
    return out


# the TMA kernel's configs compared (moe._gg_tma_config's arguments): the three-stage 128x256 tile,
# and two with more loads in flight (four stages without cross-tile prefetch did not fit: 2026-12-07)
GROUPED_ORDER_CONFIGS = [dict(bm=128, bn=256, bk=64, warps=8, stages=3),
                         dict(bm=128, bn=256, bk=64, warps=8, stages=4, c_split=2),
                         dict(bm=128, bn=128, bk=64, warps=8, stages=6)]
GROUPED_ORDER_GROUP_MS = (4, 8)


def grouped_order_name(c: dict, group_m: int) -> str:
    return f"tma {c['bm']}x{c['bn']}x{c['bk']} s{c['stages']}{' store halves' if c.get('c_split') else ''} GROUP_M={group_m}"


def grouped_order_section(expert_counts=(32, 64, 128), rows_total=32768, K=2048, N=1536) -> list[dict]:
    """Where the bf16 grouped GEMM loses against dense at many experts: the TMA kernel's configs
    (GROUPED_ORDER_CONFIGS), with each launch order (GROUP_M row tiles share a
    column tile, hence an expert's weight block, while it sits in L2), on the uniform routing of the
    grouped section and on a balanced one (rows_total / E rows an expert: no padding at all when
    that is a multiple of 128). Balanced at 1.0 of dense would put the uniform routing's loss on its
    padding; balanced well below it, on the many weights themselves (their traffic or the wave tail)."""
    out = []
    x_tok = torch.randn(rows_total, K, device="cuda", dtype=torch.bfloat16)
    dense_w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    flop = 2.0 * rows_total * N * K
    for E in expert_counts:
        w = torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16) / math.sqrt(K)
        for routing in ("uniform", "balanced"):
            if routing == "uniform":
                ids = torch.randint(0, E, (rows_total, 1), device="cuda")
            else:
                ids = (torch.arange(rows_total, device="cuda") % E)[torch.randperm(rows_total, device="cuda")][:, None]
            r = make_routing(ids, E)
            xp = permute(x_tok, r)
            res = {"experts": E, "routing": routing, "used_rows": int(r.offsets[E]),
                   "dense_ms": bench(lambda: x_tok @ dense_w.t())}
            res["padding_bound"] = rows_total / res["used_rows"]
            for c in GROUPED_ORDER_CONFIGS:
                for gm in GROUPED_ORDER_GROUP_MS:
                    cfg = moe._gg_tma_config(**c, group_m=gm)
                    ms = try_bench(lambda: grouped_gemm(xp, w, r, impl="tma", config=cfg))
                    res[grouped_order_name(c, gm)] = res["dense_ms"] / ms if isinstance(ms, float) else ms
            ms = try_bench(lambda: grouped_gemm(xp, w, r, impl="gluon_ws"))
            res["gluon_ws"] = res["dense_ms"] / ms if isinstance(ms, float) else ms
            res["dense_tflops"] = tflops(flop, res["dense_ms"])
            out.append(res)
            ratios = [v for k, v in res.items() if k.startswith(("tma ", "gluon_ws"))]
            print(f"| {E} | {routing} | {res['padding_bound']:.2f} | {res['dense_tflops']:.0f} | "
                  + " | ".join(f"{v:.2f}" if isinstance(v, float) else "n/a" for v in ratios) + " |", flush=True)
    return out


def wgrad_section(E=32, tokens=16384, topk=4, D=1024, I=512) -> list[dict]:
    """The FP8 experts' weight gradient of the `small` profile's MoE layer (32 experts, top-4 of
    16,384 tokens = one micro-batch): one grouped launch against the per-expert loop it replaced
    (one GEMM per expert after a host read of the segment offsets)."""
    out = []
    ids = torch.stack([torch.randperm(E, device="cuda")[:topk] for _ in range(tokens)])
    r = make_routing(ids, E)
    P = r.padded_rows
    for N, K, what in [(I, D, "w1 / w3 (E, I, D)"), (D, I, "w2 (E, D, I)")]:
        dq, ds = act_quant_triton(torch.randn(P, N, device="cuda", dtype=torch.bfloat16).t())
        xq, xs = act_quant_triton(torch.randn(P, K, device="cuda", dtype=torch.bfloat16).t())

        def loop():
            offs, counts = r.offsets.tolist(), r.counts.tolist()
            dw = torch.zeros((E, N, K), dtype=torch.float32, device="cuda")
            for e in range(E):
                if counts[e]:
                    lo, hi = offs[e], offs[e + 1]
                    dw[e] = fp8_gemm_triton(dq[:, lo:hi], ds[:, lo // 128:hi // 128], xq[:, lo:hi],
                                            xs[:, lo // 128:hi // 128], 1, torch.float32, impl="classic", config=0)
            return dw

        res = {"what": what, "E": E, "rows": tokens * topk, "N": N, "K": K,
               "grouped_ms": bench(lambda: grouped_wgrad_fp8(dq, ds, xq, xs, r)), "loop_ms": bench(loop)}
        flop = 2.0 * tokens * topk * N * K
        res["grouped_tflops"], res["loop_tflops"] = tflops(flop, res["grouped_ms"]), tflops(flop, res["loop_ms"])
        out.append(res)
        print(f"| {what} | {res['grouped_ms']:.3f} ms ({res['grouped_tflops']:.0f}) | {res['loop_ms']:.3f} ms "
              f"({res['loop_tflops']:.0f}) | {res['loop_ms'] / res['grouped_ms']:.1f}x |", flush=True)
    return out


def host_section(fin: int = 1024, fout: int = 512, tokens: int = 16384, calls: int = 50) -> dict:
    """Where the host time of one small FP8 linear's forward + backward goes (the 1x-width step is
    host-bound): wall time per call with the GPU queue kept full, and cProfile's top functions."""
    import cProfile
    import io
    import pstats
    import time

    lin = torch.nn.Linear(fin, fout, bias=False, device="cuda", dtype=torch.bfloat16)
    res = {}
    for name, m in (("bf16", lin), ("fp8", FP8Linear.from_linear(lin))):
        x = torch.randn(tokens, fin, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(tokens, fout, device="cuda", dtype=torch.bfloat16)
        for _ in range(5):
            m(x).backward(dy)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            m(x).backward(dy)
        host_ms = (time.perf_counter() - t0) / calls * 1e3  # time to queue a call
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) / calls * 1e3
        res[name] = {"host_ms": host_ms, "wall_ms": wall_ms, "gpu_ms": bench(lambda: m(x).backward(dy))}
        print(f"| {name} | {host_ms:.3f} | {wall_ms:.3f} | {res[name]['gpu_ms']:.3f} |", flush=True)
        if name == "fp8":
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                m(x).backward(dy)
            prof.disable()
            torch.cuda.synchronize()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
            res["profile"] = buf.getvalue()
            print("\n".join(line for line in buf.getvalue().splitlines()[6:40] if line.strip()), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--sections", default="gemm,quant,grouped,wgrad,linear")
    ap.add_argument("--timing", choices=("launch", "gpu"), default="launch",
                    help="launch: do_bench, host launch included where it outlasts the GPU; gpu: device time")
    args = ap.parse_args()
    global TIMING
    TIMING = args.timing
    assert torch.cuda.is_available(), "bench_kernels.py needs a CUDA GPU"
    sections = args.sections.split(",")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} "
          f"| CUDA {torch.version.cuda} | timing {TIMING}")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "cuda": torch.version.cuda, "timing": TIMING}
    shapes = GEMM_SHAPES[:2] if args.quick else GEMM_SHAPES
    if "gemm" in sections:
        print("\n## FP8 GEMM, TFLOP/s (dgrad / wgrad: the TMA kernel on the same layer's backward layouts)")
        print("| M x N x K | shape | bf16 matmul | FP8 rowwise (cuBLAS) | FP8 blockwise (cuBLAS) | "
              "ours classic | ours TMA | best Triton / cuBLAS blockwise | ours Gluon pipelined (best config) | "
              "pipelined / cuBLAS | ours Gluon warp-specialized | warp-specialized / cuBLAS | "
              "dgrad TMA | dgrad Gluon pipelined | dgrad Gluon warp-specialized | dgrad cuBLAS | "
              "wgrad TMA (fp32 out) | "
              "wgrad Gluon | wgrad cuBLAS | wgrad Gluon warp-specialized (bf16 out; quarters) | wgrad WS halves | "
              "wgrad cuBLAS (bf16 out) | "
              "wgrad warp-specialized / cuBLAS (bf16) | auto picks (3 tries) |")
        print("|" + " --- |" * 25)
        results["gemm"] = gemm_section(shapes)
    if "quant" in sections:
        print("\n## Quantization kernels, GB/s (bf16 in, fp8 + scales out)")
        print("| shape | act 1x128 | act 128x1 (transposed read) | weight 128x128 | act dual (both layouts) | "
              "weight dual (w and w^T) | act: two passes -> dual, ms | weight: quant + transpose -> dual, ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        results["quant"] = quant_section()
    if "actdual" in sections:
        print("\n## An activation's two FP8 layouts, ms (GB/s: one read, both writes)")
        print("| M x K | two single-layout passes | sweep kernel | strip kernel | two passes / strips | "
              "just written: two passes | sweeps | strips | two passes / strips |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        results["actdual"] = act_dual_section()
    if "combine" in sections:
        print("\n## The experts' combine backward (d out_perm, d topk_w), ms")
        print("| tokens x width | eager (before) | one Triton pass | speedup |")
        print("| --- | --- | --- | --- |")
        results["combine"] = combine_backward_section()
    if "grouped" in sections:
        print("\n## Grouped GEMM, 32768 routed rows x N=1536 x K=2048, TFLOP/s of the routed FLOPs")
        print("| experts | dense GEMM (same FLOPs) | ours classic bf16 | ours TMA bf16 | ours classic FP8 | "
              "ours TMA FP8 | per-expert loop bf16 | torch._grouped_mm bf16 | best ours bf16 / dense | "
              "ours Gluon warp-specialized bf16 | warp-specialized bf16 / dense | "
              "bf16 ceiling / dense (padding, memory) | padding ceiling, 64-row tiles | dense FP8 GEMM | "
              "ours TMA FP8 / dense FP8 | ours Gluon FP8 pipelined (best config) | pipelined / dense FP8 | "
              "ours Gluon FP8 warp-specialized | warp-specialized / dense FP8 | auto |")
        print("|" + " --- |" * 20)
        results["grouped"] = grouped_section([1, 8, 32] if args.quick else [1, 4, 8, 16, 32, 64, 128, 256])
    if "grouped_order" in sections:
        print("\n## bf16 grouped GEMM / dense (32768 routed rows x N=1536 x K=2048): launch order and routing")
        cols = [grouped_order_name(c, g) for c in GROUPED_ORDER_CONFIGS for g in GROUPED_ORDER_GROUP_MS] + ["gluon_ws"]
        print("| experts | routing | padding ceiling | dense TFLOP/s | " + " | ".join(cols) + " |")
        print("|" + " --- |" * (4 + len(cols)))
        results["grouped_order"] = grouped_order_section()
    if "wgrad" in sections:
        print("\n## Experts' FP8 weight gradient, `small` MoE layer (32 experts, 65,536 routed rows), ms (TFLOP/s)")
        print("| weights | one grouped launch | per-expert loop (host read + 32 GEMMs) | speedup |")
        print("| --- | --- | --- | --- |")
        results["wgrad"] = wgrad_section()
    if "linear" in sections:
        print(f"\n## One linear's forward + backward, 16,384 tokens, ms (CUDA events, back to back)")
        print("| layer | in -> out | bf16 | FP8 previous passes | FP8 now, weight quantized every call | "
              "FP8 now, weight cached | bf16 / FP8 cached |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        results["linear"] = linear_section()
    if "dispatch" in sections:
        print("\n## The trainer's FP8 experts, forward + backward (16,384 tokens, top 4 of 32), ms")
        print("| width | bf16 experts | FP8, unfused SwiGLU (before) | FP8 now | before / now | bf16 / FP8 now |")
        print("| --- | --- | --- | --- | --- | --- |")
        results["dispatch"] = dispatch_section()
    if "host" in sections:
        print(f"\n## Host time of one linear's forward + backward (1024 -> 512, 16,384 tokens), ms per call")
        print("| path | host (queueing) | wall | GPU (do_bench) |")
        print("| --- | --- | --- | --- |")
        results["host"] = host_section()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
