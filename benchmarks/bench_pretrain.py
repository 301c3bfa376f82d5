"""The `small` profile's trainer on H200s (issue 4, issue 7's training step): inputs, checks, figures.

    python benchmarks/bench_pretrain.py data DIR [--vocab 32768 --seq 2048 --train 1536]
    python benchmarks/bench_pretrain.py config DIR/NAME.json DATA_DIR OUT_DIR key=value ...
    python benchmarks/bench_pretrain.py checks OUT.json [--which ...]  (GPU: fast paths against references)
    python benchmarks/bench_pretrain.py summary RUNS_DIR LOGS_DIR OUT.json
    python benchmarks/bench_pretrain.py breakdown RUN/profile_rank0.json ...   (GPU time per step, by kind)

benchmarks/run_pretrain_device.sh runs all of it in one device call. The trainer itself is the real
one (`python -m training.pretrain --config FILE`, or torchrun for expert parallelism).

SYNTHETIC DATA: the token shards are generated here, not tokenized text, so the figures are
throughput (and an FP8-vs-BF16 loss gap on one learnable stream), not a language model's quality.
The stream: tokens drawn from a Zipf-like unigram, and every odd position is a fixed permutation of
the token before it, so half of the tokens are predictable and the loss has somewhere to go (from
ln(32768) = 10.4 nats towards about half the unigram entropy). It is written in exactly the layout of
training/corpus/shards.py (datatrove's DocumentTokenizer: `<split>/*.ds` uint16 tokens, `.ds.index`
uint64 document ends, `index.json`), with a word-level tokenizer.json of the same vocabulary, so the
trainer's input checks and loader run unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# inputs


def synthetic_stream(n_tokens: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like tokens; position 2i+1 = perm[token at 2i] (the learnable half)."""
    p = 1.0 / (np.arange(vocab) + 10.0)
    tokens = rng.choice(vocab, size=n_tokens, p=p / p.sum()).astype(np.int64)
    perm = np.random.default_rng(0).permutation(vocab)  # the same rule in every split
    tokens[1::2] = perm[tokens[0:-1:2]][: len(tokens[1::2])]
    return tokens


def write_split(out: Path, split: str, sequences: int, seq: int, vocab: int, seed: int) -> dict:
    n = sequences * (seq + 1)
    tokens = synthetic_stream(n, vocab, np.random.default_rng(seed))
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{split}_00000_00000_doc_shuffled.ds"
    dtype = "<u2" if vocab < 2**16 else "<u4"
    tokens.astype(dtype).tofile(folder / name)
    np.array([n], dtype="<u8").tofile(folder / f"{name}.index")  # one "document": the whole stream
    (folder / f"{name}.metadata").write_text(f"synthetic|{np.dtype(dtype).itemsize}\n{n}\n")
    return {"files": [name], "documents": 1, "tokens": n, "sequences": sequences,
            "tokens_per_source": {"synthetic": n}, "documents_per_source": {"synthetic": 1}}


def make_data(out: Path, vocab: int, seq: int, train: int, validation: int) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok_dir = out / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    words = {f"t{i}": i for i in range(vocab)}
    Tokenizer(WordLevel(words, unk_token="t0")).save(str(tok_dir / "tokenizer.json"))
    shards = out / "pretraining_shards"
    index = {"sequence_length": seq, "tokenizer": str(tok_dir / "tokenizer.json"), "vocab_size": vocab,
             "token_bytes": 2 if vocab < 2**16 else 4, "eos_token": "t0",
             "synthetic": "benchmarks/bench_pretrain.py: Zipf tokens, odd positions a permutation of the previous",
             "splits": {"train": write_split(shards, "train", train, seq, vocab, 1),
                        "validation": write_split(shards, "validation", validation, seq, vocab, 2)}}
    (shards / "index.json").write_text(json.dumps(index, indent=2))
    return shards


def write_config(path: Path, data: Path, out: Path, overrides: list[str]) -> Path:
    import yaml

    from training.launch import StageConfig
    from training.settings import load_profile

    values = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
    profile = load_profile("small", values)
    return StageConfig(stage="v3_base", profile=profile.to_dict(), output_dir=str(out),
                       inputs={"pretraining_shards": str(data / "pretraining_shards"),
                               "tokenizer": str(data / "tokenizer")}).write(path)


