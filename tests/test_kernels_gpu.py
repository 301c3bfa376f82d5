"""GPU tests: each Triton kernel against its PyTorch reference on fresh random data (skipped without CUDA).

Outputs are allocated with torch.empty by the kernels; every check compares whole outputs, so an
unwritten element shows up as a large error (or NaN, which never passes).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from kernels._triton import HAS_TRITON

from tests.kernel_helpers import FP8_BOUND, count_backward_layouts, rel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton"),
    pytest.mark.usefixtures("fresh_seed"),
]


@pytest.mark.parametrize("shape", [(4096, 7168), (333, 1000), (1, 128)])
@pytest.mark.parametrize("transposed,pad_to", [(False, 1), (True, 1), (True, 128)])
def test_act_quant_triton_matches_reference(shape, transposed, pad_to):
    from kernels.fp8_quant import act_quant_ref, act_quant_triton
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3
    if transposed:  # the 128x1 (along tokens) quantization of the wgrad, read through strides
        x = torch.randn(shape[::-1], device="cuda", dtype=torch.bfloat16).t()
    q, s = act_quant_triton(x, pad_to=pad_to)
    qr, sr = act_quant_ref(x, pad_to=pad_to)
    assert torch.equal(s, sr)
    assert (q.float() != qr.float()).float().mean() < 1e-3  # division rounding at ties only


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("shape", [(65536, 512), (333, 1000)])
def test_swiglu_quantizations_match_their_references(shape, stacked):
    # the experts' SwiGLU product and its two gradients, made inside the dual quantization kernel:
    # silu in fp32, rounded to bf16 where eager rounds; the fast exp may move a value by one bf16
    # step now and then, hence the bounds. Each through its dispatch too (fused or not, by measurement).
    # stacked: gate and up are the halves of one GEMM output [h1 | h3] (kernels/fp8_linear.py
    # gate_up_stacked), the gradient a tensor of its own: every fused kernel must take those strides
    from kernels.fp8_quant import (_SWIGLU_CACHE, act_dequant, swiglu_grad_quant_dual, swiglu_grad_quant_dual_ref,
                                   swiglu_grad_quant_dual_triton, swiglu_quant_dual, swiglu_quant_dual_ref,
                                   swiglu_quant_dual_triton)
    M, K = shape
    if stacked:
        h = torch.randn(M, 2 * K, device="cuda", dtype=torch.bfloat16)
        h[:, :K] *= 3
        gate, up = h[:, :K], h[:, K:]  # views, rows 2K apart
    else:
        gate, up = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3, torch.randn(shape, device="cuda",
                                                                                          dtype=torch.bfloat16)
    dact = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    strips = functools.partial(swiglu_grad_quant_dual_triton, kernel="strips")
    cases = [(swiglu_quant_dual_triton(gate, up), swiglu_quant_dual_ref(gate, up)),
             (swiglu_quant_dual_triton(gate, up, kernel="strips"), swiglu_quant_dual_ref(gate, up)),
             (swiglu_quant_dual(gate, up), swiglu_quant_dual_ref(gate, up))]
    for impl in (swiglu_grad_quant_dual_triton, strips, swiglu_grad_quant_dual):
        cases += list(zip(impl(dact, gate, up), swiglu_grad_quant_dual_ref(dact, gate, up)))
        if K % 128 == 0:  # [d gate | d up] side by side, as a stacked [w1; w3]'s backward takes them
            cases.append((impl(dact, gate, up, stacked=True), swiglu_grad_quant_dual_ref(dact, gate, up, stacked=True)))
    for got, ref in cases:
        assert all(a.shape == b.shape for a, b in zip(got, ref))
        assert rel(got[1], ref[1]) < 1e-3 and rel(got[3], ref[3]) < 1e-3
        for (q, s), (qr, sr) in (((got[0], got[1]), (ref[0], ref[1])), ((got[2], got[3]), (ref[2], ref[3]))):
            assert rel(act_dequant(q, s), act_dequant(qr, sr)) < 1e-2
    for key, choice in _SWIGLU_CACHE.items():  # no fused kernel was dropped for these layouts
        assert not choice.refused, (key, choice.refused)


@pytest.mark.parametrize("shape", [(7168, 2048), (300, 200)])
def test_weight_quant_triton_matches_reference(shape):
    from kernels.fp8_quant import weight_quant_ref, weight_quant_triton
    w = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    q, s = weight_quant_triton(w)
    qr, sr = weight_quant_ref(w)
    assert torch.equal(s, sr)
    assert (q.float() != qr.float()).float().mean() < 1e-3


@pytest.mark.parametrize("kernel", ["sweeps", "strips"])
@pytest.mark.parametrize("shape", [(4096, 7168), (333, 1000), (16376, 1024), (1, 128)])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_act_quant_dual_matches_reference(shape, strided, dtype, kernel):
    # one read of x, both layouts: 1x128 along K (forward, dgrad) and x^T's 1x128 along M (wgrad)
    from kernels.fp8_quant import act_quant_dual_ref, act_quant_dual_triton
    x = torch.randn(shape[::-1] if strided else shape, device="cuda", dtype=dtype) * 3
    x = x.t() if strided else x
    got, ref = act_quant_dual_triton(x, kernel=kernel), act_quant_dual_ref(x)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
    assert torch.equal(got[1], ref[1]) and torch.equal(got[3], ref[3])
    for a, b in ((got[0], ref[0]), (got[2], ref[2])):
        assert (a.float() != b.float()).float().mean() < 1e-3  # division rounding at ties only
    assert not got[2][:, shape[0]:].float().any()  # x^T's padding columns (tokens) are zeros


# a list: weights stacked along N into one FP8 weight (a SwiGLU's [w1; w3]: kernels/fp8_linear.py
# gate_up_stacked), each launch writing its rows of the shared outputs
@pytest.mark.parametrize("shape", [(7168, 2048), (300, 200), (32, 512, 1024), (4, 200, 136), (8, 256, 512),
                                   [(32, 512, 1024), (32, 512, 1024)], [(512, 1024), (512, 1024)],
                                   [(4, 256, 136), (4, 200, 136)]])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weight_quant_dual_matches_reference(shape, dtype):
    from kernels.fp8_quant import weight_quant_dual_ref, weight_quant_dual_triton
    w = (tuple(torch.randn(s, device="cuda", dtype=dtype) for s in shape) if isinstance(shape, list)
         else torch.randn(shape, device="cuda", dtype=dtype))
    got, ref = weight_quant_dual_triton(w), weight_quant_dual_ref(w)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
    assert torch.equal(got[1], ref[1]) and torch.equal(got[3], ref[3])
    assert (got[0].float() != ref[0].float()).float().mean() < 1e-3
    assert torch.equal(got[2].float(), got[0].transpose(-1, -2).float())


def test_act_quant_dual_auto_choice_is_measured():
    from kernels.fp8_quant import act_quant_dual, act_quant_dual_ref, dual_choices
    x = torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16)
    got, ref = act_quant_dual(x), act_quant_dual_ref(x)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[3], ref[3])
    choice = dual_choices()[-1]
    assert choice["impl"] in ("dual", "strips", "two_pass") and set(choice["median_ms"]) == {"dual", "strips", "two_pass"}


def test_fp8_linear_requantizes_after_a_fused_adamw_step():
    # the cached FP8 weight is reused by the micro-steps and replaced after the optimizer changes w
    from torch import nn

    from kernels.fp8_linear import FP8Linear
    lin = nn.Linear(1024, 2048, bias=False).cuda().to(torch.bfloat16)
    m = FP8Linear.from_linear(lin)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, fused=True)
    probe = torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        m(torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)).float().square().mean().backward()
    cached = lin.weight._fp8_cached
    with torch.no_grad():
        before = m(probe)
    assert lin.weight._fp8_cached is cached  # the probe reused the micro-steps' copy
    opt.step()
    fresh = nn.Linear(1024, 2048, bias=False).cuda().to(torch.bfloat16)
    fresh.load_state_dict(lin.state_dict())
    with torch.no_grad():
        after = m(probe)
        assert rel(after, FP8Linear.from_linear(fresh)(probe)) < 1e-6
    assert rel(after, before) > 1e-3  # the step moved the output: a stale copy would have shown


def test_grouped_wgrad_writes_the_weight_dtype_directly():
    from kernels.fp8_quant import act_quant
    from kernels.moe import grouped_wgrad_fp8
    from kernels.routing import make_routing
    E, N, K = 8, 512, 1024
    r = make_routing(torch.randint(0, E, (4096, 2), device="cuda"), E)
    dq, ds = act_quant(torch.randn(r.padded_rows, N, device="cuda", dtype=torch.bfloat16).t())
    xq, xs = act_quant(torch.randn(r.padded_rows, K, device="cuda", dtype=torch.bfloat16).t())
    dw32 = grouped_wgrad_fp8(dq, ds, xq, xs, r)
    dw16 = grouped_wgrad_fp8(dq, ds, xq, xs, r, out_dtype=torch.bfloat16)
    assert dw16.dtype == torch.bfloat16 and torch.equal(dw16, dw32.to(torch.bfloat16))


def _gemm_operands(M, N, K, layout):
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
    return aq, as_, bq, bs, bb


# (300, 200, 700): ragged in every dimension (classic only: TMA needs K % 16 == 0); (300, 200, 704):
# ragged M, N and last K slice, TMA-aligned
@pytest.mark.parametrize("M,N,K,impl", [(512, 1024, 2048, "classic"), (512, 1024, 2048, "tma"),
                                        (300, 200, 700, "classic"), (300, 200, 704, "tma"),
                                        (4096, 2048, 7168, "tma"), (64, 7168, 256, "tma")])
@pytest.mark.parametrize("layout", ["forward", "dgrad", "wgrad"])
def test_fp8_gemm_triton_matches_reference(M, N, K, impl, layout):
    from kernels.fp8_gemm import fp8_gemm_ref, fp8_gemm_triton
    aq, as_, bq, bs, bb = _gemm_operands(M, N, K, layout)
    c = fp8_gemm_triton(aq, as_, bq, bs, bb, out_dtype=torch.float32, impl=impl, config=0)
    ref = fp8_gemm_ref(aq, as_, bq, bs, bb, compute_dtype=torch.float64)
    # same quantized operands; NOTE: Hopper's FP8 MMA accumulates inside each 128-deep slice with
    # reduced precision (about 14 mantissa bits, as the DeepSeek-V3 paper reports for H800), which is
    # why the kernel promotes to FP32 every 128: measured 1.3e-4 on an H200, whatever the shape
    assert rel(c, ref) < 5e-4
    c16 = fp8_gemm_triton(aq, as_, bq, bs, bb, out_dtype=torch.bfloat16, impl=impl, config=0)
    assert rel(c16, ref) < 1e-2


def _run_or_skip(fn):
    """A config that does not fit the chip (shared memory, registers) is skipped, as the autotuner does."""
    from triton.runtime.errors import OutOfResources
    try:
        return fn()
    except OutOfResources as e:
        pytest.skip(f"config does not fit: {e}")


@pytest.mark.parametrize("impl,idx", [("classic", i) for i in range(7)] + [("tma", i) for i in range(6)])
def test_fp8_gemm_every_config(impl, idx):
    # the autotuner may pick any config: each one must be right (ragged M and N, one shape)
    from kernels.fp8_gemm import fp8_gemm_ref, fp8_gemm_triton
    aq, as_, bq, bs, bb = _gemm_operands(333, 400, 1024, "forward")
    c = _run_or_skip(lambda: fp8_gemm_triton(aq, as_, bq, bs, bb, torch.float32, impl=impl, config=idx))
    assert rel(c, fp8_gemm_ref(aq, as_, bq, bs, bb, compute_dtype=torch.float64)) < 5e-4


def _gluon_or_skip():
    from kernels.fp8_gemm_gluon import gluon_runs_on
    if not gluon_runs_on(torch.device("cuda")):
        pytest.skip("needs Triton's Gluon and a Hopper GPU (warpgroup MMA)")


@pytest.mark.parametrize("M,N,K", [(512, 1024, 2048), (300, 200, 704), (4096, 2048, 7168), (64, 7168, 256),
                                   (128, 128, 128), (257, 384, 384), (2048, 2304, 384)])
@pytest.mark.parametrize("layout", ["forward", "dgrad", "wgrad"])
def test_fp8_gemm_gluon_matches_reference(M, N, K, layout):
    # the Gluon kernel's flattened (tile, slice) loop: one slice (K=128), odd and even counts of slices
    # per program, ragged tiles, programs with one tile or several
    from kernels.fp8_gemm import fp8_gemm_gluon_checked, fp8_gemm_ref
    _gluon_or_skip()
    aq, as_, bq, bs, bb = _gemm_operands(M, N, K, layout)
    ref = fp8_gemm_ref(aq, as_, bq, bs, bb, compute_dtype=torch.float64)
    assert rel(fp8_gemm_gluon_checked(aq, as_, bq, bs, bb, torch.float32), ref) < 5e-4
    assert rel(fp8_gemm_gluon_checked(aq, as_, bq, bs, bb, torch.bfloat16), ref) < 1e-2


@pytest.mark.parametrize("config", [1])
@pytest.mark.parametrize("layout", ["forward", "wgrad"])
def test_fp8_gemm_gluon_every_config(config, layout):
    from kernels.fp8_gemm import fp8_gemm_gluon_checked, fp8_gemm_ref
    _gluon_or_skip()
    aq, as_, bq, bs, bb = _gemm_operands(333, 400, 1152, layout)
    c = _run_or_skip(lambda: fp8_gemm_gluon_checked(aq, as_, bq, bs, bb, torch.float32, config=config))
    assert rel(c, fp8_gemm_ref(aq, as_, bq, bs, bb, compute_dtype=torch.float64)) < 5e-4


def _bf16_bound(ref):
    # a bf16 result cannot be closer to the float64 reference than the reference rounded to bf16
    # (~1e-3); the kernel's own error (~1e-4, fp32 accumulation) adds little on top of that
    return 1.25 * rel(ref.to(torch.bfloat16), ref)


# N=200, 384, 640: the tile's right half ragged, or wholly past N (its B-scale block clamped; in the wgrad
# layout the columns past N have zero scales); M ragged, a tile's second warpgroup past M (M=257, 300);
# one slice (K=128); programs with one tile or several
@pytest.mark.parametrize("M,N,K", [(512, 1024, 2048), (300, 200, 704), (4096, 2048, 7168), (64, 7168, 256),
                                   (128, 128, 128), (257, 384, 384), (2048, 2304, 384), (1000, 640, 1152)])
@pytest.mark.parametrize("layout", ["forward", "dgrad", "wgrad"])
def test_fp8_gemm_gluon_warp_specialized_matches_reference(M, N, K, layout):
    from kernels.fp8_gemm import fp8_gemm_gluon_checked, fp8_gemm_ref
    from kernels.fp8_gemm_gluon import WS_CONFIG
    _gluon_or_skip()
    aq, as_, bq, bs, bb = _gemm_operands(M, N, K, layout)
    ref = fp8_gemm_ref(aq, as_, bq, bs, bb, compute_dtype=torch.float64)
    c = _run_or_skip(lambda: fp8_gemm_gluon_checked(aq, as_, bq, bs, bb, torch.bfloat16, config=WS_CONFIG))
    assert c.dtype == torch.bfloat16 and rel(c, ref) < _bf16_bound(ref)


@pytest.mark.parametrize("M,N,K", [(512, 1024, 2048), (300, 200, 704), (128, 128, 128)])
def test_fp8_gemm_gluon_warp_specialized_wgrad_in_halves(M, N, K, monkeypatch):
    # the wgrad layout's other part width (WS_WGRAD_PART=128: two 128-column halves a warpgroup)
    import kernels.fp8_gemm_gluon_ws as ws
    from kernels.fp8_gemm import fp8_gemm_gluon_checked, fp8_gemm_ref
    from kernels.fp8_gemm_gluon import WS_CONFIG
    _gluon_or_skip()
    monkeypatch.setattr(ws, "WS_WGRAD_PART", 128)
    aq, as_, bq, bs, bb = _gemm_operands(M, N, K, "wgrad")
    ref = fp8_gemm_ref(aq, as_, bq, bs, bb, compute_dtype=torch.float64)
    c = _run_or_skip(lambda: fp8_gemm_gluon_checked(aq, as_, bq, bs, bb, torch.bfloat16, config=WS_CONFIG))
    assert c.dtype == torch.bfloat16 and rel(c, ref) < _bf16_bound(ref)


@pytest.mark.parametrize("layout", ["forward", "dgrad", "wgrad"])
def test_fp8_gemm_configs_and_kernels_give_the_same_bits(layout):
    # `auto` and the autotuner choose by timing, which differs between runs; the choice among our
    # kernels must not change a bit of the result (measured so on the H200, 2026-11-30 third session;
    # cuBLAS matched them too, except in the wgrad layout: 2e-5 apart)
    from kernels.fp8_gemm import fp8_gemm_triton
    args = _gemm_operands(2048, 1024, 512, layout)
    outs = [fp8_gemm_triton(*args, out_dtype=torch.float32, impl=impl, config=i)
            for impl, i in (("tma", 0), ("tma", 1), ("tma", 3), ("classic", 0), ("classic", 2))]
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


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


def _moe_inputs(T, E, k, D, N, fp8):
    from kernels.fp8_quant import act_quant, weight_quant
    from kernels.routing import make_routing, permute, permute_ref
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
    return x, w, tw, ids, r, args


@pytest.mark.parametrize("impl", ["classic", "tma", "auto"])
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("T,E,k,D,N", [(4096, 8, 2, 1024, 512), (333, 16, 4, 384, 200)])
def test_moe_kernels_match_reference(impl, fp8, T, E, k, D, N):
    from kernels.moe import grouped_gemm, grouped_gemm_ref, moe_ref
    from kernels.routing import combine, combine_backward, combine_backward_ref, combine_ref
    x, w, tw, ids, r, args = _moe_inputs(T, E, k, D, N, fp8)
    out = grouped_gemm(*args, out_dtype=torch.float32, impl=impl)
    ref = grouped_gemm_ref(*args, out_dtype=torch.float32)
    rows = r.row_of.flatten()
    assert rel(out[rows], ref[rows]) < (5e-4 if fp8 else 1e-4)  # FP8 MMA accumulation, see above
    y = combine(out, tw, r)
    assert rel(y, combine_ref(out, tw, r)) < 1e-5
    dy, o16 = torch.randn_like(y).bfloat16(), out.bfloat16()
    (d_out, d_w), (d_out_r, d_w_r) = combine_backward(dy, o16, tw, r), combine_backward_ref(dy, o16, tw, r)
    assert torch.equal(d_out, d_out_r)  # the same fp32 product, rounded once to bf16; padding rows zero
    assert rel(d_w, d_w_r) < 1e-5  # summed in another order
    t = slice(0, 512)  # NOTE: moe_ref holds a (T, k, N, D) float64 tensor: check the first 512 tokens
    assert rel(y[t], moe_ref(x[t], ids[t], tw[t], w)) < (FP8_BOUND if fp8 else 1e-2)


# config 6 (four stages, the store in halves) fits beside a 2-byte result only: it runs with bf16 out too
@pytest.mark.parametrize("fp8,idx,out_dtype", [(False, i, torch.float32) for i in range(7)]
                         + [(False, 6, torch.bfloat16)] + [(True, i, torch.float32) for i in range(4)])
def test_grouped_tma_every_config(fp8, idx, out_dtype):
    from kernels.moe import grouped_gemm, grouped_gemm_ref
    _, _, _, _, r, args = _moe_inputs(1000, 8, 2, 512, 384, fp8)
    out = _run_or_skip(lambda: grouped_gemm(*args, out_dtype=out_dtype, impl="tma", config=idx))
    rows = r.row_of.flatten()
    ref = grouped_gemm_ref(*args, out_dtype=torch.float32)
    bound = 4e-3 if out_dtype == torch.bfloat16 else 5e-4 if fp8 else 1e-4  # bf16: its own rounding, ~2e-3
    assert rel(out[rows], ref[rows]) < bound
    # padding rows hold zeros, those of the 64-row tiles that the 64-row configs skip among them
    assert not out[r.src_token < 0].any()


@pytest.mark.parametrize("T,E,k,D,N,config", [(4096, 8, 2, 1024, 512, 0), (333, 16, 4, 384, 200, 0),
                                              (1000, 64, 2, 512, 384, 0), (1000, 64, 2, 512, 384, 1),
                                              (333, 16, 4, 384, 200, 1)])
def test_grouped_gluon_matches_reference(T, E, k, D, N, config):
    # the Gluon FP8 kernel over experts: every routed row right, padding rows and rows past the last
    # segment zero (64 experts: more programs than row tiles hold routed rows, some get none)
    from kernels.moe import grouped_gemm, grouped_gemm_ref
    _gluon_or_skip()
    _, _, _, _, r, args = _moe_inputs(T, E, k, D, N, True)
    out = _run_or_skip(lambda: grouped_gemm(*args, out_dtype=torch.float32, impl="gluon", config=config))
    rows = r.row_of.flatten()
    ref = grouped_gemm_ref(*args, out_dtype=torch.float32)
    assert rel(out[rows], ref[rows]) < 5e-4
    assert not out[r.src_token < 0].any()
    out16 = grouped_gemm(*args, impl="gluon", config=config)
    assert out16.dtype == torch.bfloat16 and rel(out16[rows], ref[rows]) < 1e-2


@pytest.mark.parametrize("T,E,k,D,N", [(4096, 8, 2, 1024, 512), (333, 16, 4, 384, 200), (1000, 64, 2, 512, 384),
                                       (2000, 4, 2, 1152, 640)])
@pytest.mark.parametrize("fp8", [True, False])
def test_grouped_gluon_warp_specialized_matches_reference(T, E, k, D, N, fp8):
    # impl="gluon_ws", 128x256 tiles, FP8 and bf16: N=200, 384, 640 leave the last column tile's right
    # half ragged or past the expert's N (its columns come from the next expert's rows, never stored)
    from kernels.moe import grouped_gemm, grouped_gemm_ref
    _gluon_or_skip()
    _, _, _, _, r, args = _moe_inputs(T, E, k, D, N, fp8)
    out = _run_or_skip(lambda: grouped_gemm(*args, impl="gluon_ws"))
    rows = r.row_of.flatten()
    ref = grouped_gemm_ref(*args, out_dtype=torch.float32).double()
    assert out.dtype == torch.bfloat16 and rel(out[rows], ref[rows]) < _bf16_bound(ref[rows])
    assert not out[r.src_token < 0].any()


@pytest.mark.parametrize("fp8", [True, False])
def test_grouped_gluon_warp_specialized_skips_only_padding_halves(fp8):
    # a 128-row tile's second warpgroup multiplies nothing when its 64 rows are padding alone. Segments of
    # 64 and 192 routed rows end on such a half; 65 and 193 put one routed row in it, which must be
    # computed; 128 and 1 fill a tile and leave 127 rows of padding
    from kernels.fp8_quant import act_quant, weight_quant
    from kernels.moe import grouped_gemm, grouped_gemm_ref
    from kernels.routing import make_routing, permute
    _gluon_or_skip()
    counts = [64, 65, 128, 1, 192, 193]
    E, D, N = len(counts), 384, 640
    ids = torch.cat([torch.full((c, 1), e, dtype=torch.long) for e, c in enumerate(counts)]).cuda()
    ids = ids[torch.randperm(ids.shape[0], device="cuda")]
    r = make_routing(ids, E)
    assert r.counts.tolist() == counts
    x = torch.randn(ids.shape[0], D, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(E, N, D, device="cuda", dtype=torch.bfloat16) / D**0.5
    if fp8:
        (xq, xs), (wq, ws) = act_quant(x), weight_quant(w.view(E * N, D))
        args = (permute(xq, r), wq.view(E, N, D), r, permute(xs, r), ws.view(E, N // 128, D // 128))
    else:
        args = (permute(x, r), w, r)
    out = _run_or_skip(lambda: grouped_gemm(*args, impl="gluon_ws"))
    rows = r.row_of.flatten()
    ref = grouped_gemm_ref(*args, out_dtype=torch.float32).double()
    for e in range(E):  # each expert's rows on their own: a skipped half with a routed row in it fails here
        seg = rows[ids[:, 0] == e]
        assert rel(out[seg], ref[seg]) < _bf16_bound(ref[seg]), (e, counts[e])
    assert not out[r.src_token < 0].any()


@pytest.mark.parametrize("fp8", [False, True])
def test_grouped_gemm_configs_and_kernels_give_the_same_bits(fp8):
    # as test_fp8_gemm_configs_and_kernels_give_the_same_bits, for impl="auto" among the grouped kernels
    from kernels.moe import grouped_gemm
    _, _, _, _, r, args = _moe_inputs(4096, 16, 4, 512, 384, fp8)
    from triton.runtime.errors import OutOfResources
    outs = []
    for impl, i in (("tma", 0), ("tma", 1), ("tma", 2), ("classic", 0), ("classic", None)):
        try:
            outs.append(grouped_gemm(*args, out_dtype=torch.float32, impl=impl, config=i))
        except OutOfResources:  # a config that does not fit the chip is never chosen (the autotuner skips it)
            continue
    assert len(outs) >= 3 and all(torch.equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("impl", ["classic", "tma"])
@pytest.mark.parametrize("fp8", [False, True])
def test_grouped_gemm_writes_zeros_past_the_routed_rows(impl, fp8):
    # rows [offsets[E], P) of the static bound: the experts' SwiGLU and quantizers read whole tensors
    from kernels.moe import grouped_gemm
    _, _, _, _, r, args = _moe_inputs(333, 16, 4, 384, 256, fp8)
    used, P = int(r.offsets[-1]), r.padded_rows
    assert used < P
    poison = torch.full((P, 256), float("nan"), device="cuda")  # its block is what the output gets next
    del poison
    out = grouped_gemm(*args, out_dtype=torch.float32, impl=impl)
    assert not out[used:].isnan().any() and not out[used:].any()


@pytest.mark.parametrize("idx", [None, 0, 1, 2])
def test_grouped_wgrad_fp8_matches_reference(idx):
    from kernels.fp8_quant import act_quant
    from kernels.moe import grouped_wgrad_fp8, grouped_wgrad_ref
    from kernels.routing import make_routing
    E, N, K, T = 16, 384, 200, 3000
    ids = torch.randint(0, E - 1, (T, 2), device="cuda")  # the last expert gets no row
    r = make_routing(ids, E)
    dq, ds = act_quant(torch.randn(r.padded_rows, N, device="cuda", dtype=torch.bfloat16).t())
    xq, xs = act_quant(torch.randn(r.padded_rows, K, device="cuda", dtype=torch.bfloat16).t())
    dw = _run_or_skip(lambda: grouped_wgrad_fp8(dq, ds, xq, xs, r, config=idx))
    ref = grouped_wgrad_ref(dq, ds, xq, xs, r)
    assert rel(dw, ref) < 5e-4
    assert dw[E - 1].abs().max() == 0  # the empty expert's gradient is written, as zeros


def test_gpu_timing_leaves_out_the_host_launch(monkeypatch):
    # a call that spends 20 ms on the host and microseconds on the GPU: launch timing (an eager loop)
    # charges it the host time, GPU timing (what a CUDA-graph replay pays) only its kernel. NOTE: times
    # far above a GPU time slice (ms): with other processes on the GPU (the device scripts run these
    # tests four at a time) a 300 us host delay was hidden once, most likely our stream waiting for its slice
    import statistics
    import time
    from kernels import autoselect
    monkeypatch.setattr(autoselect, "_SLEEP_CYCLES", 200_000_000)  # ~0.1 s queued ahead of each round
    x = torch.randn(256, 256, device="cuda")

    def host_heavy():
        time.sleep(0.02)
        return x @ x

    launch = statistics.median(autoselect.cuda_timer({"h": host_heavy}, iters=9)["h"])
    try:
        autoselect.set_timing("gpu")
        gpu = statistics.median(autoselect.cuda_timer({"h": host_heavy}, iters=9)["h"])
    finally:
        autoselect.set_timing("launch")
    assert launch > 15 and gpu < 5, (launch, gpu)


def test_auto_choice_agrees_and_is_measured():
    from kernels import fp8_gemm as mod
    from kernels.fp8_quant import act_quant, weight_quant
    for M, N, K in [(4096, 2048, 7168), (2048, 384, 1024), (2048, 1536, 384)]:  # K=384: cuBLAS refused
        xq, xs = act_quant(torch.randn(M, K, device="cuda", dtype=torch.bfloat16))
        wq, ws = weight_quant(torch.randn(N, K, device="cuda", dtype=torch.bfloat16))
        y = mod.fp8_gemm(xq, xs, wq, ws, 128, backend="auto")
        assert rel(y, mod.fp8_gemm_ref(xq, xs, wq, ws, 128, compute_dtype=torch.float64)) < 1e-2
    choices = mod.backend_choices()[-3:]
    assert all(c["samples"] == 21 and c["backend"] in c["median_ms"] for c in choices)
    assert "cublas" in choices[2]["refused"]


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


def test_fp8_swiglu_mlp_cuda_matches_emulation():
    # training/model/moe.py MLP converted to FP8: FP8SwiGLUFunction on the GPU (fused SwiGLU
    # quantizations, chosen per layout) against its emulation; three FP8 products in a chain
    from kernels.convert import convert_to_fp8
    from training.model.moe import MLP

    mlp = MLP(1024, 512).cuda().to(torch.bfloat16)
    convert_to_fp8(mlp)
    x = torch.randn(4, 300, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grads = []
    for emulate in (False, True):
        for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            m.emulate = emulate
        x.grad = None
        for p in mlp.parameters():
            p.grad = None
        y = mlp(x)
        y.float().square().sum().backward()
        grads.append((y.detach(), x.grad.clone(), *(p.grad.clone() for p in mlp.parameters())))
    for a, b in zip(*grads):
        assert torch.isfinite(a).all() and rel(a, b) < 2.5e-2  # as the grouped experts' chain below


def test_fp8_model_under_no_grad_quantizes_for_the_forward_only(monkeypatch):
    # validation, evaluation and rollouts run under no_grad: there the FP8 layers (linears, SwiGLU
    # MLPs, experts) take their custom op, which on the GPU too makes no backward layout, and the loss
    # is training's (the one-layout and two-layout quantizations may part on division ties only)
    from kernels.convert import convert_to_fp8
    from tests.model_fixtures import fp8_tiny_model_config
    from training.model import Transformer

    calls = count_backward_layouts(monkeypatch, "GPU_OPS")
    torch.manual_seed(0)
    cfg = fp8_tiny_model_config()
    model = Transformer(cfg).cuda().to(torch.bfloat16).eval()
    convert_to_fp8(model)
    batch = torch.randint(0, 512, (4, 129), device="cuda")
    trained = model(batch[:, :-1], batch[:, 1:]).loss.item()
    assert {"act_dual", "swiglu_dual"} <= set(calls)  # training makes the backward's layouts
    calls.clear()
    with torch.no_grad():
        inferred = model(batch[:, :-1], batch[:, 1:]).loss.item()
    assert calls == [] and math.isfinite(inferred)
    assert abs(trained - inferred) <= 1e-3 * abs(trained), (trained, inferred)


@pytest.mark.parametrize("fp8,dtype", [(False, torch.float32), (True, torch.float32), (True, torch.bfloat16)])
def test_grouped_experts_cuda_matches_emulation(fp8, dtype):
    from kernels.experts import GroupedExperts
    ex = GroupedExperts(8, 512, 256, init_std=0.05).cuda().to(dtype)
    ex.fp8 = fp8
    x = torch.randn(1000, 512, device="cuda", dtype=dtype, requires_grad=True)
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
    for name, a, b in zip(("y", "dx", "dw1", "dw2"), *outs):
        assert torch.isfinite(a).all(), f"{name}: non-finite values from the GPU path"
        # fp32 operands: Triton's dot runs them in tf32 (bf16 path). FP8 path: the MMA's accumulation
        # differs by ~1e-4, and each of the chain's re-quantizations (h, a, dout, da) turns such
        # differences into whole FP8 steps on a few elements: w1's gradient, four products deep,
        # measured 1.04e-2 on an H200 (2026-11-30) and 1.3e-2 on other shapes (2026-11-29)
        assert rel(a, b) < (2.5e-2 if fp8 else 1e-2)


@pytest.mark.parametrize("precision,mode", [("bf16", "graphed"), ("fp8", "graphed"), ("fp8", "compiled"),
                                            ("bf16", "compiled+graphed"), ("fp8", "compiled+graphed")])
def test_cuda_graphed_or_compiled_blocks_train_as_the_eager_ones(precision, mode):
    # pretrain.cuda_graphs (training/graphs.py): the same model, data and optimizer, eager and with
    # every block captured, over optimizer steps of two accumulated micro-steps each: a frozen FP8
    # weight copy, or a replay overwriting a gradient being accumulated, would part the two.
    # pretrain.compile in FP8: every block compiled whole (fullgraph: the FP8 layers are custom ops
    # in its graph, kernels/fp8_linear.py), by inductor, so the fused code around them runs too.
    # Both: the trainer's compile (training/engine.py), then each compiled block captured
    from kernels.convert import convert_to_fp8
    from tests.model_fixtures import fp8_tiny_model_config
    from training.engine import apply_speed_options
    from training.graphs import capture_blocks
    from training.model import Transformer
    from training.model.model import Block
    from training.settings import load_profile

    cfg = fp8_tiny_model_config()
    # steps x micro-steps x batch x tokens: counting sequences from random starts, learnable in a few steps
    data = (torch.randint(0, 512, (6, 2, 4, 1)) + torch.arange(129)).remainder(512).cuda()
    runs = {}
    for fast in (False, True):  # eager, then graphed or compiled
        torch.manual_seed(0)
        model = Transformer(cfg).cuda().to(torch.bfloat16).train()
        if precision == "fp8":
            convert_to_fp8(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
        if fast and mode == "compiled+graphed":
            apply_speed_options(model, load_profile("small", {"pretrain.compile": True}).pretrain)
        if fast and mode.endswith("graphed"):
            first = data[0, 0]
            assert capture_blocks(model, first[:, :-1], first[:, 1:]) == 3 + 2  # the stack and 2 MTP depths
            assert all(int(m.gate.tokens_per_expert.sum()) == 0 for m in model.moe_layers().values())
        if fast and mode == "compiled":
            for block in model.modules():
                if isinstance(block, Block):
                    block.compile(fullgraph=True)
        losses = []
        for step in data:
            for batch in step:
                out = model(batch[:, :-1], batch[:, 1:])
                (out.loss / len(step)).backward()
                losses.append(out.loss.item())
            opt.step()
            opt.zero_grad(set_to_none=True)
        runs[fast] = (losses, sum(int(m.gate.tokens_per_expert.sum()) for m in model.moe_layers().values()))
    (eager, eager_tokens), (fast, fast_tokens) = runs[False], runs[True]
    assert fast_tokens == eager_tokens  # the routed-token counts of the bias update: training only
    assert eager[-1] < eager[0] - 0.05  # it learns, so stale weights or lost gradients would show
    if mode == "graphed":  # the same kernels replayed
        for a, b in zip(eager, fast):
            assert abs(a - b) <= 2e-2 * abs(a), (eager, fast)
        return
    # compiled (and captured): inductor's fused norms, RoPE and SwiGLU round otherwise than the eager
    # ops, and training amplifies it. Measured on an H100 (2026-12-05): 0.03% on the first optimizer step's micro-steps
    # (the same weights), at most 1.0% through three optimizer steps, 2.5% after ten micro-steps; on
    # 2026-12-06, 1.75% on the third step's first micro-step under pytest -n 4 (alone, the same code
    # passed 1.5%: perhaps the other processes moved autoselect's kernel choices, and with them the
    # roundings). So: the same forward at the start, the same course over the first steps, and it
    # learns on its own
    assert all(abs(a - b) <= 5e-3 * abs(a) for a, b in zip(eager[:2], fast[:2])), (eager, fast)
    assert all(abs(a - b) <= 2.5e-2 * abs(a) for a, b in zip(eager[:6], fast[:6])), (eager, fast)
    assert fast[-1] < fast[0] - 0.05, fast


_ENGINE_GRAPHS_SCRIPT = r'''
import dataclasses, json, sys
import torch
from tests.model_fixtures import fp8_tiny_model_config
from training import distributed
from training.engine import build_engine
from training.expert_parallel import apply_expert_parallel
from training.graphs import capture_blocks
from training.model import Transformer
from training.pretrain import convert_model_to_fp8
from training.settings import load_profile

precision, zero = sys.argv[1], int(sys.argv[2])
dist = distributed.init()
cfg = fp8_tiny_model_config()
pre = dataclasses.replace(load_profile("small").pretrain, zero_stage=zero, global_batch_size=8, micro_batch_size=4,
                          learning_rate=3e-3, warmup_steps=0, steps=6)
data = (torch.randint(0, 512, (6, 2, 4, 1)) + torch.arange(129)).remainder(512).cuda()
runs = {}
for graphed in (False, True):
    torch.manual_seed(0)
    model = Transformer(cfg)
    apply_expert_parallel(model, 1)  # the trainer's setup, step by step (training/pretrain.py)
    model.to(dist.device)
    if precision == "fp8":
        convert_model_to_fp8(model, emulate=False)
    engine, _, _ = build_engine(model, pre, dist, precision)
    module = engine.module.train()
    if graphed:
        capture_blocks(module, data[0, 0, :, :-1], data[0, 0, :, 1:])
    losses = []
    for step in data:
        for batch in step:
            out = engine(batch[:, :-1], batch[:, 1:])
            engine.backward(out.loss)
            engine.step()
            losses.append(out.loss.item())
        module.update_router_biases()
    runs[str(graphed)] = losses
print(json.dumps(runs))
'''


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_cuda_graphs_train_under_the_deepspeed_engine(precision):
    # the trainer's own setup (expert-parallel wrapper, DeepSpeed ZeRO 1 engine, bf16 weights): the
    # test above passed while this capture failed in the trainer (training/engine.py
    # release_gradient_accumulators says why); one process, as DeepSpeed initialises torch.distributed
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.pretrain_fixtures import RENDEZVOUS

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PYTHONPATH"] = str(root)
    res = subprocess.run([sys.executable, "-c", _ENGINE_GRAPHS_SCRIPT, precision, "1"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    runs = json.loads(res.stdout.strip().splitlines()[-1])
    eager, graphed = runs["False"], runs["True"]
    assert eager[-1] < eager[0] - 0.05, eager  # it learns
    for a, b in zip(eager, graphed):
        assert abs(a - b) <= 2e-2 * abs(a), (eager, graphed)
