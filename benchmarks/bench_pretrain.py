"""The `small` profile's trainer on H200s (issue 4, issue 7's training step): inputs, checks, figures.

    python benchmarks/bench_pretrain.py data DIR [--vocab 32768 --seq 2048 --train 1536]
    python benchmarks/bench_pretrain.py config DIR/NAME.json DATA_DIR OUT_DIR key=value ...
    python benchmarks/bench_pretrain.py checks OUT.json [--which ...]  (GPU: fast paths against references)
    python benchmarks/bench_pretrain.py summary RUNS_DIR LOGS_DIR OUT.json
    python benchmarks/bench_pretrain.py gap RUNS.json ... [--ref bf16]  (loss gaps of same-data runs, step by step)
    python benchmarks/bench_pretrain.py breakdown RUN/profile_rank0.json ...   (GPU time per step, by kind)
    python benchmarks/bench_pretrain.py widths OUT.json [--scales 1 2 4 --layers 4]  (GPU: FP8 vs BF16 by width)

benchmarks/run_pretrain_device.sh runs all of it in one device call. The trainer itself is the real
one (`python -m training.pretrain --config FILE`, or torchrun for expert parallelism).

    python benchmarks/bench_pretrain.py code DIR --source ROOT ... [--train 19240 --validation 64]
        (real text: the Python sources under ROOT, tokenized with the pipeline's own BPE trainer)

SYNTHETIC DATA: the token shards are generated here, not tokenized text, so the figures are
throughput (and an FP8-vs-BF16 loss gap on one learnable stream), not a language model's quality.
The stream: tokens drawn from a Zipf-like unigram, and every odd position is a fixed permutation of
the token before it, so half of the tokens are predictable and the loss has somewhere to go (from
ln(32768) = 10.4 nats towards about half the unigram entropy). It is written in exactly the layout of
training/corpus/shards.py (datatrove's DocumentTokenizer: `<split>/*.ds` uint16 tokens, `.ds.index`
uint64 document ends, `index.json`), with a word-level tokenizer.json of the same vocabulary, so the
trainer's input checks and loader run unchanged.

CODE DATA (`code`): the synthetic stream saturates (its floor is half the unigram entropy, reached in
~1,000 steps), so a loss gap much above 0.1% could not show on it. Real source code keeps the loss
well above any floor for as long as a device call runs. The text is every `*.py` file under the given
roots (a Python installation: the standard library and site-packages), exact duplicates dropped and
counted; documents are ordered by their content hash (a stable shuffle), the BPE is trained with
training/corpus/tokenizer.py on the first `--tokenizer-mb` of text, and the shards are written in the
same layout as the synthetic ones: validation from the front of the order, train after it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
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


def write_tokens(out: Path, split: str, tokens: np.ndarray, ends: np.ndarray, vocab: int, seq: int,
                 source: str) -> dict:
    """One split's `.ds` (tokens), `.ds.index` (document ends) and `.ds.metadata`, as DocumentTokenizer writes them."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{split}_00000_00000_doc_shuffled.ds"
    dtype = "<u2" if vocab < 2**16 else "<u4"
    tokens.astype(dtype).tofile(folder / name)
    ends.astype("<u8").tofile(folder / f"{name}.index")
    (folder / f"{name}.metadata").write_text(f"{source}|{np.dtype(dtype).itemsize}\n{len(tokens)}\n")
    return {"files": [name], "documents": len(ends), "tokens": len(tokens), "sequences": len(tokens) // (seq + 1),
            "tokens_per_source": {source: len(tokens)}, "documents_per_source": {source: len(ends)}}


def write_split(out: Path, split: str, sequences: int, seq: int, vocab: int, seed: int) -> dict:
    n = sequences * (seq + 1)
    tokens = synthetic_stream(n, vocab, np.random.default_rng(seed))
    # one "document": the whole stream
    return write_tokens(out, split, tokens, np.array([n]), vocab, seq, "synthetic")


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


def source_documents(roots: list[Path]) -> tuple[list[str], dict, list[dict]]:
    """The text of every `*.py` file under `roots`, exact duplicates dropped, in content-hash order.

    Returns the texts, the counts (files, documents, bytes, and the files dropped by reason:
    duplicates, empty, unreadable (not UTF-8)) and every dropped file with its reason.
    """
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"--source {root}: not a folder (give folders of Python sources, "
                                    f"e.g. the standard library's and site-packages')")
    # a root inside another (site-packages inside the standard library's folder) is read once
    resolved = list(dict.fromkeys(r.resolve() for r in roots))
    resolved = [r for r in resolved if not any(o != r and r.is_relative_to(o) for o in resolved)]
    by_hash: dict[str, tuple[str, Path]] = {}
    dropped: list[dict] = []
    files = 0
    for path in (p for root in resolved for p in sorted(root.rglob("*.py"))):
        files += 1
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            dropped.append({"path": str(path), "reason": "unreadable", "detail": str(e)})
            continue
        if not text.strip():
            dropped.append({"path": str(path), "reason": "empty"})
            continue
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest in by_hash:
            dropped.append({"path": str(path), "reason": "duplicate", "detail": f"of {by_hash[digest][1]}"})
            continue
        by_hash[digest] = (text, path)
    texts = [by_hash[d][0] for d in sorted(by_hash)]
    reasons = {"duplicate": "duplicates", "empty": "empty", "unreadable": "unreadable"}
    counts = {"files": files, **{key: sum(d["reason"] == r for d in dropped) for r, key in reasons.items()},
              "documents": len(texts), "bytes": sum(len(t.encode()) for t in texts)}
    return texts, counts, dropped