# ---------------------------------------------------------------------------------------------
# GPU checks: every fast path against its reference, and the SDPA kernels timed on MLA's shapes


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check_grouped_experts() -> dict:
    """expert_swiglu's torch._grouped_mm path against its per-expert loop, bf16, one expert empty."""
    import torch

    import training.model.moe as moe

    torch.manual_seed(0)
    E, D, I, M = 32, 1024, 512, 65536
    w = [(torch.randn(E, I, D, device="cuda") / 32).bfloat16().requires_grad_() for _ in range(2)]
    w2 = (torch.randn(E, D, I, device="cuda") / 23).bfloat16().requires_grad_()
    expert = torch.randint(0, E, (M,), device="cuda")
    expert[expert == 5] = 6  # expert 5 receives nothing
    expert = expert.sort().values
    xs = torch.randn(M, D, device="cuda").bfloat16().requires_grad_()
    g = torch.randn(M, D, device="cuda").bfloat16()
    out = {}
    for name, grouped in (("loop", False), ("grouped_mm", True)):
        moe_use = moe.use_grouped_mm
        moe.use_grouped_mm = lambda x, w_, grouped=grouped: grouped
        try:
            for t in (xs, *w, w2):
                t.grad = None
            y = moe.expert_swiglu(xs, expert, w[0], w2, w[1])
            (y.float() * g.float()).sum().backward()
            out[name] = (y.detach(), [t.grad.clone() for t in (xs, w[0], w[1], w2)])
        finally:
            moe.use_grouped_mm = moe_use
    (ya, ga), (yb, gb) = out["loop"], out["grouped_mm"]
    return {"y_rel": _rel(yb, ya), "grad_rel": [_rel(b, a) for a, b in zip(ga, gb)],
            "empty_expert_grad_max": float(gb[1][5].abs().max()),
            "grouped_mm_used": moe.use_grouped_mm(xs, w[0])}


def check_fp8_experts() -> dict:
    """The FP8 grouped experts (Triton) against their CPU-style emulation on the same GPU data."""
    import torch

    from kernels.experts import grouped_swiglu

    torch.manual_seed(0)
    E, D, I, M = 32, 1024, 512, 8192
    w1, w3 = ((torch.randn(E, I, D, device="cuda") / 32).bfloat16() for _ in range(2))
    w2 = (torch.randn(E, D, I, device="cuda") / 23).bfloat16()
    x = torch.randn(M, D, device="cuda").bfloat16()
    ids = torch.randint(0, E, (M, 1), device="cuda")
    ones = torch.ones(M, 1, device="cuda")
    res = {}
    for emulate in (False, True):
        ws = [t.clone().requires_grad_() for t in (w1, w2, w3)]
        xr = x.clone().requires_grad_()
        y = grouped_swiglu(xr, ids, ones, *ws, fp8=True, emulate=emulate)
        y.float().square().mean().backward()
        res[emulate] = (y.detach(), xr.grad, ws[0].grad)
    return {"y_rel": _rel(res[False][0], res[True][0]), "dx_rel": _rel(res[False][1], res[True][1]),
            "dw1_rel": _rel(res[False][2], res[True][2])}


