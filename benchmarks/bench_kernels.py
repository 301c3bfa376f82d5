"""All kernel benchmarks in one call; prints tables, writes JSON (`--json PATH`).

    python benchmarks/bench_kernels.py [--quick] [--json results.json]

1. FP8 blockwise GEMM (ours, Triton) against torch._scaled_mm with rowwise and blockwise scales
   (cuBLAS) and against a bf16 matmul, on DeepSeek-V3 shapes, MoE expert shapes and small shapes;
   plus our dgrad / wgrad layouts and the quantization kernels' bandwidth.
2. Grouped GEMM over experts (ours bf16 / FP8, torch._grouped_mm when present) against a per-expert
   loop and one dense GEMM with the same FLOPs, as the expert count grows.
3. A training step of an MLP stack in FP8 (our FP8Linear) against bf16 at several widths:
   tokens/s and the relative loss gap after a fixed number of steps on the same data. NOTE: this
   stands in for the `small` profile's model step, which lives in training/ (not in kernels/).

Times are medians of triton.testing.do_bench (CUDA events) after a warm-up call; inputs are fresh
random tensors (never zeros).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402  (a GPU script: triton is required here)

from kernels.fp8_gemm import fp8_gemm_cublas, fp8_gemm_triton, pick_backend  # noqa: E402
from kernels.fp8_quant import act_quant_triton, weight_quant_triton  # noqa: E402
from kernels.moe import grouped_gemm, make_routing, permute  # noqa: E402

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


def bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # ms


def tflops(flop: float, ms: float) -> float:
    return flop / ms / 1e9


def try_bench(fn):
    try:
        return bench(fn)
    except Exception as e:  # a peer that this torch / cuBLAS refuses: record why
        return f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:80]})"


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
        r["fp8_blockwise_ours"] = bench(lambda: fp8_gemm_triton(xq, xs, wq, ws, 128))
        # the backward layouts of the same layer: dgrad (M,N)x(N,K) and wgrad over M tokens
        dyq, dys = act_quant_triton(torch.randn(M, N, device="cuda", dtype=torch.bfloat16))
        wtq, wts = wq.t().contiguous(), ws.t().contiguous()
        r["dgrad_ours"] = bench(lambda: fp8_gemm_triton(dyq, dys, wtq, wts, 128))
        dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        dtq, dts = act_quant_triton(dy.t())
        xtq, xts = act_quant_triton(x.t())
        r["wgrad_ours"] = bench(lambda: fp8_gemm_triton(dtq, dts, xtq, xts, 1, torch.float32))
        r["auto_choice"] = pick_backend(xq, xs, wq, ws, 128, torch.bfloat16)
        from kernels.fp8_gemm import _fp8_gemm_tuned
        r["triton_config"] = str(getattr(_fp8_gemm_tuned, "best_config", ""))
        for key in ("bf16", "fp8_rowwise_cublas", "fp8_blockwise_cublas", "fp8_blockwise_ours",
                    "dgrad_ours", "wgrad_ours"):
            if isinstance(r[key], float):
                r[key + "_tflops"] = tflops(flop, r[key])
        rows.append(r)
        print(fmt_gemm_row(r), flush=True)
    return rows


def fmt(v):
    return f"{v:7.0f}" if isinstance(v, float) else "    n/a"


def fmt_gemm_row(r):
    t = lambda k: fmt(r.get(k + "_tflops"))  # noqa: E731
    return (f"| {r['M']} x {r['N']} x {r['K']} | {r['label']} | {t('bf16')} | {t('fp8_rowwise_cublas')} | "
            f"{t('fp8_blockwise_cublas')} | {t('fp8_blockwise_ours')} | {t('dgrad_ours')} | "
            f"{t('wgrad_ours')} | {r['auto_choice']} |")


def quant_section() -> list[dict]:
    rows = []
    for M, K in [(4096, 7168), (16384, 2048)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        nbytes = M * K * (2 + 1) + M * (K // 128) * 4
        ms_a = bench(lambda: act_quant_triton(x))
        ms_t = bench(lambda: act_quant_triton(x.t()))
        ms_w = bench(lambda: weight_quant_triton(x))
        rows.append({"shape": f"{M}x{K}", "act_quant_GBps": nbytes / ms_a / 1e6,
                     "act_quant_transposed_GBps": nbytes / ms_t / 1e6,
                     "weight_quant_GBps": nbytes / ms_w / 1e6})
        print(f"| {M} x {K} | {rows[-1]['act_quant_GBps']:.0f} | {rows[-1]['act_quant_transposed_GBps']:.0f} "
              f"| {rows[-1]['weight_quant_GBps']:.0f} |", flush=True)
    return rows


def grouped_section(expert_counts, rows_total=32768, K=2048, N=1536) -> list[dict]:
    out = []
    x_tok = torch.randn(rows_total, K, device="cuda", dtype=torch.bfloat16)
    dense_w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    flop = 2.0 * rows_total * N * K
    ms_dense = bench(lambda: x_tok @ dense_w.t())
    for E in expert_counts:
        # rows_total (token, expert) pairs, top-1 routing of rows_total tokens, uniform experts
        ids = torch.randint(0, E, (rows_total, 1), device="cuda")
        r = make_routing(ids, E)
        xp = permute(x_tok, r)
        w = torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16) / math.sqrt(K)
        res = {"experts": E, "dense_ms": ms_dense}
        res["grouped_bf16_ms"] = bench(lambda: grouped_gemm(xp, w, r))
        from kernels.moe import _grouped_gemm_tuned
        res["triton_config"] = str(getattr(_grouped_gemm_tuned, "best_config", ""))
        xq, xs = act_quant_triton(xp)
        wq, ws = weight_quant_triton(w.view(E * N, K))
        wq, ws = wq.view(E, N, K), ws.view(E, N // 128, K // 128)
        res["grouped_fp8_ms"] = bench(lambda: grouped_gemm(xq, wq, r, xs, ws))
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
        res["grouped_bf16_vs_dense"] = ms_dense / res["grouped_bf16_ms"]
        out.append(res)
        g = lambda k: fmt(res.get(k))  # noqa: E731
        print(f"| {E} | {g('dense_tflops')} | {g('grouped_bf16_tflops')} | {g('grouped_fp8_tflops')} | "
              f"{g('loop_bf16_tflops')} | {g('torch_grouped_mm_tflops')} | "
              f"{res['grouped_bf16_vs_dense']:.2f} |", flush=True)
    return out


def train_section(widths, tokens=8192, layers=4, steps=30) -> list[dict]:
    from torch import nn

    from kernels.convert import FP8Config, convert_to_fp8
    out = []
    for d in widths:
        torch.manual_seed(0)
        data = torch.randn(steps, tokens, d, device="cuda", dtype=torch.bfloat16)
        target_w = torch.randn(d, d, device="cuda", dtype=torch.bfloat16) / math.sqrt(d)
        res = {"width": d, "tokens": tokens, "layers": layers}
        losses = {}
        for prec in ("bf16", "fp8"):
            torch.manual_seed(1)
            model = nn.Sequential(*[nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
                                    for _ in range(layers)]).cuda().to(torch.bfloat16)
            if prec == "fp8":
                convert_to_fp8(model, FP8Config(backend="auto"))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(i):
                x = data[i % steps]
                loss = (model(x).float() - (x @ target_w).float()).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss
            for i in range(steps):
                loss = step(i)
            losses[prec] = loss.item()
            ms = bench(lambda: step(0))
            flop = 6.0 * tokens * layers * 2 * d * 4 * d
            res[f"{prec}_tokens_per_s"] = tokens / ms * 1e3
            res[f"{prec}_tflops"] = tflops(flop, ms)
            del model, opt
        res["loss_bf16"], res["loss_fp8"] = losses["bf16"], losses["fp8"]
        res["loss_gap_rel"] = (losses["fp8"] - losses["bf16"]) / losses["bf16"]
        res["speedup"] = res["fp8_tokens_per_s"] / res["bf16_tokens_per_s"]
        out.append(res)
        print(f"| {d} | {res['bf16_tokens_per_s']:.0f} | {res['fp8_tokens_per_s']:.0f} | "
              f"{res['speedup']:.2f} | {res['bf16_tflops']:.0f} | {res['fp8_tflops']:.0f} | "
              f"{res['loss_gap_rel'] * 100:+.3f}% |", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--sections", default="gemm,quant,grouped,train")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench_kernels.py needs a CUDA GPU"
    sections = args.sections.split(",")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} "
          f"| CUDA {torch.version.cuda}")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "cuda": torch.version.cuda}
    shapes = GEMM_SHAPES[:2] if args.quick else GEMM_SHAPES
    if "gemm" in sections:
        print("\n## FP8 GEMM, TFLOP/s (dgrad / wgrad: our kernel on the same layer's backward layouts)")
        print("| M x N x K | shape | bf16 matmul | FP8 rowwise (cuBLAS) | FP8 blockwise (cuBLAS) | "
              "FP8 blockwise (ours) | dgrad (ours) | wgrad (ours, fp32 out) | auto picks |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        results["gemm"] = gemm_section(shapes)
    if "quant" in sections:
        print("\n## Quantization kernels, GB/s (bf16 in, fp8 + scales out)")
        print("| shape | act 1x128 | act 128x1 (transposed read) | weight 128x128 |")
        print("| --- | --- | --- | --- |")
        results["quant"] = quant_section()
    if "grouped" in sections:
        print("\n## Grouped GEMM, 32768 routed rows x N=1536 x K=2048, TFLOP/s of the routed FLOPs")
        print("| experts | dense GEMM (same FLOPs) | grouped bf16 (ours) | grouped FP8 (ours) | "
              "per-expert loop bf16 | torch._grouped_mm bf16 | ours bf16 / dense |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        results["grouped"] = grouped_section([1, 8, 32] if args.quick else [1, 4, 8, 16, 32, 64, 128, 256])
    if "train" in sections:
        print("\n## Training step, 4-layer MLP stack (d -> 4d -> d), 8192 tokens, AdamW")
        print("| width d | bf16 tokens/s | FP8 tokens/s | speedup | bf16 TFLOP/s | FP8 TFLOP/s | "
              "loss gap after 30 steps |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        results["train"] = train_section([512, 1024, 2048] if args.quick else [512, 1024, 2048, 4096])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
