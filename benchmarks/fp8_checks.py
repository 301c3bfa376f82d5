"""Correctness checks of the FP8 kernels beyond the reference tests (issue 7: the FP8 loss spikes).

    python benchmarks/fp8_checks.py workload [--big] [--no-tma-store]   every kernel once on ragged shapes
    python benchmarks/fp8_checks.py tma_probe                does initcheck see what a TMA store wrote?
    python benchmarks/fp8_checks.py determinism OUT.json    bitwise repeatability, per kernel and step

`workload` is what compute-sanitizer runs (benchmarks/run_fp8_checks.sh: memcheck, initcheck with
PyTorch's caching allocator off, so that every tensor is its own allocation, racecheck): quantizers,
the FP8 GEMM in its three layouts (classic, TMA, cuBLAS), the grouped GEMM (bf16, FP8), its FP8
weight gradient, permute and combine, an FP8Linear and FP8 experts forward + backward. Shapes are
ragged on purpose: 248 tokens (not a multiple of 16 or 128, as the MTP block's 8 x 2047 = 16,376;
`--big` adds that shape itself), a routing with two empty experts, one of exactly 128 rows and one
of a single row. Every autotuner keeps its first config (no benchmarking under the sanitizer).

NOTE: compute-sanitizer's initcheck (2025.3) reported reads of the TMA grouped GEMM's output by the
combine kernel as reads of uninitialized memory, although every GPU test finds those rows right.
`tma_probe` asks whether it tracks TMA stores at all (a torch reduction over an FP8 GEMM output
written with pointer stores, then over one written by a TMA store); `--no-tma-store` runs the
workload without the kernels that store through TMA (classic GEMMs, cuBLAS), so that initcheck
judges everything else.

`determinism` answers: does a kernel give the same bits when called again on the same inputs; do
the autotuner's configs, the two Triton kernels and cuBLAS give the same bits as each other (if
not, the timed choices make runs differ); which backend `auto` picks when asked five times afresh;
do an FP8Linear, the FP8 experts and the whole `small` model (bf16 and FP8) give the same loss and
gradients twice, and with torch.use_deterministic_algorithms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS when asked for

# sizes of the determinism checks: the `small` profile's (16,384 tokens a micro-batch; the MTP block's
# 16,376); `--tiny` shrinks them so that the script's logic runs on CPU under TRITON_INTERPRET=1
SIZES = {"tokens": 16384, "mtp_tokens": 16376, "model_batch": (8, 2048), "model": {}}
TINY = {"tokens": 256, "mtp_tokens": 248, "model_batch": (2, 64),
        "model": {"model.vocab_size": 512, "tokenizer.vocab_size": 512, "model.hidden_size": 128, "model.intermediate_size": 256,
                  "model.num_attention_heads": 2, "model.q_lora_rank": 64, "model.kv_lora_rank": 32,
                  "model.moe_intermediate_size": 128, "model.n_routed_experts": 8, "model.n_group": 2,
                  "model.topk_group": 1, "model.num_experts_per_tok": 2}}
DEV = "cuda"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _single_configs() -> None:
    """Every Triton autotuner keeps its first config only: no benchmarking (workload under the sanitizer)."""
    from triton.runtime.autotuner import Autotuner

    from kernels import fp8_gemm, moe

    for mod in (fp8_gemm, moe):
        for v in list(vars(mod).values()):
            for t in (v.values() if isinstance(v, dict) else [v]):
                if isinstance(t, Autotuner):
                    t.configs = t.configs[:1]


def _routing_ids(T: int, k: int, E: int, device) -> "torch.Tensor":  # noqa: F821
    """(T, k) expert ids whose counts include 128 exactly, 1, and two empty experts (2 and E-1)."""
    import torch

    n = T * k
    fixed = [torch.full((128,), 0), torch.full((1,), 1), torch.full((n // 3,), 3)]
    rest = n - sum(len(f) for f in fixed)
    flat = torch.cat(fixed + [torch.randint(4, E - 1, (rest,))])
    return flat[torch.randperm(n)].view(T, k).to(device)


def _gemm_layouts(M: int, N: int, K: int, dtype=None):
    """The three products of a linear y (M, N) = x (M, K) @ w (N, K)^T, as fp8_gemm operands:
    {"forward": (a, sa, b, sb, b_block), "dgrad": ..., "wgrad": ...} from the Triton quantizers."""
    import torch

    from kernels.fp8_quant import TILE, act_quant_dual_triton, act_quant_triton, weight_quant_dual_triton

    dtype = dtype or torch.bfloat16
    x = torch.randn(M, K, device=DEV, dtype=dtype)
    w = torch.randn(N, K, device=DEV, dtype=dtype) / K**0.5
    dy = torch.randn(M, N, device=DEV, dtype=dtype)
    xq, xs, xtq, xts = act_quant_dual_triton(x)
    wq, ws, wtq, wts = weight_quant_dual_triton(w)
    dyq, dys = act_quant_triton(dy)
    dytq, dyts = act_quant_triton(dy.t(), pad_to=TILE)
    return {"forward": (xq, xs, wq, ws, TILE), "dgrad": (dyq, dys, wtq, wts, TILE), "wgrad": (dytq, dyts, xtq, xts, 1)}


def tma_probe() -> None:
    from kernels.fp8_gemm import fp8_gemm_triton

    _single_configs()
    a, sa, b, sb, bb = _gemm_layouts(256, 512, 512)["forward"]
    for impl in ("classic", "tma"):
        _sync()
        print(f"probe {impl}: start", flush=True)
        c = fp8_gemm_triton(a, sa, b, sb, bb, impl=impl, config=0)
        print(f"probe {impl}: sum {float(c.float().sum()):.4f}", flush=True)  # a torch kernel reads c
        _sync()
        print(f"probe {impl}: end", flush=True)


def workload(big: bool, no_tma_store: bool = False) -> None:
    import torch

    from kernels import fp8_quant as Q
    from kernels import moe as MO
    from kernels import routing as RT
    from kernels.experts import GroupedExperts
    from kernels.fp8_gemm import fp8_gemm_cublas, fp8_gemm_triton
    from kernels.fp8_linear import FP8Linear

    _single_configs()
    torch.manual_seed(0)
    dev, bf = DEV, torch.bfloat16
    impls = ("classic",) if no_tma_store else ("classic", "tma")
    if no_tma_store:  # `auto` inside the experts then has only the classic grouped GEMM to pick
        MO._tma_fits = lambda *args: False

    def done(name: str) -> None:
        _sync()
        print(f"ok {name}", flush=True)

    for M, K in [(300, 200), (248, 384), (1, 128)] + ([(16376, 1024)] if big else []):
        x = torch.randn(M, K, device=dev, dtype=bf)
        Q.act_quant_triton(x)
        Q.act_quant_triton(x.t(), pad_to=128)
        Q.act_quant_dual_triton(x)
        Q.act_quant_dual_triton(torch.randn(K, M, device=dev, dtype=bf).t())
        Q.act_quant_two_pass_triton(x)
        Q.weight_quant_triton(x)
        Q.weight_quant_dual_triton(x)
    Q.weight_quant_dual_triton(torch.randn(3, 200, 136, device=dev, dtype=bf))
    Q.weight_quant_dual_triton(torch.randn(4, 256, 384, device=dev, dtype=torch.float32))
    done("quantizers")

    # (cuBLAS takes K a multiple of 512 with weight blocks, M and N multiples of 16: 256 x 512 x 512)
    for M, N, K in [(248, 384, 640), (248, 512, 512), (256, 512, 512)] + ([(16376, 512, 1024)] if big else []):
        for name, (a, sa, b, sb, bb) in _gemm_layouts(M, N, K).items():
            for impl in impls:
                fp8_gemm_triton(a, sa, b, sb, bb, impl=impl, config=0)
            try:
                fp8_gemm_cublas(a, sa, b, sb, bb)
            except (RuntimeError, ValueError) as e:
                print(f"cublas refuses {name} {M}x{N}x{K}: {str(e).splitlines()[0][:100]}")
            done(f"fp8_gemm {name} {M}x{N}x{K}")

    T, k, E, D, N = 300, 2, 8, 384, 256
    r = RT.make_routing(_routing_ids(T, k, E, dev), E)
    x = torch.randn(T, D, device=dev, dtype=bf)
    w = torch.randn(E, N, D, device=dev, dtype=bf) / D**0.5
    xp = RT.permute(x, r)
    for impl in impls:
        o = MO.grouped_gemm(xp, w, r, impl=impl, config=0)
    RT.combine(o, torch.rand(T, k, device=dev), r)
    xq, xs = Q.act_quant_triton(x)
    wq, ws, _, _ = Q.weight_quant_dual_triton(w)
    for impl in impls:
        MO.grouped_gemm(RT.permute(xq, r), wq, r, RT.permute(xs, r), ws, impl=impl, config=0)
    dq, ds = Q.act_quant_triton(torch.randn(r.padded_rows, N, device=dev, dtype=bf).t())
    xtq, xts = Q.act_quant_triton(xp.t())
    MO.grouped_wgrad_fp8(dq, ds, xtq, xts, r, config=0, out_dtype=bf)
    done("moe kernels")

    for M in [248] + ([16376] if big else []):
        lin = torch.nn.Linear(512, 512, bias=False, device=dev, dtype=bf)
        xin = torch.randn(M, 512, device=dev, dtype=bf, requires_grad=True)
        for backend in ("triton_classic", "cublas") if no_tma_store else ("triton_tma", "triton_classic", "cublas"):
            try:
                FP8Linear.from_linear(lin, backend=backend)(xin).float().square().sum().backward()
                done(f"FP8Linear {backend} M={M}")
            except (RuntimeError, ValueError) as e:
                print(f"FP8Linear {backend} M={M} refused: {str(e).splitlines()[0][:100]}")
    ex = GroupedExperts(E, D, 128, init_std=0.05).to(dev, bf)
    ex.fp8 = True
    xe = torch.randn(T, D, device=dev, dtype=bf, requires_grad=True)
    ex(xe, _routing_ids(T, k, E, dev), torch.rand(T, k, device=dev)).float().square().sum().backward()
    done("FP8 experts forward + backward")
    print("workload done", flush=True)


# ---------------------------------------------------------------------------------------------
# determinism


def _bits(x):
    """A tensor (or tuple of them) as raw bytes for bitwise comparison (NaN == NaN bitwise)."""
    import torch

    if isinstance(x, (tuple, list)):
        return [_bits(t) for t in x]
    x = x.detach().contiguous()
    return x.view(torch.uint8) if x.dtype.itemsize == 1 else x.view(getattr(torch, f"int{8 * x.dtype.itemsize}"))


def _same(a, b) -> bool:
    import torch

    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and torch.equal(a, b)


def _rel(a, b) -> float:
    if isinstance(a, (tuple, list)):
        return max(_rel(x, y) for x, y in zip(a, b))
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare(fns: dict, repeats: int = 3) -> dict:
    """Each fn called `repeats` times: stable (all calls bitwise equal); then each fn's first result
    against the first fn's: bitwise equal, relative difference. Failures are recorded, not raised."""
    import torch

    out, first = {}, None
    for name, fn in fns.items():
        try:
            results = [fn() for _ in range(repeats)]
            _sync()
        except Exception as e:  # a config that does not fit, a refused layout
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
            continue
        bits = [_bits(r) for r in results]
        rec = {"stable": all(_same(bits[0], b) for b in bits[1:])}
        if first is None:
            first = (name, results[0], bits[0])
        else:
            rec["bitwise_equal_to_" + first[0]] = _same(first[2], bits[0])
            rec["rel_diff_to_" + first[0]] = _rel(results[0], first[1])
        out[name] = rec
    return out


