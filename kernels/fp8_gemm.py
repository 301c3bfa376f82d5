"""FP8 blockwise-scaled GEMM with FP32 accumulation: C = (A * sa) @ (B * sb)^T.

What it computes. A (M, K) and B (N, K) are FP8 E4M3, both K-contiguous ("NT" layout, the layout
Hopper's FP8 tensor-core instruction wants for both operands). A carries one float32 scale per 1x128
tile, sa (M, ceil(K/128)). B carries either one scale per 128x128 block, sb (ceil(N/128), ceil(K/128))
(`b_block=128`, a weight), or one per 1x128 tile, sb (N, ceil(K/128)) (`b_block=1`, an activation).
The three products of a linear layer y = x @ w^T in the DeepSeek-V3 recipe are all this one kernel:
  forward  y  = x  @ w^T  : A = x  (1x128 along K),         B = w   (128x128)       b_block=128
  dgrad    dx = dy @ w    : A = dy (1x128 along N),         B = w^T (128x128, the same blocks
                                                                       transposed)  b_block=128
  wgrad    dw = dy^T @ x  : A = dy^T (1x128 along tokens),  B = x^T (1x128 along
                                                                       tokens)      b_block=1

Why it exists. The scales change every 128 values of K, so they cannot be applied after the GEMM.
The kernel does what the paper calls promotion: each 128-deep slice of K goes through the tensor cores
in FP8 and the partial product is scaled and added to an FP32 accumulator held in registers, so the
limited accumulation width of the FP8 MMA never spans more than 128 products.

What it matches. `fp8_gemm_ref` (dequantize, then matmul in float32 or float64) is the definition,
and is also the CPU emulation path used in CI. `torch._scaled_mm` with blockwise scales (cuBLAS) is
the peer: `fp8_gemm(..., backend="auto")` runs both once per shape on the GPU and keeps the faster of
those whose result agrees with the reference (see pick_backend).
Shapes need not be multiples of 128 (ragged tiles are masked); the cuBLAS peer needs M, N, K
multiples of 16, and (weights) K a multiple of 512, and is skipped otherwise: see fp8_gemm_cublas.
"""

from __future__ import annotations

import torch

from kernels._triton import HAS_TRITON, INTERPRET, grouped_tile, require_cuda, tl, triton, use_triton
from kernels.fp8_quant import FP8, TILE, act_dequant, cdiv


def _check(a, sa, b, sb, b_block):
    assert a.dtype == FP8 and b.dtype == FP8, f"fp8_gemm: A, B must be {FP8}, got {a.dtype}, {b.dtype}"
    assert a.dim() == 2 and b.dim() == 2, "fp8_gemm: A (M, K) and B (N, K) must be 2-D"
    M, K = a.shape
    N, Kb = b.shape
    assert K == Kb, f"fp8_gemm: A is (M, K)=({M}, {K}) but B is (N, K)=({N}, {Kb}); K must agree"
    assert b_block in (1, TILE), f"fp8_gemm: b_block must be 1 or {TILE}, got {b_block}"
    kt = cdiv(K, TILE)
    assert sa.shape == (M, kt), f"fp8_gemm: A scales must be (M, ceil(K/128))=({M}, {kt}), got {tuple(sa.shape)}"
    want = (cdiv(N, b_block), kt)
    assert sb.shape == want, f"fp8_gemm: B scales must be {want} for b_block={b_block}, got {tuple(sb.shape)}"
    assert sa.dtype == torch.float32 and sb.dtype == torch.float32, "fp8_gemm: scales must be float32"
    return M, N, K


# ---------------------------------------------------------------------------------------------
# reference / CPU emulation


def fp8_gemm_ref(a, sa, b, sb, b_block: int = TILE, out_dtype=torch.float32,
                 compute_dtype=torch.float32) -> torch.Tensor:
    """Dequantize both operands and multiply: (a * sa) @ (b * sb)^T in compute_dtype."""
    _check(a, sa, b, sb, b_block)
    ad = act_dequant(a, sa, group_rows=1).to(compute_dtype)
    bd = act_dequant(b, sb, group_rows=b_block).to(compute_dtype)
    return (ad @ bd.t()).to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Triton kernel