def encode_until(tokenizer, texts: list[str], start: int, wanted: int, eos: int,
                 chunk: int = 2000) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokenize texts[start:] (each followed by EOS) until at least `wanted` tokens; the tokens, the
    document ends and the index of the first text not used."""
    parts, total, i, batch = [], 0, start, 64
    while total < wanted and i < len(texts):
        # NOTE: encode_batch runs on every core (tokenizers' own thread pool); the batches grow from
        # 64 documents, so a small split (validation) does not encode thousands that the next re-encodes
        batch = min(batch * 2, chunk)
        for enc in tokenizer.encode_batch(texts[i:i + batch], add_special_tokens=False):
            if total >= wanted:
                break
            parts.append(np.array(enc.ids + [eos], dtype=np.int64))
            total += len(parts[-1])
            i += 1
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return tokens, np.cumsum([len(p) for p in parts], dtype=np.int64), i


def make_code_data(out: Path, roots: list[Path], vocab: int, seq: int, train: int, validation: int,
                   tokenizer_mb: float = 32.0) -> Path:
    """Token shards of real source code (module docstring: CODE DATA), with the pipeline's BPE tokenizer.

    NOTE: not training/corpus/shards.py's `make_shards`, which splits documents by a hash fraction and
    tokenizes every document (twice: TokensCounter, then DocumentTokenizer). A same-data comparison wants
    exact split sizes and only the tokens it trains on; the files are written in the same layout.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from training.corpus.tokenizer import EOS, train_tokenizer
    from training.settings import TokenizerConfig

    request = {"roots": [str(r) for r in roots], "vocab": vocab, "seq": seq, "train": train,
               "validation": validation, "tokenizer_mb": tokenizer_mb}
    shards = out / "pretraining_shards"
    if (shards / "index.json").exists() and json.loads((shards / "index.json").read_text()).get("request") == request:
        return shards  # made by an earlier call on this machine: the same request gives the same shards
    texts, counts, dropped = source_documents(roots)
    # the tokenizer's training text: documents from the front of the order up to tokenizer_mb
    budget, sample = tokenizer_mb * 2**20, []
    for text in texts:
        if budget <= 0:
            break
        sample.append(text)
        budget -= len(text.encode())
    corpus = out / "tokenizer_corpus"
    (corpus / "documents").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [str(i) for i in range(len(sample))], "text": sample}),
                   corpus / "documents" / "sample.parquet")
    tok_json = train_tokenizer(corpus, out / "tokenizer", TokenizerConfig(vocab_size=vocab))
    tokenizer = Tokenizer.from_file(str(tok_json))
    eos, size = tokenizer.token_to_id(EOS), tokenizer.get_vocab_size()
    splits, start = {}, 0
    for split, sequences in (("validation", validation), ("train", train)):
        tokens, ends, start = encode_until(tokenizer, texts, start, sequences * (seq + 1), eos)
        if len(tokens) < sequences * (seq + 1):
            raise ValueError(f"--source {' '.join(map(str, roots))}: {counts['documents']} documents, "
                             f"{counts['bytes']:,} bytes, ran out at {split} ({len(tokens):,} of the "
                             f"{sequences * (seq + 1):,} tokens {sequences} sequences need); give more "
                             f"folders or fewer sequences")
        splits[split] = write_tokens(shards, split, tokens, ends, size, seq, "python_sources")
    index = {"sequence_length": seq, "tokenizer": str(tok_json), "vocab_size": size,
             "token_bytes": 2 if size < 2**16 else 4, "eos_token": EOS, "request": request,
             "source": {**counts, "tokenizer_documents": len(sample), "documents_used": start},
             "splits": splits}
    (shards / "index.json").write_text(json.dumps(index, indent=2))
    # every file left out, with its reason (index.json counts them)
    (shards / "dropped.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dropped))
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
    tail = losses[-max(1, len(losses) // 5):]  # the last fifth of the logged steps
    return {"tokens_per_s": tps, "tokens_per_s_per_gpu": tps / gpus, "gpus": gpus,
            "tail_loss": sum(tail) / len(tail) if tail else None,
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
    comparison = precision_comparison(res["runs"])
    if comparison:
        res["fp8_vs_bf16_repeats"] = comparison
    out.write_text(json.dumps(res, indent=1))


def precision_comparison(runs: dict, ref: str = "bf16", other: str = "fp8") -> dict | None:
    """Runs named <ref>_<i> and <other>_<i> (identical configs but the precision, same data and
    seeds): the ref runs' spread is the run-to-run noise (nondeterministic kernels: atomics in the
    MoE combine, routing ties), against which the gap of each <other> run to the ref mean is read."""
    groups: dict[str, list[dict]] = {}
    for name, f in runs.items():
        base, _, idx = name.rpartition("_")
        if idx.isdigit():
            groups.setdefault(base, []).append(f)
    if not (groups.get(ref) and groups.get(other)):
        return None
    out = {"runs": {ref: len(groups[ref]), other: len(groups[other])}}
    print(f"\n{other} vs {ref}, {len(groups[other])} and {len(groups[ref])} runs (relative to the {ref} mean):")
    for metric in ("final_loss", "tail_loss", "val_loss"):
        a = [f[metric] for f in groups[ref] if f.get(metric) is not None]
        b = [f[metric] for f in groups[other] if f.get(metric) is not None]
        if not (a and b):
            continue
        m = sum(a) / len(a)
        row = {ref: a, other: b, f"{ref}_mean": m, f"{ref}_spread_rel": (max(a) - min(a)) / m,
               f"{ref}_each_rel": [(x - m) / m for x in a], f"{other}_each_rel": [(x - m) / m for x in b],
               "gap_rel": (sum(b) / len(b) - m) / m}
        out[metric] = row
        print(f"  {metric}: {ref} {', '.join(f'{x:.4f}' for x in a)} (spread {row[f'{ref}_spread_rel']:.3%}); "
              f"{other} {', '.join(f'{x:.4f}' for x in b)}: mean gap {row['gap_rel']:+.3%}, each "
              f"{', '.join(f'{x:+.3%}' for x in row[f'{other}_each_rel'])}")
    tps = {k: [f["tokens_per_s"] for f in groups[k]] for k in (ref, other)}
    out["tokens_per_s"] = {**tps, "ratio_of_medians": statistics.median(tps[other]) / statistics.median(tps[ref])}
    out["mfu_989"] = {k: [f["mfu_989"] for f in groups[k]] for k in (ref, other)}
    print(f"  tokens/s: {ref} {[round(x) for x in tps[ref]]}, {other} {[round(x) for x in tps[other]]}: "
          f"{other}/{ref} {out['tokens_per_s']['ratio_of_medians']:.2f}")
    return out


def load_runs(files: list[Path]) -> dict[str, dict]:
    """run_graphs_device.sh's runs.json files (one a call) and `runs`' files (one a study's batch): run
    name -> its logged losses, validation losses and windows, and its `pairing` (the file, the seed).
    A name seen before gets its folder's name added (two calls of one run), or its file's where that
    too was seen (several batches in one folder, as in benchmarks/results/). Keys starting with "_"
    describe the file (hardware, command), not a run. NOTE: runs pair by seed within their file only:
    two batches may hold a run of one seed each (one batch's BF16 run without its FP8 partner, the
    next batch's pair), and a pair is the two runs of one batch."""
    resolved = [f.resolve() for f in files]
    twice = sorted({str(f) for f in resolved if resolved.count(f) > 1})
    if twice:
        raise SystemExit(f"{', '.join(twice)}: given more than once (its runs would count twice)")
    runs = {}
    for f in files:
        for name, run in json.loads(f.read_text()).items():
            if name.startswith("_"):
                continue
            names = itertools.chain((name, f"{name}@{f.parent.name}", f"{name}@{f.stem}"),
                                    (f"{name}@{f.stem}.{i}" for i in itertools.count(2)))
            unique = next(n for n in names if n not in runs)
            runs[unique] = {**run, "pairing": [str(f), name.partition("_")[2]]}
    return runs


def history_runs(run_dirs: list[Path], out: Path) -> dict[str, dict]:
    """Trainer runs' history.json (training/pretrain.py) -> a runs.json that `gap` reads (the format
    run_graphs_device.sh writes): run name -> logged losses, validation losses and throughput
    windows. A run is named by its folder; one named before gets its parent's name added, as
    load_runs does for two calls (runs/bf16_1 and repeat/bf16_1 -> bf16_1, bf16_1@repeat)."""
    runs = {}
    for d in run_dirs:
        f = d / "history.json"
        if not f.is_file():
            raise SystemExit(f"{f}: no history.json (the run failed or has not finished: see {d}/train.log)")
        hist = json.loads(f.read_text())
        runs[d.name if d.name not in runs else f"{d.name}@{d.parent.name}"] = {
            "losses": [(h["step"], h["loss"]) for h in hist if "loss" in h],
            "validation": [(h["step"], h["val_loss"]) for h in hist if "val_loss" in h],
            "windows": [h["tokens_per_second"] for h in hist if h.get("tokens_per_second")]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(runs, indent=1))
    return runs


def relative_gaps(a: dict, b: dict) -> dict[int, float]:
    """(a - b) / b at every step both logged: same data order and seed, so the same batch."""
    b = {int(s): v for s, v in b}
    return {int(s): (v - b[int(s)]) / b[int(s)] for s, v in a if int(s) in b}


def phase_bounds(gaps: list[dict[int, float]], phases: list[int]) -> list[tuple[int, int]]:
    """(lo, hi] step ranges: the phases end at `phases` and the last one at the last step logged."""
    last = max((s for g in gaps for s in g), default=0)
    bounds = [p for p in sorted(phases) if p < last] + [last]
    return list(zip([0] + bounds, bounds)) if last else []


def pairing(name: str, run: dict) -> tuple:
    """What pairs a run with its reference: its file and seed (load_runs' `pairing`: a pair is two runs
    of one file), or, for runs made in memory, the seed in its name (PRECISION_SEED)."""
    return tuple(run.get("pairing") or (None, name.partition("_")[2]))


def mean_two_se(values: list[float]) -> tuple[float, float]:
    """The mean and twice its standard error (nan where there are too few values)."""
    mean = statistics.mean(values) if values else math.nan
    return mean, 2 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def loss_gap(runs: dict[str, dict], ref: str, phases: list[int], means_only: bool = False,
             by_step: bool = False, bound: float = 0.0025, by_file: bool = False) -> dict:
    """Each run against each reference run (names containing `ref`), and the references against each
    other: their gap is the noise floor (nondeterministic GPU kernels), against which the rest reads.
    Validation losses step by step, and the mean absolute gap of the training losses per phase (the
    phases end at `phases` and at the last step both runs of a pair logged). means_only: the means of
    each side alone (runs of several seeds, whose pairs across seeds say nothing). by_step: the pairs'
    training-loss gaps at every logged step too, with their spread. bound: the relative gap the paired
    interval of the last validation is read against (the paper's 0.25%). by_file: the pairs of each
    file (a batch: one machine, one session) apart, with their spread, how closely the two runs of a
    seed agree, and the runs' speed."""
    refs = [n for n in runs if ref in n]
    if not refs:
        raise SystemExit(f"no run name contains {ref!r}: runs are {sorted(runs)}; pass --ref")
    pairs = [(n, r) for i, r in enumerate(refs) for n in runs if n not in refs[:i + 1]]  # ref pairs once
    val = {n: dict(map(tuple, r.get("validation", []))) for n, r in runs.items()}
    steps = sorted(set.intersection(*(set(v) for v in val.values())))
    table = {"validation": {}, "phases": {}, "phases_max": {}, "pairs": pairs}
    if not means_only:
        print("| step | " + " | ".join(runs) + " | " + " | ".join(f"{n} vs {r}" for n, r in pairs) + " |")
        print("| --- " * (1 + len(runs) + len(pairs)) + "|")
    for s in steps if not means_only else []:
        gaps = [(val[n][s] - val[r][s]) / val[r][s] for n, r in pairs]
        table["validation"][s] = {"loss": {n: val[n][s] for n in runs}, "gaps": gaps}
        print(f"| {s} | " + " | ".join(f"{val[n][s]:.4f}" for n in runs) + " | "
              + " | ".join(f"{g:+.3%}" for g in gaps) + " |")
    # with repeats of a precision, one pair's gap is mostly run-to-run noise: compare the means, with
    # each side's spread (max - min over the mean) and the gap's resolution: twice the standard error
    # of the difference of the means, from the repeats' pooled variance (two-sample t, equal variances)
    others = [n for n in runs if n not in refs]
    print(f"\nValidation loss, the mean of each side's runs ({len(others)} not {ref}, {len(refs)} {ref}):\n")
    # runs named PRECISION_SEED (run_fp8_gap.sh's): the same seed on both sides (`bf16_3`, `fp8_3`: the
    # same initial weights and batches) makes a pair:
    # the mean of the pairs' gaps, with twice its standard error (paired t), gains where pairs correlate.
    # (training/report.py's paired_difference is the t interval for task scores in [0, 1], clipped there,
    # with a bound for pairs without spread; these are relative loss gaps, in 2 SE like the column beside)
    seeds = {pairing(n, runs[n]): n for n in refs}
    paired = [(n, seeds[pairing(n, runs[n])]) for n in others if pairing(n, runs[n]) in seeds]
    print(f"| step | mean, not {ref} | mean, {ref} | gap | 2 SE of the gap | spread, not {ref} | spread, {ref} "
          f"| paired gap, {len(paired)} pairs | 2 SE, paired |")
    print("| --- " * 9 + "|")
    table["means"] = {}
    for s in steps if others else []:
        o, r = [val[n][s] for n in others], [val[n][s] for n in refs]
        mo, mr = statistics.mean(o), statistics.mean(r)
        dof = len(o) + len(r) - 2
        pooled = (sum((v - mo) ** 2 for v in o) + sum((v - mr) ** 2 for v in r)) / dof if dof else math.nan
        row = table["means"][s] = {"others": mo, "refs": mr, "gap": (mo - mr) / mr,
                                   "two_se": 2 * math.sqrt(pooled * (1 / len(o) + 1 / len(r))) / mr,
                                   "spread_others": (max(o) - min(o)) / mo, "spread_refs": (max(r) - min(r)) / mr}
        row["paired_gap"], row["paired_two_se"] = mean_two_se([(val[n][s] - val[m][s]) / val[m][s] for n, m in paired])
        print(f"| {s} | {mo:.4f} | {mr:.4f} | {row['gap']:+.3%} | {row['two_se']:.3%} | "
              f"{row['spread_others']:.3%} | {row['spread_refs']:.3%} | {row['paired_gap']:+.3%} | "
              f"{row['paired_two_se']:.3%} |")
    if len(paired) > 1 and table["means"]:
        read_against_bound(table, steps[-1], len(paired), bound)
    if by_file and paired and steps:
        paired_by_file(runs, {n: v[steps[-1]] for n, v in val.items()}, paired, steps[-1], table)
    if paired:
        # the training loss on the same batches, signed: each pair's mean gap over a phase, then the mean
        # of the pairs with 2 SE (where validation at one step is noisy, a phase of steps averages it)
        print(f"\nTraining loss, paired by seed: each pair's mean signed gap over the steps, then the mean of "
              f"the {len(paired)} pairs:\n")
        print("| steps | paired gap | 2 SE, paired |")
        print("| --- | --- | --- |")
        pair_gaps = [relative_gaps(runs[n]["losses"], runs[m]["losses"]) for n, m in paired]
        table["paired_phases"] = {}
        for lo, hi in phase_bounds(pair_gaps, phases):
            per_pair = [statistics.mean(v for s, v in g.items() if lo < s <= hi) for g in pair_gaps
                        if any(lo < s <= hi for s in g)]
            gap, two_se = table["paired_phases"][f"{lo + 1}-{hi}"] = mean_two_se(per_pair)
            print(f"| {lo + 1}-{hi} | {gap:+.3%} | {two_se:.3%} |")
        if by_step:
            paired_steps(pair_gaps, table)
    if means_only:
        return table
    print("\nTraining loss, mean (largest) absolute relative gap on the same batches:\n")
    print("| steps | " + " | ".join(f"{n} vs {r}" for n, r in pairs) + " |")
    print("| --- " * (1 + len(pairs)) + "|")
    gaps = [relative_gaps(runs[n]["losses"], runs[r]["losses"]) for n, r in pairs]
    for lo, hi in phase_bounds(gaps, phases):
        phase = [[abs(v) for s, v in g.items() if lo < s <= hi] or [math.nan] for g in gaps]
        means = table["phases"][f"{lo + 1}-{hi}"] = [statistics.mean(p) for p in phase]
        table["phases_max"][f"{lo + 1}-{hi}"] = [max(p) for p in phase]
        print(f"| {lo + 1}-{hi} | " + " | ".join(f"{m:.3%} ({max(p):.2%})" for m, p in zip(means, phase)) + " |")
    return table


def read_against_bound(table: dict, step: int, pairs: int, bound: float) -> None:
    """The paired interval (mean +- 2 SE) of the last validation read against the bound: the runs (FP8)
    not worse than their references (BF16) by it (the upper end below it: one-sided, ~97%), within it
    both ways (the whole interval inside), and the pairs a 2 SE of the bound would take at this spread
    (where the mean then falls decides the rest)."""
    row = table["means"][step]
    low, high = row["paired_gap"] - row["paired_two_se"], row["paired_gap"] + row["paired_two_se"]
    sd = row["paired_two_se"] / 2 * math.sqrt(pairs)
    verdict = table["bound"] = {"step": step, "pairs": pairs, "low": low, "high": high,
                                "not_worse": high < bound, "within": -bound < low and high < bound,
                                "pairs_needed": math.ceil((2 * sd / bound) ** 2)}
    yes = {True: "yes", False: "no"}
    print(f"\nAgainst the bound, validation at step {step}, {pairs} pairs: interval {low:+.3%} to {high:+.3%}; "
          f"not worse by {bound:.2%}: {yes[verdict['not_worse']]}; within +-{bound:.2%}: {yes[verdict['within']]}; "
          f"pairs for a 2 SE of {bound:.2%} at this spread (SD {sd:.3%}): {verdict['pairs_needed']}")


def paired_by_file(runs: dict[str, dict], loss: dict[str, float], paired: list[tuple[str, str]], step: int,
                   table: dict) -> None:
    """The pairs of each file apart, validation `loss` at `step`: their mean gap with 2 SE, the standard
    deviation of a pair's gap, the correlation of the two runs' losses over the seeds (how much of a
    seed's loss its two runs share: where it is high, pairing cancels the seed's luck and the gap
    spreads little) and each side's tokens/s a run (the median over runs of each run's median log
    window after the first, which holds the warm-up)."""
    print(f"\nBy file, validation at step {step} (a pair is two runs of one file):\n")
    print("| file | pairs | paired gap | 2 SE, paired | SD of a pair's gap | correlation within a seed "
          "| tokens/s a run, not reference / reference |")
    print("| --- " * 7 + "|")
    table["by_file"] = {}
    for source in dict.fromkeys(pairing(n, runs[n])[0] for n, _ in paired):
        pairs = [(n, m) for n, m in paired if pairing(n, runs[n])[0] == source]
        gap, two_se = mean_two_se([(loss[n] - loss[m]) / loss[m] for n, m in pairs])
        sd = two_se / 2 * math.sqrt(len(pairs))
        try:
            corr = statistics.correlation([loss[n] for n, _ in pairs], [loss[m] for _, m in pairs])
        except statistics.StatisticsError:  # fewer than two pairs, or one side's losses all equal
            corr = math.nan

        def speed(names: list[str]) -> float:
            each = [statistics.median(w[1:]) for w in (runs[n].get("windows", []) for n in names) if len(w) > 1]
            return statistics.median(each) if each else math.nan
        row = table["by_file"][str(source)] = {"pairs": len(pairs), "gap": gap, "two_se": two_se, "sd": sd,
                                               "correlation": corr, "tokens_per_s": (speed([n for n, _ in pairs]),
                                                                                     speed([m for _, m in pairs]))}
        print(f"| {Path(str(source)).name} | {len(pairs)} | {gap:+.3%} | {two_se:.3%} | {sd:.2%} | {corr:.2f} | "
              f"{row['tokens_per_s'][0]:,.0f} / {row['tokens_per_s'][1]:,.0f} |")


def paired_steps(pair_gaps: list[dict[int, float]], table: dict) -> None:
    """The pairs' training-loss gaps at each logged step: their mean, its 2 SE and the pairs' standard
    deviation. Where two runs of a pair part (one learns a structure of the data some steps before the
    other) and meet again, the spread rises and falls at a steady mean: the spread at the last steps is
    what one pair's gap is worth there, and what sets the number of seeds a bound needs."""
    print("\nTraining loss, paired by seed, at each logged step (SD: the pairs' standard deviation):\n")
    print("| step | paired gap | 2 SE, paired | SD of the pairs |")
    print("| --- | --- | --- | --- |")
    table["paired_steps"] = {}
    for s in sorted(set.union(*(set(g) for g in pair_gaps))):
        values = [g[s] for g in pair_gaps if s in g]
        gap, two_se = mean_two_se(values)
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        table["paired_steps"][s] = {"gap": gap, "two_se": two_se, "sd": sd, "pairs": len(values)}
        print(f"| {s} | {gap:+.3%} | {two_se:.3%} | {sd:.3%} |")


# ---------------------------------------------------------------------------------------------
# FP8 against BF16 by width, on the real model (one process, no DeepSpeed engine)

WIDTH_BASE = {"hidden_size": 1024, "intermediate_size": 2816, "moe_intermediate_size": 512,
              "q_lora_rank": 384, "kv_lora_rank": 256, "num_attention_heads": 16}  # the small profile


def build_model(profile, precision: str, device):
    """training/model's Transformer set up as training/pretrain.py does (expert-parallel wrapper with
    EP=1, FP8 conversion, emulated off CUDA, SDPA choice), bf16 weights, train mode, seed 0."""
    import torch

    from training.engine import apply_speed_options
    from training.expert_parallel import apply_expert_parallel
    from training.model import Transformer
    from training.pretrain import convert_model_to_fp8

    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(profile.model)
    apply_expert_parallel(model, 1)
    if precision == "fp8":
        convert_model_to_fp8(model, emulate=torch.device(device).type != "cuda")
    apply_speed_options(model, profile.pretrain)
    return model.to(torch.bfloat16).train()


def time_model_step(profile, precision: str, micro_batch: int, steps: int, warmup: int = 3,
                    kernel_profile: bool = False) -> dict:
    """tokens/s of forward + backward + AdamW step + router bias update of training/model's
    Transformer, set up as training/pretrain.py does (expert-parallel wrapper with EP=1, FP8
    conversion, SDPA choice, bf16 weights), on random tokens. NOTE: plain fused AdamW on the bf16
    weights instead of DeepSpeed's engine (fp32 master copy): the same extra work for both precisions."""
    import time

    import torch

    from training import distributed

    dist = distributed.init()
    model = build_model(profile, precision, dist.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    seq, vocab = profile.shards.sequence_length, profile.model.vocab_size
    batch = torch.randint(0, vocab, (micro_batch, seq + 1), device=dist.device)

    def step():
        out = model(batch[:, :-1], batch[:, 1:])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_router_biases()
        return out.loss

    for _ in range(warmup):  # autotuning, backend choice, allocator
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    res = {"tokens_per_s": micro_batch * seq * steps / dt, "step_ms": dt / steps * 1e3, "loss": loss.item(),
           "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
    if kernel_profile:  # GPU kernel time of two more steps, by kind (see kernel_kind)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        kinds: dict[str, float] = {}
        names: dict[str, float] = {}
        for e in prof.key_averages():
            us = getattr(e, "self_device_time_total", 0) or 0
            if us > 0:
                kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + us / 2 / 1e3
                names[e.key[:90]] = us / 2 / 1e3
        res["kernel_ms_per_step"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
        res["top_kernels_ms_per_step"] = dict(sorted(names.items(), key=lambda kv: -kv[1])[:25])
        if precision == "fp8":  # what backend="auto" / impl="auto" chose, with their medians
            from kernels.fp8_gemm import backend_choices
            from kernels.fp8_quant import dual_choices
            from kernels.moe import impl_choices

            res["fp8_gemm_choices"] = backend_choices()
            res["grouped_gemm_choices"] = impl_choices()
            res["act_dual_choices"] = dual_choices()
    del model, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return res


def width_scan(out: Path, scales: list[int], layers: int, micro_batch: int, steps: int,
               kernel_profile: bool = False, precisions: tuple[str, ...] = ("bf16", "fp8")) -> None:
    """The small model with every width scaled by s (hidden, FFN, expert and LoRA widths, heads; head
    dims fixed) and `layers` layers, bf16 against FP8: where FP8 starts to pay."""
    import torch

    from training.model import flops_per_token
    from training.settings import load_profile

    res = {"device": torch.cuda.get_device_name(), "layers": layers, "micro_batch": micro_batch,
           "steps": steps, "rows": []}
    print("| scale | hidden | experts I | GFLOP/token | bf16 tokens/s | FP8 tokens/s | FP8 / bf16 | "
          "bf16 MFU (989) | FP8 MFU (989) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in scales:
        overrides = {f"model.{k}": v * s for k, v in WIDTH_BASE.items()}
        overrides.update({"model.num_hidden_layers": layers, "pretrain.compile": False})
        profile = load_profile("small", overrides)
        fpt = flops_per_token(profile.model, profile.shards.sequence_length, causal=True)
        row = {"scale": s, "overrides": overrides, "flops_per_token": fpt}
        for precision in precisions:
            try:
                row[precision] = time_model_step(profile, precision, micro_batch, steps,
                                                 kernel_profile=kernel_profile)
                row[precision]["mfu_989"] = fpt * row[precision]["tokens_per_s"] / 989e12
            except Exception as e:  # out of memory at a large width, a kernel failure: record it
                row[precision] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                torch.cuda.empty_cache()
        res["rows"].append(row)
        out.write_text(json.dumps(res, indent=1))
        b, f = row.get("bf16", {}), row.get("fp8", {})
        if "tokens_per_s" in b and "tokens_per_s" in f:
            row["fp8_over_bf16"] = f["tokens_per_s"] / b["tokens_per_s"]
            print(f"| {s} | {1024 * s} | {512 * s} | {fpt / 1e9:.2f} | {b['tokens_per_s']:,.0f} | "
                  f"{f['tokens_per_s']:,.0f} | {row['fp8_over_bf16']:.2f} | {b['mfu_989']:.1%} | "
                  f"{f['mfu_989']:.1%} |", flush=True)
        else:
            print(f"| {s} | {1024 * s} | bf16: {b.get('error', 'ok')} | fp8: {f.get('error', 'ok')} |", flush=True)
        for precision in precisions:
            if "kernel_ms_per_step" in row[precision]:
                ms = row[precision]["kernel_ms_per_step"]
                print(f"  scale {s} {precision}: GPU kernels {sum(ms.values()):.1f} ms/step: "
                      + "; ".join(f"{k} {v:.1f}" for k, v in ms.items()), flush=True)
                if os.environ.get("TOP_KERNELS"):
                    for k, v in row[precision]["top_kernels_ms_per_step"].items():
                        print(f"    {v:7.2f} ms  {k}")
                    r = row[precision]
                    for c in (r.get("fp8_gemm_choices", []) + r.get("grouped_gemm_choices", [])
                              + r.get("act_dual_choices", [])):
                        med = ", ".join(f"{k} {v:.3f}" for k, v in c["median_ms"].items())
                        print(f"    auto {c.get('backend', c.get('impl'))} ({med}) {c['key'][:160]}")
    out.write_text(json.dumps(res, indent=1))


# kernel name -> what it does, for the per-step breakdown of a trainer's profile (profile_rank0.json)
def kernel_kind(name: str) -> str:
    n = name.lower()
    if "_fp8_gemm" in n or "_grouped_gemm" in n or "_grouped_wgrad" in n:
        return "FP8 GEMMs (Triton)"
    if "gemmuniversal" in n or "cutlass" in n:
        return "grouped GEMM (experts, torch._grouped_mm)"
    if "nvjet" in n or "gemm" in n:
        return "dense GEMM (cuBLAS)"
    if "sdpa" in n or "fmha" in n or "flash" in n:
        return "attention (cuDNN SDPA)"
    if "fusedopti" in n or "multi_tensor" in n:
        return "AdamW (fused)"
    if "quant" in n:
        return "FP8 quantization (Triton)"
    if "_permute" in n or "_combine" in n:
        return "MoE permute / combine (Triton)"
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
    t = sub.add_parser("code")
    t.add_argument("out", type=Path)
    t.add_argument("--source", type=Path, nargs="+", required=True, help="folders of Python sources")
    t.add_argument("--vocab", type=int, default=32768)
    t.add_argument("--seq", type=int, default=2048)
    t.add_argument("--train", type=int, default=1536)
    t.add_argument("--validation", type=int, default=64)
    t.add_argument("--tokenizer-mb", type=float, default=32.0, help="text the BPE is trained on")
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
    h = sub.add_parser("runs", help="trainer run folders (history.json) -> a runs.json for gap")
    h.add_argument("out", type=Path)
    h.add_argument("run_dirs", type=Path, nargs="+")
    g = sub.add_parser("gap")
    g.add_argument("runs", type=Path, nargs="+", help="runs.json files: run_graphs_device.sh's (one a call) or `runs`'s")
    g.add_argument("--ref", default="bf16", help="runs whose name contains this are the references")
    g.add_argument("--phases", type=int, nargs="+", default=[100, 200, 400, 600, 800, 1000, 1200])
    g.add_argument("--means-only", action="store_true", help="only the means of each side (several seeds)")
    g.add_argument("--bound", type=float, default=0.25,
                   help="percent: the relative gap the paired interval is read against (the paper's 0.25)")
    g.add_argument("--by-step", action="store_true",
                   help="the pairs' training-loss gaps at every logged step too, with their spread")
    g.add_argument("--by-file", action="store_true",
                   help="the pairs of each file apart: their gap, spread, correlation within a seed, speed")
    b = sub.add_parser("breakdown")
    b.add_argument("profiles", type=Path, nargs="+")
    w = sub.add_parser("widths")
    w.add_argument("out", type=Path)
    w.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    w.add_argument("--layers", type=int, default=4)
    w.add_argument("--micro-batch", type=int, default=8)
    w.add_argument("--steps", type=int, default=8)
    w.add_argument("--profile", action="store_true", help="GPU kernel time by kind, two more steps")
    w.add_argument("--precisions", nargs="+", default=["bf16", "fp8"])
    a = ap.parse_args()
    if a.cmd == "data":
        print(make_data(a.out, a.vocab, a.seq, a.train, a.validation))
    elif a.cmd == "code":
        print(make_code_data(a.out, a.source, a.vocab, a.seq, a.train, a.validation, a.tokenizer_mb))
    elif a.cmd == "config":
        print(write_config(a.path, a.data, a.out, a.overrides))
    elif a.cmd == "checks":
        run_checks(a.out, a.which)
    elif a.cmd == "runs":
        print(f"{a.out}: {', '.join(history_runs(a.run_dirs, a.out))}")
    elif a.cmd == "gap":
        if not a.bound > 0:
            ap.error(f"--bound {a.bound}: a relative gap in percent, greater than 0 (the paper's: 0.25)")
        loss_gap(load_runs(a.runs), a.ref, a.phases, a.means_only, a.by_step, a.bound / 100, a.by_file)
    elif a.cmd == "breakdown":
        for f in a.profiles:
            breakdown(f)
    elif a.cmd == "widths":
        width_scan(a.out, a.scales, a.layers, a.micro_batch, a.steps, a.profile, tuple(a.precisions))
    else:
        summary(a.runs, a.logs, a.out)


if __name__ == "__main__":
    main()