def _kernel_checks(res: dict, save) -> None:
    import torch

    from kernels import fp8_quant as Q
    from kernels import moe as MO
    from kernels import routing as RT
    from kernels.fp8_gemm import fp8_gemm_cublas, fp8_gemm_triton

    torch.manual_seed(0)
    T, T_mtp = SIZES["tokens"], SIZES["mtp_tokens"]
    x = torch.randn(T, 1024, device=DEV, dtype=torch.bfloat16)
    res[f"act_quant {T}x1024"] = compare({"dual": lambda: Q.act_quant_dual_triton(x),
                                           "strips": lambda: Q.act_quant_dual_triton(x, kernel="strips"),
                                           "two_pass": lambda: Q.act_quant_two_pass_triton(x)})
    w = torch.randn(32, 512, 1024, device=DEV, dtype=torch.bfloat16)
    res["weight_quant_dual 32x512x1024"] = compare({"dual": lambda: Q.weight_quant_dual_triton(w)})
    save()
    for M, N, K in [(T, 2816, 1024), (T_mtp, 512, 1024), (T, 1024, 512)]:
        for layout, (a, sa, b, sb, bb) in _gemm_layouts(M, N, K).items():
            fns = {"cublas": lambda: fp8_gemm_cublas(a, sa, b, sb, bb)}
            fns.update({f"tma_{i}": (lambda i=i: fp8_gemm_triton(a, sa, b, sb, bb, impl="tma", config=i))
                        for i in (0, 1, 3)})
            fns.update({f"classic_{i}": (lambda i=i: fp8_gemm_triton(a, sa, b, sb, bb, impl="classic", config=i))
                        for i in (0, 2)})
            res[f"fp8_gemm {layout} {M}x{N}x{K}"] = compare(fns)
            save()
    k, E, D, N = 4, 32, 1024, 512
    r = RT.make_routing(_routing_ids(T, k, E, DEV), E)
    xt = torch.randn(T, D, device=DEV, dtype=torch.bfloat16)
    wt = torch.randn(E, N, D, device=DEV, dtype=torch.bfloat16) / D**0.5
    xp = RT.permute(xt, r)
    xq, xs = Q.act_quant_triton(xt)
    wq, ws, _, _ = Q.weight_quant_dual_triton(wt)
    fp8_args = (RT.permute(xq, r), wq, r, RT.permute(xs, r), ws)
    for fp8, args in ((False, (xp, wt, r)), (True, fp8_args)):
        fns = {f"tma_{i}": (lambda i=i, args=args: MO.grouped_gemm(*args, impl="tma", config=i)) for i in (0, 1, 2)}
        fns.update({f"classic_{i}": (lambda i=i, args=args: MO.grouped_gemm(*args, impl="classic", config=i))
                    for i in (0, 2)})
        fns["classic_default"] = lambda args=args: MO.grouped_gemm(*args, impl="classic")
        res[f"grouped_gemm {'fp8' if fp8 else 'bf16'} E={E} N={N} K={D}"] = compare(fns)
        save()
    dq, ds = Q.act_quant_triton(torch.randn(r.padded_rows, N, device=DEV, dtype=torch.bfloat16).t())
    xtq, xts = Q.act_quant_triton(xp.t())
    res["grouped_wgrad_fp8"] = compare({f"config_{i}": (lambda i=i: MO.grouped_wgrad_fp8(dq, ds, xtq, xts, r, config=i,
                                                                                        out_dtype=torch.bfloat16))
                                        for i in (0, 1, 2)})
    tw = torch.rand(T, k, device=DEV)
    out = MO.grouped_gemm(xp, wt, r)
    res["permute + combine"] = compare({"triton": lambda: (RT.permute(xt, r), RT.combine(out, tw, r))})
    save()