if HAS_TRITON:

    _CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=8, num_stages=6),
    ]

    @triton.jit
    def _fp8_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, M, N, K,
                         stride_am, stride_bn, stride_cm, stride_sam, stride_sbn,
                         B_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        # NOTE: rows past M / N are wrapped, not masked: they compute garbage that is never stored
        rm = offs_m % M
        rn = offs_n % N
        a_ptrs = a_ptr + rm[:, None] * stride_am + offs_k[None, :]
        b_ptrs = b_ptr + rn[:, None] * stride_bn + offs_k[None, :]
        sa_ptrs = sa_ptr + rm * stride_sam
        sb_ptrs = sb_ptr + (rn // B_BLOCK) * stride_sbn

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        kb = 0
        for k0 in range(0, K, BLOCK_K):
            k_left = K - k0
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            sa = tl.load(sa_ptrs + kb)
            sb = tl.load(sb_ptrs + kb)
            # promotion: an FP8 MMA over one 128-deep slice, then scaled into the FP32 accumulator
            acc += tl.dot(a, tl.trans(b)) * sa[:, None] * sb[None, :]
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
            kb += 1

        c = acc.to(c_ptr.dtype.element_ty)
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    # NOTE: the autotuner needs a GPU driver; under TRITON_INTERPRET the first config is used as is
    _fp8_gemm_tuned = (_fp8_gemm_kernel if INTERPRET else
                       triton.autotune(configs=_CONFIGS, key=["M", "N", "K", "B_BLOCK"])(_fp8_gemm_kernel))


def fp8_gemm_triton(a, sa, b, sb, b_block: int = TILE, out_dtype=torch.bfloat16,
                    autotune: bool = True) -> torch.Tensor:
    """autotune=False launches the first config as is: for shapes that change every call (an
    expert's row count in the MoE weight gradient), where the autotuner, keyed by M, N and K,
    would benchmark every config again for each new shape."""
    M, N, K = _check(a, sa, b, sb, b_block)
    require_cuda(a, b, sa, sb, what="fp8_gemm_triton")
    assert a.stride(1) == 1 and b.stride(1) == 1, (
        "fp8_gemm_triton: A and B must be K-contiguous (stride(1) == 1); pass w.t().contiguous() "
        "for the dgrad operand")
    assert sa.stride(1) == 1 and sb.stride(1) == 1, "fp8_gemm_triton: scales must be row-major"
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)

    def grid(meta):
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    if INTERPRET or not autotune:
        cfg = _CONFIGS[0]
        kernel, extra = _fp8_gemm_kernel, dict(cfg.kwargs)
        if not INTERPRET:
            extra.update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        kernel, extra = _fp8_gemm_tuned, {}
    kernel[grid](a, b, c, sa, sb, M, N, K, a.stride(0), b.stride(0), c.stride(0),
                 sa.stride(0), sb.stride(0), B_BLOCK=b_block, BLOCK_K=TILE, **extra)
    return c


# ---------------------------------------------------------------------------------------------
# the cuBLAS peer: torch._scaled_mm with DeepSeek-style blockwise scales (CUDA >= 12.9, sm_90)


