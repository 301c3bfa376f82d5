"""GPU tests: each Triton kernel against its PyTorch reference on fresh random data (skipped without CUDA).

Outputs are allocated with torch.empty by the kernels; every check compares whole outputs, so an
unwritten element shows up as a large error (or NaN, which never passes).
"""

from __future__ import annotations


import pytest
import torch

from kernels._triton import HAS_TRITON

from tests.kernel_helpers import FP8_BOUND, rel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton"),
    pytest.mark.usefixtures("fresh_seed"),
]


@pytest.mark.parametrize("shape", [(4096, 7168), (333, 1000), (1, 128)])
@pytest.mark.parametrize("transposed", [False, True])
def test_act_quant_triton_matches_reference(shape, transposed):
    from kernels.fp8_quant import act_quant_ref, act_quant_triton
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3
    if transposed:  # the 128x1 (along tokens) quantization of the wgrad, read through strides
        x = torch.randn(shape[::-1], device="cuda", dtype=torch.bfloat16).t()
    q, s = act_quant_triton(x)
    qr, sr = act_quant_ref(x)
    assert torch.equal(s, sr)
    assert (q.float() != qr.float()).float().mean() < 1e-3  # division rounding at ties only


@pytest.mark.parametrize("shape", [(7168, 2048), (300, 200)])
def test_weight_quant_triton_matches_reference(shape):
    from kernels.fp8_quant import weight_quant_ref, weight_quant_triton
    w = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    q, s = weight_quant_triton(w)
    qr, sr = weight_quant_ref(w)
    assert torch.equal(s, sr)
    assert (q.float() != qr.float()).float().mean() < 1e-3


@pytest.mark.parametrize("M,N,K", [(512, 1024, 2048), (300, 200, 700), (4096, 2048, 7168), (64, 7168, 256)])
@pytest.mark.parametrize("layout", ["forward", "dgrad", "wgrad"])
def test_fp8_gemm_triton_matches_reference(M, N, K, layout):
    from kernels.fp8_gemm import fp8_gemm_ref, fp8_gemm_triton
    from kernels.fp8_quant import act_quant_ref, weight_quant_ref
    a = torch.randn(M, K, device="cuda")
    if layout == "wgrad":  # B is an activation with 1x128 tiles too
        bq, bs = act_quant_ref(torch.randn(N, K, device="cuda"))
        bb = 1
    elif layout == "forward":  # B = w (N, K), 128x128 blocks
        bq, bs = weight_quant_ref(torch.randn(N, K, device="cuda") / K**0.5)
        bb = 128
    else:  # dgrad: B = w^T for a weight w (K, N); its blocks transpose with it
        wq, ws = weight_quant_ref(torch.randn(K, N, device="cuda") / K**0.5)
        bq, bs, bb = wq.t().contiguous(), ws.t().contiguous(), 128
    aq, as_ = act_quant_ref(a)
    c = fp8_gemm_triton(aq, as_, bq, bs, bb, out_dtype=torch.float32)
    ref = fp8_gemm_ref(aq, as_, bq, bs, bb, compute_dtype=torch.float64)
    # same quantized operands; NOTE: Hopper's FP8 MMA accumulates inside each 128-deep slice with
    # reduced precision (about 14 mantissa bits, as the DeepSeek-V3 paper reports for H800), which is
    # why the kernel promotes to FP32 every 128: measured 1.3e-4 on an H200, whatever the shape
    assert rel(c, ref) < 5e-4
    c16 = fp8_gemm_triton(aq, as_, bq, bs, bb, out_dtype=torch.bfloat16)
    assert rel(c16, ref) < 1e-2


