"""The Triton kernels' indexing and masking, checked on CPU through Triton's interpreter.

Runs only where Triton is installed (it is not a project dependency for CPU CI) and in a subprocess,
because TRITON_INTERPRET must be set before the kernels are defined. The interpreter emulates the
FP8 conversion itself and rounds differently from the GPU near binade edges, so quantized values are
compared loosely here; scales, permutations and GEMM results (on identical operands) exactly or to
float32 rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = r'''
import itertools

import numpy as np
import torch
import triton.runtime.interpreter as ti

# NOTE: numpy >= 2.4 refuses int() of a 1-element array, which triton 3.6's interpreter does for
# loop bounds; patch that one conversion
_orig = ti._patch_lang_tensor
def _patched(tensor, scope):
    _orig(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
ti._patch_lang_tensor = _patched

from kernels import moe
from kernels.fp8_gemm import fp8_gemm_ref, fp8_gemm_triton
from kernels.fp8_quant import (act_dequant, act_quant_dual_ref, act_quant_dual_triton, act_quant_ref,
                               act_quant_triton, swiglu_grad_quant_dual_ref, swiglu_grad_quant_dual_triton,
                               swiglu_quant_dual_ref, swiglu_quant_dual_triton, weight_quant_dual_ref,
                               weight_quant_dual_triton, weight_quant_ref, weight_quant_triton)
from kernels.moe import grouped_gemm, grouped_gemm_ref, grouped_wgrad_fp8, grouped_wgrad_ref
from kernels.routing import (combine, combine_backward, combine_backward_ref, combine_ref, make_routing, permute,
                             permute_ref)

def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

for M, K in [(50, 200), (3, 130), (260, 140)]:  # 260: more than one 128-row tile
    x = torch.randn(M, K) * 3
    for xin in (x, torch.randn(K, M).t()):
        q, s = act_quant_triton(xin)
        qr, sr = act_quant_ref(xin)
        assert torch.equal(s, sr), "act scales"
        assert (q.float() != qr.float()).float().mean() < 0.05
    q, s = weight_quant_triton(x)
    qr, sr = weight_quant_ref(x)
    assert torch.equal(s, sr), "weight scales"
    q, s = act_quant_triton(x.t(), pad_to=128)  # the wgrad's zero-padded token axis
    qr, sr = act_quant_ref(x.t(), pad_to=128)
    assert torch.equal(s, sr) and q.shape == qr.shape, "padded act scales"
    assert not q[:, M:].float().any(), "padding columns are zero"
    for xin, kernel in itertools.product((x, torch.randn(K, M).t()), ("sweeps", "strips")):
        # both layouts from one read (x strided too)
        got, ref = act_quant_dual_triton(xin, kernel=kernel), act_quant_dual_ref(xin)
        assert all(a.shape == b.shape for a, b in zip(got, ref)), "dual act shapes"
        assert torch.equal(got[1], ref[1]) and torch.equal(got[3], ref[3]), "dual act scales"
        assert (got[0].float() != ref[0].float()).float().mean() < 0.05
        assert (got[2].float() != ref[2].float()).float().mean() < 0.05
        assert not got[2][:, M:].float().any(), "dual act: x^T padding columns are zero"

def dual_close(got, ref, M, dtype, what):
    # float32: scales to float32 rounding (silu's exp differs from torch's in the last bits). bf16:
    # the interpreter truncates float32 -> bf16 where the GPU rounds to nearest (measured: every
    # converted value equals the truncated one), so the made tensors, and the scales, differ by a
    # bf16 step here: values compared after dequantization; tests/test_kernels_gpu.py holds the GPU
    # to the reference's rounding
    assert all(a.shape == b.shape for a, b in zip(got, ref)), f"{what} shapes"
    if dtype == torch.float32:
        assert rel(got[1], ref[1]) < 1e-6 and rel(got[3], ref[3]) < 1e-6, f"{what} scales"
        assert (got[0].float() != ref[0].float()).float().mean() < 0.05, what
        assert (got[2].float() != ref[2].float()).float().mean() < 0.05, what
    else:
        for (q, sc), (qr, scr) in (((got[0], got[1]), (ref[0], ref[1])), ((got[2], got[3]), (ref[2], ref[3]))):
            assert rel(act_dequant(q, sc), act_dequant(qr, scr)) < 0.1, f"{what} values (bf16)"
    assert not got[2][:, M:].float().any(), f"{what}: padding columns are zero"

# the experts' SwiGLU product and its two gradients, quantized where they are made; stacked: gate and
# up as the halves of one [h1 | h3] (rows 2K apart), the gradient a tensor of its own
for M, K, dtype, stacked in [(50, 200, torch.float32, False), (3, 130, torch.float32, False),
                             (50, 200, torch.bfloat16, False), (50, 256, torch.bfloat16, True),
                             (150, 128, torch.float32, True)]:
    h = torch.cat([torch.randn(M, K) * 3, torch.randn(M, K)], dim=1).to(dtype)
    gate, up = (h[:, :K], h[:, K:]) if stacked else (h[:, :K].contiguous(), h[:, K:].contiguous())
    dact = torch.randn(M, K).to(dtype)
    for kernel in ("sweeps", "strips"):
        dual_close(swiglu_quant_dual_triton(gate, up, kernel=kernel), swiglu_quant_dual_ref(gate, up), M, dtype,
                   "swiglu")
        for got, ref, what in zip(swiglu_grad_quant_dual_triton(dact, gate, up, kernel=kernel),
                                  swiglu_grad_quant_dual_ref(dact, gate, up), ("d gate", "d up")):
            dual_close(got, ref, M, dtype, f"{what} ({kernel})")
        if stacked:  # [d gate | d up]: each launch writes its half of the shared outputs
            dual_close(swiglu_grad_quant_dual_triton(dact, gate, up, kernel=kernel, stacked=True),
                       swiglu_grad_quant_dual_ref(dact, gate, up, stacked=True), M, dtype, f"stacked ({kernel})")

# a weight, stacked experts, a transposed view, and weights stacked along N (a SwiGLU's [w1; w3]: each
# written at its rows of the shared outputs; the last one's N need not be a multiple of 128)
for w in (torch.randn(300, 200), torch.randn(3, 130, 260), torch.randn(2, 260, 130).transpose(1, 2),
          (torch.randn(2, 256, 200), torch.randn(2, 130, 200)), (torch.randn(128, 260), torch.randn(384, 260))):
    got, ref = weight_quant_dual_triton(w), weight_quant_dual_ref(w)
    assert all(a.shape == b.shape for a, b in zip(got, ref)), "dual weight shapes"
    assert torch.equal(got[1], ref[1]) and torch.equal(got[3], ref[3]), "dual weight scales"
    assert torch.equal(got[2].float(), got[0].transpose(-1, -2).float()), "dual weight: qt is q transposed"
    assert (got[0].float() != ref[0].float()).float().mean() < 0.05

# classic: any shape; tma: K a multiple of 16 (16-byte fp8 rows), 6 tiles over 4 persistent programs
for M, N, K, bb, impl in [(70, 200, 300, 128, "classic"), (64, 96, 130, 1, "classic"),
                          (300, 200, 320, 128, "tma"), (64, 96, 144, 1, "tma")]:
    aq, sa = act_quant_ref(torch.randn(M, K))
    bq, sb = weight_quant_ref(torch.randn(N, K)) if bb == 128 else act_quant_ref(torch.randn(N, K))
    c = fp8_gemm_triton(aq, sa, bq, sb, bb, out_dtype=torch.float32, impl=impl)
    assert rel(c, fp8_gemm_ref(aq, sa, bq, sb, bb, compute_dtype=torch.float64)) < 1e-5, f"gemm {impl}"

T, k, E, D, N = 40, 3, 6, 192, 160
x, w = torch.randn(T, D), torch.randn(E, N, D) / 14
ids = torch.stack([torch.randperm(E - 1)[:k] for _ in range(T)])
tw = torch.softmax(torch.randn(T, k), -1)
r = make_routing(ids, E)
xp = permute(x, r)
assert torch.equal(xp, permute_ref(x, r)), "permute"
rows = r.row_of.flatten()
used = int(r.offsets[-1])
assert used < r.padded_rows
for impl in ("classic", "tma"):  # tma: 5 row tiles (one per non-empty expert) over 4 programs
    o = grouped_gemm(xp, w, r, impl=impl)
    assert rel(o[rows], grouped_gemm_ref(xp, w, r)[rows]) < 1e-5, f"grouped {impl}"
    assert not o[used:].any(), f"grouped {impl}: rows past the last segment are zeros"
# a 64-row tile config: half of each expert's last 128 rows here is padding alone, whose product the
# kernel skips; the output still holds zeros there, as the reference has
for impl, cfgs in (("tma", moe._GG_TMA_CONFIGS), ("classic", moe._GG_CONFIGS)):
    cfg64 = next(i for i, c in enumerate(cfgs) if c.kwargs["BLOCK_M"] == 64)
    o64 = grouped_gemm(xp, w, r, impl=impl, config=cfg64)
    assert rel(o64[:used], grouped_gemm_ref(xp, w, r)[:used]) < 1e-5, f"grouped {impl}, 64-row tiles"
    assert not o64[used:].any() and not o64[r.src_token < 0].any(), f"grouped {impl}, 64-row tiles: padding zero"
# a tile stored in two halves of its columns (C_SPLIT=2); N=160: the right half mostly past N
split = next(i for i, c in enumerate(moe._GG_TMA_CONFIGS) if c.kwargs.get("C_SPLIT") == 2)
assert moe._GG_TMA_CONFIGS[split].kwargs["BLOCK_N"] == 256 > N
assert torch.equal(grouped_gemm(xp, w, r, impl="tma", config=split), o), "grouped tma, the store in two halves"
assert rel(combine(o, tw, r), combine_ref(o, tw, r)) < 1e-6, "combine"
dy = torch.randn(T, N)  # float32: the interpreter's bf16 rounding differs (see dual_close)
for o_in in (o, None):
    (d_out, d_w), (d_out_r, d_w_r) = combine_backward(dy, o_in, tw, r), combine_backward_ref(dy, o_in, tw, r)
    assert torch.equal(d_out, d_out_r), "combine backward: d out_perm, padding rows zero"
    assert (d_w is None) == (o_in is None) and (d_w is None or rel(d_w, d_w_r) < 1e-6), "combine backward: d topk_w"
xq, xs = act_quant_ref(x)
wq, ws = zip(*(weight_quant_ref(w[e]) for e in range(E)))
args = (permute(xq, r), torch.stack(wq), r, permute(xs, r), torch.stack(ws))
for impl in ("classic", "tma"):
    o8 = grouped_gemm(*args, out_dtype=torch.float32, impl=impl)
    assert rel(o8[rows], grouped_gemm_ref(*args, out_dtype=torch.float32)[rows]) < 1e-5, f"grouped fp8 {impl}"
    assert not o8[used:].any(), f"grouped fp8 {impl}: rows past the last segment are zeros"
cfg64 = next(i for i, c in enumerate(moe._GG_TMA_FP8_CONFIGS) if c.kwargs["BLOCK_M"] == 64)
o8 = grouped_gemm(*args, out_dtype=torch.float32, impl="tma", config=cfg64)
assert rel(o8[:used], grouped_gemm_ref(*args, out_dtype=torch.float32)[:used]) < 1e-5, "grouped fp8, 64-row tiles"
assert not o8[r.src_token < 0].any(), "grouped fp8 tma, 64-row tiles: padding rows zero"
dq, ds = act_quant_ref(torch.randn(r.padded_rows, N).t())  # (N, P): dout quantized along rows
xtq, xts = act_quant_ref(torch.randn(r.padded_rows, D).t())
dw = grouped_wgrad_fp8(dq, ds, xtq, xts, r)
assert rel(dw, grouped_wgrad_ref(dq, ds, xtq, xts, r)) < 1e-5, "grouped wgrad fp8"
assert dw[E - 1].abs().max() == 0, "the empty expert's gradient is zero"
dwb = grouped_wgrad_fp8(dq, ds, xtq, xts, r, out_dtype=torch.bfloat16)  # stored in bf16, no fp32 pass
assert dwb.dtype == torch.bfloat16 and rel(dwb, dw) < 4e-3, "grouped wgrad bf16 out"  # one bf16 rounding
print("interpret ok")
'''


def test_triton_kernels_under_interpreter():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root))
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "interpret ok" in res.stdout, res.stdout + res.stderr[-4000:]