def fp8_gemm_cublas(a, sa, b, sb, b_block: int = TILE, out_dtype=torch.bfloat16) -> torch.Tensor:
    """torch._scaled_mm(a, b.t()) with blockwise scales. Raises where this torch/cuBLAS refuses.

    Layouts it checks (aten ScaledBlas.cpp): the 1x128 scale of an (R, K) operand must be
    (R, K/128) with strides (1, R), i.e. outer-dim-major; a 128x128 scale is (R/128, K/128) row-major,
    passed for B as its transpose.
    """
    M, N, K = _check(a, sa, b, sb, b_block)
    if b_block == TILE and cdiv(K, TILE) % 4:
        # NOTE: measured on H200 (torch 2.11, CUDA 13): with K/128 in {2, 2.25, 3, 22} this call
        # returned wrong products (relative error 0.7 to 4e5) instead of refusing; with K/128 in
        # {4, 8, 16} it was right. A row of the 128x128 scales is then not 16 bytes aligned.
        raise ValueError(f"fp8_gemm_cublas: K={K} gives {cdiv(K, TILE)} scale blocks per row; cuBLAS "
                         "blockwise needs a multiple of 4 (K a multiple of 512); use the Triton kernel")
    sa_t = sa.t().contiguous().t()  # (M, kt), strides (1, M)
    if b_block == 1:
        sb_arg = sb.t().contiguous()  # (kt, N) row-major: its .t() is (N, kt) with strides (1, N)
    else:
        sb_arg = sb.contiguous().t()  # (kt, nt): its .t() is (nt, kt) row-major
    return torch._scaled_mm(a, b.t(), scale_a=sa_t, scale_b=sb_arg, out_dtype=out_dtype)


# ---------------------------------------------------------------------------------------------
# dispatch

_BACKEND_CACHE: dict[tuple, str] = {}


def _time_ms(fn, iters: int = 5) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


AGREE = 2e-2  # relative Frobenius distance to the dequantized product that a backend must stay under


def pick_backend(a, sa, b, sb, b_block, out_dtype) -> str:
    """Once per shape: run Triton and cuBLAS, keep those whose result agrees with the dequantized
    reference (`fp8_gemm_ref` on the same device; the FP8 MMA's accumulation differs by ~1e-4), and
    of those the faster. NOTE: a backend can accept a shape and still be wrong on it (scales of a
    ragged K or N tile); "reference" (dequantize + matmul: right, slow) when neither agrees, with a
    warning that names the shape."""
    key = (a.shape[0], b.shape[0], a.shape[1], b_block, out_dtype, a.device.index)
    if key not in _BACKEND_CACHE:
        ref = fp8_gemm_ref(a, sa, b, sb, b_block, out_dtype=torch.float32)
        times = {}
        for name, fn in (("cublas", fp8_gemm_cublas), ("triton", fp8_gemm_triton)):
            try:
                out = fn(a, sa, b, sb, b_block, out_dtype).float()
            except (RuntimeError, ValueError):  # this torch / cuBLAS refuses the scale layout or shape
                continue
            err = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            if err < AGREE:  # NaN fails too
                times[name] = _time_ms(lambda fn=fn: fn(a, sa, b, sb, b_block, out_dtype))
        if not times:
            import warnings

            warnings.warn(f"fp8_gemm: neither Triton nor cuBLAS agrees with the reference on M={a.shape[0]} "
                          f"N={b.shape[0]} K={a.shape[1]} b_block={b_block}; using the dequantized reference")
        _BACKEND_CACHE[key] = min(times, key=times.get) if times else "reference"
    return _BACKEND_CACHE[key]


def fp8_gemm(a, sa, b, sb, b_block: int = TILE, out_dtype=torch.bfloat16,
             backend: str = "auto") -> torch.Tensor:
    """C (M, N) = (a * sa) @ (b * sb)^T. backend: "auto" | "triton" | "cublas" | "reference" (CUDA);
    emulated (the reference) on CPU."""
    if not (a.is_cuda and HAS_TRITON) and backend != "cublas":
        return fp8_gemm_ref(a, sa, b, sb, b_block, out_dtype=out_dtype)
    if backend == "auto":
        backend = pick_backend(a, sa, b, sb, b_block, out_dtype)
    if backend == "cublas":
        return fp8_gemm_cublas(a, sa, b, sb, b_block, out_dtype)
    if backend == "triton":
        return fp8_gemm_triton(a, sa, b, sb, b_block, out_dtype)
    if backend == "reference":
        return fp8_gemm_ref(a, sa, b, sb, b_block, out_dtype=out_dtype)
    raise ValueError(f"fp8_gemm: backend must be 'auto', 'triton', 'cublas' or 'reference', got {backend!r}")


__all__ = ["fp8_gemm", "fp8_gemm_ref", "fp8_gemm_triton", "fp8_gemm_cublas", "use_triton"]