def test_fp8_gemm_against_float64_product():
    from kernels.fp8_gemm import fp8_gemm
    from kernels.fp8_quant import act_quant, weight_quant
    x = torch.randn(1000, 1536, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(768, 1536, device="cuda", dtype=torch.bfloat16)
    y = fp8_gemm(*act_quant(x), *weight_quant(w), 128, backend="triton")
    assert rel(y, x.double() @ w.double().t()) < FP8_BOUND


def test_cublas_peer_agrees_where_available():
    from kernels.fp8_gemm import fp8_gemm_cublas, fp8_gemm_ref
    from kernels.fp8_quant import act_quant, weight_quant
    aq, as_ = act_quant(torch.randn(512, 1024, device="cuda"))
    bq, bs = weight_quant(torch.randn(768, 1024, device="cuda"))
    try:
        c = fp8_gemm_cublas(aq, as_, bq, bs, 128, out_dtype=torch.float32)
    except (RuntimeError, ValueError) as e:
        pytest.skip(f"torch._scaled_mm refuses blockwise scales here: {e}")
    assert rel(c, fp8_gemm_ref(aq, as_, bq, bs, 128, compute_dtype=torch.float64)) < 1e-3


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("T,E,k,D,N", [(4096, 8, 2, 1024, 512), (333, 16, 4, 384, 200)])
def test_moe_kernels_match_reference(fp8, T, E, k, D, N):
    from kernels.fp8_quant import act_quant, weight_quant
    from kernels.moe import (combine, combine_ref, grouped_gemm, grouped_gemm_ref, make_routing, moe_ref,
                             permute, permute_ref)
    x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(E, N, D, device="cuda", dtype=torch.bfloat16) / D**0.5
    scores = torch.randn(T, E, device="cuda")
    scores[:, -1] = -1e9  # one expert gets no token
    tw, ids = torch.topk(scores.softmax(-1), k)
    r = make_routing(ids, E)
    xp = permute(x, r)
    assert torch.equal(xp, permute_ref(x, r))
    if fp8:
        xq, xs = act_quant(x)
        wq, ws = zip(*(weight_quant(w[e]) for e in range(E)))
        wq, ws = torch.stack(wq), torch.stack(ws)
        args = (permute(xq, r), wq, r, permute(xs, r), ws)
        assert torch.equal(args[3], permute_ref(xs, r))
    else:
        args = (xp, w, r)
    out = grouped_gemm(*args, out_dtype=torch.float32)
    ref = grouped_gemm_ref(*args, out_dtype=torch.float32)
    rows = r.row_of.flatten()
    assert rel(out[rows], ref[rows]) < (5e-4 if fp8 else 1e-4)  # FP8 MMA accumulation, see above
    y = combine(out, tw, r)
    assert rel(y, combine_ref(out, tw, r)) < 1e-5
    assert rel(y, moe_ref(x, ids, tw, w)) < (FP8_BOUND if fp8 else 1e-2)


def test_fp8_linear_cuda_matches_emulation():
    from torch import nn

    from kernels.fp8_linear import FP8Linear
    lin = nn.Linear(1024, 768).cuda().to(torch.bfloat16)
    x = torch.randn(4, 300, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grads = []
    for emulate in (False, True):
        m = FP8Linear.from_linear(lin, backend="triton", emulate=emulate)
        x.grad = lin.weight.grad = lin.bias.grad = None
        y = m(x)
        y.float().square().sum().backward()
        grads.append((y.detach(), x.grad.clone(), lin.weight.grad.clone()))
    for a, b in zip(*grads):
        assert rel(a, b) < 2e-2  # bf16 outputs, different summation order


@pytest.mark.parametrize("fp8", [False, True])
def test_grouped_experts_cuda_matches_emulation(fp8):
    from kernels.experts import GroupedExperts
    ex = GroupedExperts(8, 512, 256, init_std=0.05).cuda()
    ex.fp8 = fp8
    x = torch.randn(1000, 512, device="cuda", requires_grad=True)
    tw, ids = torch.topk(torch.randn(1000, 8, device="cuda").softmax(-1), 2)
    outs = []
    for emulate in (False, True):
        ex.emulate = emulate
        x.grad = None
        for p in ex.parameters():
            p.grad = None
        y = ex(x, ids, tw)
        y.square().sum().backward()
        outs.append((y.detach(), x.grad.clone(), ex.w1.grad.clone(), ex.w2.grad.clone()))
    for a, b in zip(*outs):
        # fp32 operands: Triton's dot runs them in tf32 (bf16 path); FP8 MMA accumulation (fp8 path)
        assert rel(a, b) < 1e-2