def _auto_flips(res: dict, rounds: int = 5) -> None:
    """Which backend `auto` picks for a few of the small model's FP8 layouts, asked `rounds` times afresh."""
    import torch

    from kernels import fp8_gemm as G

    picks = {}
    T, T_mtp = SIZES["tokens"], SIZES["mtp_tokens"]
    for M, N, K in [(T, 512, 1024), (T, 2816, 1024), (T, 1024, 2816), (T_mtp, 1536, 1024)]:
        for layout, (a, sa, b, sb, bb) in _gemm_layouts(M, N, K).items():
            got = []
            for _ in range(rounds):
                G._BACKEND_CACHE.clear()
                got.append(G.pick_backend(a, sa, b, sb, bb, torch.bfloat16))
            picks[f"{layout} {M}x{N}x{K}"] = got
    G._BACKEND_CACHE.clear()
    res["auto picks, 5 fresh choices per layout"] = picks


def _module_checks(res: dict) -> None:
    import torch

    from kernels.experts import GroupedExperts
    from kernels.fp8_linear import FP8Linear

    torch.manual_seed(1)
    T = SIZES["tokens"]
    lin = torch.nn.Linear(1024, 1536, bias=False, device=DEV, dtype=torch.bfloat16)
    for M in (T, SIZES["mtp_tokens"]):
        x = torch.randn(M, 1024, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(M, 1536, device=DEV, dtype=torch.bfloat16)

        def step(backend):
            x.grad = lin.weight.grad = None
            y = FP8Linear.from_linear(lin, backend=backend)(x)
            y.backward(g)
            return y.detach().clone(), x.grad.clone(), lin.weight.grad.clone()

        res[f"FP8Linear fwd+bwd M={M} K=1024 N=1536 (y, dx, dw)"] = compare(
            {b: (lambda b=b: step(b)) for b in ("auto", "cublas", "triton_tma", "triton_classic")}, repeats=2)
    ex = GroupedExperts(32, 1024, 512, init_std=0.02).to(DEV, torch.bfloat16)
    ex.fp8 = True
    xe = torch.randn(T, 1024, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    tw, ids = torch.topk(torch.randn(T, 32, device=DEV).softmax(-1), 4)

    def experts_step():
        xe.grad = None
        for p in ex.parameters():
            p.grad = None
        y = ex(xe, ids, tw)
        y.float().square().sum().backward()
        return y.detach().clone(), xe.grad.clone(), ex.w1.grad.clone(), ex.w2.grad.clone(), ex.w3.grad.clone()

    res[f"FP8 experts fwd+bwd E=32 D=1024 I=512 T={T} k=4 (y, dx, dw1, dw2, dw3)"] = compare(
        {"auto": experts_step}, repeats=3)


def _model_checks(res: dict, save, layers: int) -> None:
    """The `small` model (training/model, expert-parallel wrapper EP=1, bf16 weights) on one micro-batch of
    8 x 2048 random tokens: loss and every gradient, three times; then with deterministic algorithms."""
    import torch

    from training import distributed
    from training.engine import apply_speed_options
    from training.expert_parallel import apply_expert_parallel
    from training.model import Transformer
    from training.pretrain import convert_model_to_fp8
    from training.settings import load_profile

    profile = load_profile("small", {"model.num_hidden_layers": layers, "pretrain.compile": False, **SIZES["model"]})
    distributed.init()
    B, S = SIZES["model_batch"]
    for precision in ("bf16", "fp8"):
        torch.manual_seed(0)
        with torch.device(DEV):
            model = Transformer(profile.model)
        apply_expert_parallel(model, 1)
        if precision == "fp8":
            convert_model_to_fp8(model, emulate=DEV == "cpu")
        apply_speed_options(model, profile.pretrain)
        model.to(torch.bfloat16).train()
        batch = torch.randint(0, profile.model.vocab_size, (B, S + 1), device=DEV)
        counters = [m.gate.tokens_per_expert for m in model.moe_layers().values()]

        def step():
            for p in model.parameters():
                p.grad = None
            out = model(batch[:, :-1], batch[:, 1:])
            out.loss.backward()
            for c in counters:
                c.zero_()
            return [out.loss.detach()] + [p.grad for p in model.parameters()]

        step()  # autotuning and backend choices happen here
        for det in (False, True):
            torch.use_deterministic_algorithms(det, warn_only=True)
            t0 = time.time()
            runs = [[t.clone() for t in step()] for _ in range(3)]
            names = ["loss"] + [n for n, _ in model.named_parameters()]
            differ = {n: _rel(a, b) for n, a, b in zip(names, runs[1], runs[0]) if not torch.equal(a, b)}
            differ3 = [n for n, a, b in zip(names, runs[2], runs[0]) if not torch.equal(a, b)]
            res[f"model {precision} {layers} layers, deterministic_algorithms={det}"] = {
                "loss": [float(r[0]) for r in runs], "tensors": len(names),
                "differ_run2_vs_run1": len(differ), "differ_run3_vs_run1": len(differ3),
                "largest_rel_diffs": dict(sorted(differ.items(), key=lambda kv: -kv[1])[:12]),
                "seconds": round(time.time() - t0, 1)}
            save()
        torch.use_deterministic_algorithms(False)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def determinism(out: Path, layers: int, parts: list[str]) -> None:
    import torch

    res: dict = {"device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "torch": torch.__version__}

    def save():
        out.write_text(json.dumps(res, indent=1, default=str))

    steps = {"kernels": lambda: _kernel_checks(res, save), "auto": lambda: _auto_flips(res),
             "modules": lambda: _module_checks(res), "model": lambda: _model_checks(res, save, layers)}
    for part in parts:
        t0 = time.time()
        try:
            steps[part]()
        except Exception as e:  # record and go on: one failure must not cost the others
            import traceback

            res[f"{part} error"] = traceback.format_exc()[-2000:]
            print(f"{part}: {type(e).__name__}: {e}", flush=True)
        res[f"{part} seconds"] = round(time.time() - t0, 1)
        save()
        print(f"{part} done in {time.time() - t0:.0f}s", flush=True)


def _patch_interpreter() -> None:
    """numpy >= 2.4 refuses int() of a 1-element array, which Triton 3.6's interpreter does for loop
    bounds (the same patch as tests/test_kernels_interpret.py)."""
    import numpy as np
    import triton.runtime.interpreter as ti

    orig = ti._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    ti._patch_lang_tensor = patched


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("workload")
    w.add_argument("--big", action="store_true", help="also the MTP block's 16,376-token shapes")
    w.add_argument("--no-tma-store", action="store_true", help="leave out the kernels that store through TMA")
    t = sub.add_parser("tma_probe")
    d = sub.add_parser("determinism")
    d.add_argument("out", type=Path)
    d.add_argument("--layers", type=int, default=12)
    d.add_argument("--parts", nargs="+", default=["kernels", "auto", "modules", "model"])
    for p in (w, d, t):
        p.add_argument("--tiny", action="store_true", help="CPU logic check under TRITON_INTERPRET=1")
    a = ap.parse_args()
    if a.tiny:
        global DEV
        DEV = "cpu"
        SIZES.update(TINY)
        _patch_interpreter()
    if a.cmd == "workload":
        workload(a.big, a.no_tma_store)
    elif a.cmd == "tma_probe":
        tma_probe()
    else:
        determinism(a.out, a.layers, a.parts)


if __name__ == "__main__":
    main()