def check_fp8_linears(tokens: int = 16384) -> dict:
    """FP8Linear (Triton, cuBLAS, "auto") against its emulation on every linear shape of the `small`
    model, forward and both backward products, on the same GPU data: which backend is right where."""
    import torch

    from kernels import fp8_gemm
    from kernels.fp8_linear import FP8Linear

    shapes = {"q_a": (1024, 384), "q_b": (384, 1536), "kv_a": (1024, 288), "kv_b": (256, 2048),
              "o": (1024, 1024), "expert_up": (1024, 512), "expert_down": (512, 1024),
              "dense_up": (1024, 2816), "dense_down": (2816, 1024), "eh_proj": (2048, 1024)}
    out = {}
    for name, (fin, fout) in shapes.items():
        torch.manual_seed(0)
        lin = torch.nn.Linear(fin, fout, bias=False, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(tokens, fin, device="cuda", dtype=torch.bfloat16)
        g = torch.randn(tokens, fout, device="cuda", dtype=torch.bfloat16)
        res = {}
        for backend in ("emulate", "triton", "cublas", "auto"):
            m = FP8Linear.from_linear(lin, backend="auto" if backend == "emulate" else backend,
                                      emulate=backend == "emulate")
            xr = x.clone().requires_grad_()
            lin.weight.grad = None
            try:
                y = m(xr)
                y.backward(g)
                res[backend] = (y.detach().float(), xr.grad.float(), lin.weight.grad.float())
            except Exception as e:
                res[backend] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        ref = res["emulate"]
        row = {}
        for backend in ("triton", "cublas", "auto"):
            r = res[backend]
            row[backend] = r if isinstance(r, str) else [round(_rel(a, b), 5) for a, b in zip(r, ref)]
        out[name] = row
    out["auto_choices"] = {str(k): v for k, v in fp8_gemm._BACKEND_CACHE.items()}
    return out


def time_attention() -> dict:
    """Forward + backward of MLA's SDPA call (B 8, H 16, T 2048, qk 96, v 64) on each kernel."""
    import torch
    import triton

    from training.model.attention import MLA
    from training.settings import load_profile

    mla = MLA(load_profile("small").model, 0)
    B, H, T, dqk, dv = 8, 16, 2048, 96, 64
    q, k = (torch.randn(B, H, T, dqk, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    v = torch.randn(B, H, T, dv, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(B, H, T, dv, device="cuda", dtype=torch.bfloat16)
    flop = 3.5 * 2 * B * H * T * T * (dqk + dv) / 2  # causal, fwd + bwd (2.5x fwd)
    ref = None
    out = {}
    for backend in ("auto", "flash", "cudnn", "efficient"):
        def step():
            if backend == "auto":
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=mla.softmax_scale)
            else:
                y = mla._sdpa_on(backend, q, k, v, None)
            y.backward(g)
            return y
        try:
            y = step()
            ref = y.detach() if ref is None else ref
            ms = triton.testing.do_bench(step, warmup=10, rep=50, return_mode="median")
            out[backend] = {"ms": ms, "tflops": flop / ms / 1e9, "rel_vs_auto": _rel(y.detach(), ref)}
        except Exception as e:  # a kernel this torch refuses for these shapes
            out[backend] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    ok = {b: r["ms"] for b, r in out.items() if "ms" in r and r["rel_vs_auto"] < 2e-2}
    out["fastest"] = min(ok, key=ok.get) if ok else "auto"
    return out


def run_checks(path: Path, which: str) -> None:
    import torch

    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    checks = {"grouped_experts": check_grouped_experts, "fp8_experts": check_fp8_experts,
              "fp8_linears": check_fp8_linears, "attention": time_attention}
    for name, fn in ((n, checks[n]) for n in which.split(",")):
        try:
            res[name] = fn()
        except Exception as e:
            res[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
        print(name, json.dumps(res[name]), flush=True)
    path.write_text(json.dumps(res, indent=1))
    print(res.get("attention", {}).get("fastest", "auto"))


# ---------------------------------------------------------------------------------------------
# figures


def run_figures(run_dir: Path, skip_windows: int = 1) -> dict | None:
    """Steady-state tokens/s of one trainer run: the median of its logged windows after the first
    `skip_windows` (compilation, autotuning, allocator warm-up); final train loss; MFU."""
    hist_path = run_dir / "history.json"
    if not hist_path.is_file():
        return None
    from training.launch import StageConfig
    from training.model import flops_per_token

    stage = StageConfig.read(run_dir / "stage.json")
    profile = stage.resolved_profile()
    hist = json.loads(hist_path.read_text())
    windows = [h for h in hist if h.get("tokens_per_second")]
    steady = [h["tokens_per_second"] for h in windows[skip_windows:]] or [h["tokens_per_second"] for h in windows]
    tps = statistics.median(steady)
    seq = profile.shards.sequence_length
    fpt = flops_per_token(profile.model, seq, causal=True)
    fpt_no_mtp = flops_per_token(profile.model, seq, include_mtp=False, causal=True)
    gpus = profile.launch.nproc_per_node
    losses = [h["loss"] for h in hist if "loss" in h]
    return {"tokens_per_s": tps, "tokens_per_s_per_gpu": tps / gpus, "gpus": gpus,
            "windows": [w["tokens_per_second"] for w in windows],
            "flops_per_token": fpt, "flops_per_token_without_mtp": fpt_no_mtp,
            "mfu_989": fpt * tps / (989e12 * gpus), "mfu_790": fpt * tps / (790e12 * gpus),
            "final_loss": losses[-1] if losses else None, "losses": losses,
            "val_loss": next((h["val_loss"] for h in reversed(hist) if "val_loss" in h), None),
            "pretrain": {k: v for k, v in profile.flat().items() if k.startswith("pretrain.")}}


def hf_figures(log: Path) -> dict | None:
    import re

    if not log.is_file():
        return None
    m = re.search(r"([\d,]+) tokens/s, MFU ([\d.]+)% of 989, ([\d.]+)% of measured 790", log.read_text())
    if not m:
        return {"error": log.read_text()[-600:]}
    return {"tokens_per_s": float(m.group(1).replace(",", "")), "mfu_989": float(m.group(2)) / 100,
            "mfu_790": float(m.group(3)) / 100}


def summary(runs: Path, logs: Path, out: Path) -> None:
    """Every run under RUNS against the peer's batch-8 figure (logs/hf_peer.log; hf_peer_b16.log too)."""
    res = {"hf": {f.stem: hf_figures(f) for f in sorted(logs.glob("hf_peer*.log"))}, "runs": {}}
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        f = run_figures(d)
        if f:
            res["runs"][d.name] = f
    hf = (res["hf"].get("hf_peer") or {}).get("tokens_per_s")
    print("| run | GPUs | tokens/s | per GPU | MFU (989) | MFU (790) | x HF (batch 8) | final loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, h in res["hf"].items():
        if h and "tokens_per_s" in h:
            print(f"| transformers peer ({name}) | 1 | {h['tokens_per_s']:,.0f} | {h['tokens_per_s']:,.0f} | "
                  f"{h['mfu_989']:.1%} | {h['mfu_790']:.1%} | {h['tokens_per_s'] / hf if hf else math.nan:.2f} | - |")
    for name, f in res["runs"].items():
        ratio = f["tokens_per_s_per_gpu"] / hf if hf else math.nan
        f["x_hf_per_gpu"] = ratio
        print(f"| {name} | {f['gpus']} | {f['tokens_per_s']:,.0f} | {f['tokens_per_s_per_gpu']:,.0f} | "
              f"{f['mfu_989']:.1%} | {f['mfu_790']:.1%} | {ratio:.2f} | {f['final_loss']} |")
    for a, b in (("bf16_eager", "fp8_eager"), ("bf16_compile", "fp8_compile")):
        if a in res["runs"] and b in res["runs"]:
            ra, rb = res["runs"][a], res["runs"][b]
            gap = {"bf16": a, "fp8": b, "loss_bf16": ra["final_loss"], "loss_fp8": rb["final_loss"],
                   "rel_gap": (rb["final_loss"] - ra["final_loss"]) / ra["final_loss"],
                   "val_bf16": ra["val_loss"], "val_fp8": rb["val_loss"],
                   "val_rel_gap": (rb["val_loss"] - ra["val_loss"]) / ra["val_loss"],
                   "speed_fp8_over_bf16": rb["tokens_per_s"] / ra["tokens_per_s"]}
            res[f"fp8_vs_bf16_{a.split('_')[1]}"] = gap
            print(f"FP8 vs BF16 ({a} / {b}): train loss {gap['loss_bf16']:.4f} vs {gap['loss_fp8']:.4f} "
                  f"({gap['rel_gap']:+.3%}), validation {gap['val_bf16']:.4f} vs {gap['val_fp8']:.4f} "
                  f"({gap['val_rel_gap']:+.3%}), speed x{gap['speed_fp8_over_bf16']:.2f}")
    out.write_text(json.dumps(res, indent=1))


# kernel name -> what it does, for the per-step breakdown of a trainer's profile (profile_rank0.json)
def kernel_kind(name: str) -> str:
    n = name.lower()
    if "_fp8_gemm" in n or "_grouped_gemm_kernel" in n:
        return "FP8 GEMMs (Triton)"
    if "gemmuniversal" in n or "cutlass" in n:
        return "grouped GEMM (experts, torch._grouped_mm)"
    if "nvjet" in n or "gemm" in n:
        return "dense GEMM (cuBLAS)"
    if "sdpa" in n or "fmha" in n or "flash" in n:
        return "attention (cuDNN SDPA)"
    if "fusedopti" in n or "multi_tensor" in n:
        return "AdamW (fused)"
    if "quant" in n or "_permute" in n or "_combine" in n:
        return "FP8 quantize / permute / combine (Triton)"
    if n.startswith("triton_"):
        return "fused elementwise / reductions (torch.compile)"
    if "memcpy" in n or "memset" in n:
        return "memcpy / memset"
    if "index" in n or "scatter" in n or "gather" in n:
        return "gather / scatter / index_add (MoE dispatch)"
    if "topk" in n or "sort" in n or "radix" in n:
        return "router top-k / sort"
    return "other elementwise / reductions (eager)"


HOST_EVENTS = ("aten::", "Optimizer", "cuda", "cuLaunch", "cuModule", "cuCtx", "ProfilerStep", "autograd::",
               "torch::", "##", "Torch-Compiled", "CompiledFunction", "c10d", "record_param", "nccl:", "forward",
               "backward", "engine_step", "data", "router_bias_update", "Command Buffer", "Activity Buffer")


def breakdown(profile_json: Path, steps: int = 2) -> dict:
    """GPU kernel time per optimizer step by kind (ms). Host events are skipped, and a Triton
    kernel's launch event, which carries the kernel's own name, is counted once."""
    seen, kinds = set(), {}
    for r in json.loads(profile_json.read_text()):
        name = r["name"]
        autograd_fn = name.endswith(("Function", "FunctionBackward"))  # its kernels are counted themselves
        if name.startswith(HOST_EVENTS) or autograd_fn or r["self_us"] <= 0 or name in seen:
            continue
        seen.add(name)
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + r["self_us"] / steps / 1e3
    total = sum(kinds.values())
    print(f"{profile_json.name}: GPU kernel time per optimizer step {total:.1f} ms")
    for k, v in sorted(kinds.items(), key=lambda x: -x[1]):
        print(f"| {k} | {v:.1f} | {v / total:.0%} |")
    return {"total_ms": total, "ms": kinds}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("out", type=Path)
    d.add_argument("--vocab", type=int, default=32768)
    d.add_argument("--seq", type=int, default=2048)
    d.add_argument("--train", type=int, default=1536)
    d.add_argument("--validation", type=int, default=64)
    c = sub.add_parser("config")
    c.add_argument("path", type=Path)
    c.add_argument("data", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("overrides", nargs="*")
    k = sub.add_parser("checks")
    k.add_argument("out", type=Path)
    k.add_argument("--which", default="grouped_experts,fp8_experts,fp8_linears,attention")
    s = sub.add_parser("summary")
    s.add_argument("runs", type=Path)
    s.add_argument("logs", type=Path)
    s.add_argument("out", type=Path)
    b = sub.add_parser("breakdown")
    b.add_argument("profiles", type=Path, nargs="+")
    a = ap.parse_args()
    if a.cmd == "data":
        print(make_data(a.out, a.vocab, a.seq, a.train, a.validation))
    elif a.cmd == "config":
        print(write_config(a.path, a.data, a.out, a.overrides))
    elif a.cmd == "checks":
        run_checks(a.out, a.which)
    elif a.cmd == "breakdown":
        for f in a.profiles:
            breakdown(f)
    else:
        summary(a.runs, a.logs, a.out)


if __name__ == "__main__":
    main()
