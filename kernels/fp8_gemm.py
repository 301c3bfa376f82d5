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

Two Triton kernels compute it. "classic": one program per output tile, pointer loads. "tma":
persistent (one program per SM walking the tiles in grouped order, so the next tile's loads can
overlap this tile's epilogue), operands through Hopper's TMA unit (host-side tensor descriptors:
hardware address generation and bounds handling, no masks), epilogue through a TMA store. Both
wait for each slice's product before scaling it (the tensor cores idle meanwhile). A third kernel,
in Gluon (kernels/fp8_gemm_gluon.py, Hopper only, `backend="gluon"`), scales each slice while the
next slice's MMA runs, and measured no faster (0.94-1.00 of the TMA kernel, H100). All three run
128x128 tiles, which read a third more from L2 per FLOP than 128x256 ones. The fourth,
warp-specialized in Gluon (kernels/fp8_gemm_gluon_ws.py, `backend="gluon_ws"`: a loader warp, two
MMA warpgroups on 128x256 tiles), runs the forward and dgrad layouts at 1.00-1.14x cuBLAS on large
shapes (H100, BENCHMARKS.md 2026-12-06 twentieth session) and is among auto's candidates; it runs
the wgrad layout too, slower than cuBLAS there (0.75-0.85, H200), so auto does not try it for that.

What it matches. `fp8_gemm_ref` (dequantize, then matmul in float32 or float64) is the definition,
and is also the CPU emulation path used in CI. `torch._scaled_mm` with blockwise scales (cuBLAS) is
the peer: `fp8_gemm(..., backend="auto")` runs cuBLAS, both Triton kernels and the warp-specialized
Gluon one (where it applies) once per shape and layout on the GPU and keeps the fastest (median of
21 timed calls) of those whose result agrees with the reference (see pick_backend and
kernels/autoselect.py).
Shapes need not be multiples of 128 (ragged tiles are masked); the cuBLAS peer needs M, N, K
multiples of 16, and (weights) K a multiple of 512, and is skipped otherwise: see fp8_gemm_cublas.
"""

from __future__ import annotations

import torch

from kernels._triton import (HAS_TRITON, TensorDescriptor, autotuned, fixed_config, grouped_tile, launch_kwargs,
                             num_sms, require_cuda, tl, tma_block_shapes, tma_ok, triton, use_triton)
from kernels.autoselect import Choice, choose, tensor_key
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
# Triton kernels: "classic" (one program per tile, pointer loads) and "tma" (persistent, TMA loads)


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
        if B_BLOCK == 1:
            sb_ptrs = sb_ptr + rn * stride_sbn
        else:  # one or two block scales for the whole tile (see the TMA kernel's NOTE)
            sb_ptrs = sb_ptr + (pid_n * BLOCK_N // B_BLOCK) * stride_sbn
            sb_next = tl.minimum(pid_n * BLOCK_N // B_BLOCK + 1, tl.cdiv(N, B_BLOCK) - 1) * stride_sbn

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        kb = 0
        for k0 in range(0, K, BLOCK_K):
            k_left = K - k0
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            sa = tl.load(sa_ptrs + kb)
            # promotion: an FP8 MMA over one 128-deep slice, then scaled into the FP32 accumulator
            if B_BLOCK == 1:
                acc += tl.dot(a, tl.trans(b)) * (sa[:, None] * tl.load(sb_ptrs + kb)[None, :])
            elif BLOCK_N <= B_BLOCK:
                acc += tl.dot(a, tl.trans(b)) * (sa * tl.load(sb_ptrs + kb))[:, None]
            else:
                tl.static_assert(BLOCK_N == 2 * B_BLOCK, "BLOCK_N must be at most two weight blocks")
                sb = tl.where(tl.arange(0, BLOCK_N) < B_BLOCK, tl.load(sb_ptrs + kb), tl.load(sb_ptr + sb_next + kb))
                acc += tl.dot(a, tl.trans(b)) * (sa[:, None] * sb[None, :])
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
            kb += 1

        c = acc.to(c_ptr.dtype.element_ty)
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    _fp8_gemm_tuned = autotuned(_fp8_gemm_kernel, _CONFIGS, key=["M", "N", "K", "B_BLOCK"])

    def _tma_config(bm, bn, warps, stages, flatten=True):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8, "FLATTEN": flatten},
                             num_warps=warps, num_stages=stages, pre_hook=tma_block_shapes)

    # NOTE: the promotion holds the accumulator AND a fresh slice product in registers; only tiles
    # with at most 64 accumulator values a thread (128x128 on 8 warps, 64x256 on 8, 64x128 on 4)
    # compile without spills (ptxas, sm_90: 128x256 on 8 warps spilled 45-67 values in the loop)
    _TMA_CONFIGS = [
        _tma_config(128, 128, 8, 4),
        _tma_config(64, 256, 8, 4),
        _tma_config(128, 128, 8, 5),
        _tma_config(64, 128, 4, 4),
        _tma_config(128, 128, 8, 3, flatten=False),
        _tma_config(64, 256, 8, 3, flatten=False),
    ]

    @triton.jit
    def _fp8_gemm_tma_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, M, N, K, stride_sam, stride_sbn, OUT_BYTES,
                             B_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, FLATTEN: tl.constexpr,
                             NUM_SMS: tl.constexpr):
        # persistent: one program per SM walks the output tiles in grouped order; with FLATTEN the
        # compiler fuses the tile and K loops so that the next tile's loads overlap this epilogue
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        k_steps = tl.cdiv(K, BLOCK_K)
        for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=FLATTEN):
            pid_m, pid_n = grouped_tile(tile, num_m, num_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            # NOTE: TMA zero-fills reads past M, N and K and clips the store at M, N; only the scale
            # reads of a ragged tile need clamping (their products are never stored)
            rows = tl.minimum(off_m + tl.arange(0, BLOCK_M), M - 1)
            sa_ptrs = sa_ptr + rows * stride_sam
            if B_BLOCK == 1:  # wgrad: one B scale per column
                cols = tl.minimum(off_n + tl.arange(0, BLOCK_N), N - 1)
                sb_ptrs = sb_ptr + cols * stride_sbn
            else:  # weight blocks: one or two B scales per slice for the whole tile
                sb_ptrs = sb_ptr + (off_n // B_BLOCK) * stride_sbn
                sb_next = tl.minimum(off_n // B_BLOCK + 1, tl.cdiv(N, B_BLOCK) - 1) * stride_sbn  # 2nd half
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kb in range(k_steps):
                a = a_desc.load([off_m, kb * BLOCK_K])
                b = b_desc.load([off_n, kb * BLOCK_K])
                sa = tl.load(sa_ptrs + kb)
                # promotion: one FP8 MMA per 128-deep slice, scaled into the fp32 accumulator.
                # NOTE: a loaded per-column scale vector lives in the accumulator's layout (32 values
                # a thread) in every pipeline stage and made the kernel spill; block scales are
                # loaded as one or two numbers and only expanded where they are used
                if B_BLOCK == 1:
                    sb = tl.load(sb_ptrs + kb)
                    acc += tl.dot(a, b.T) * (sa[:, None] * sb[None, :])
                elif BLOCK_N <= B_BLOCK:
                    sb = tl.load(sb_ptrs + kb)
                    acc += tl.dot(a, b.T) * (sa * sb)[:, None]
                else:
                    tl.static_assert(BLOCK_N == 2 * B_BLOCK, "BLOCK_N must be at most two weight blocks")
                    sb0 = tl.load(sb_ptrs + kb)
                    sb1 = tl.load(sb_ptr + sb_next + kb)
                    sb = tl.where(tl.arange(0, BLOCK_N) < B_BLOCK, sb0, sb1)
                    acc += tl.dot(a, b.T) * (sa[:, None] * sb[None, :])
            c_desc.store([off_m, off_n], acc.to(c_desc.dtype))

    # NOTE: OUT_BYTES is only a key: descriptors carry no dtype the autotuner sees, and an fp32 output
    # needs twice the epilogue shared memory of a bf16 one (a config can fit one and not the other)
    _fp8_gemm_tma_tuned = autotuned(_fp8_gemm_tma_kernel, _TMA_CONFIGS, key=["M", "N", "K", "B_BLOCK", "OUT_BYTES"])


def fp8_gemm_triton(a, sa, b, sb, b_block: int = TILE, out_dtype=torch.bfloat16, impl: str | None = None,
                    config=None) -> torch.Tensor:
    """Our Triton FP8 GEMM. impl: "tma" (persistent, TMA loads; needs 16-byte aligned rows: K a
    multiple of 16, N of 8 for bf16 output), "classic" (one program per tile), None: "tma" where it
    applies. config: None autotunes (keyed by M, N, K, b_block); an index into the impl's config list
    or a triton.Config launches that config as is (tests, and shapes that change every call)."""
    M, N, K = _check(a, sa, b, sb, b_block)
    require_cuda(a, b, sa, sb, what="fp8_gemm_triton")
    assert a.stride(1) == 1 and b.stride(1) == 1, (
        "fp8_gemm_triton: A and B must be K-contiguous (stride(1) == 1); pass w.t().contiguous() "
        "for the dgrad operand")
    assert sa.stride(1) == 1 and sb.stride(1) == 1, "fp8_gemm_triton: scales must be row-major"
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if impl is None:
        impl = "tma" if tma_ok(a, b, c) else "classic"
    if impl == "tma":
        if not tma_ok(a, b, c):
            raise ValueError(f"fp8_gemm_triton: impl='tma' needs 16-byte aligned operands and rows (M={M}, "
                             f"N={N}, K={K}, out {out_dtype}); use impl='classic'")
        return _fp8_gemm_tma(a, sa, b, sb, c, b_block, M, N, K, config)
    if impl != "classic":
        raise ValueError(f"fp8_gemm_triton: impl must be 'tma', 'classic' or None, got {impl!r}")
    cfg = fixed_config(config, _CONFIGS)

    def grid(meta):
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    args = (a, b, c, sa, sb, M, N, K, a.stride(0), b.stride(0), c.stride(0), sa.stride(0), sb.stride(0))
    if cfg is None:
        _fp8_gemm_tuned[grid](*args, B_BLOCK=b_block, BLOCK_K=TILE)
    else:
        kw = launch_kwargs(cfg)
        _fp8_gemm_kernel[grid(kw)](*args, B_BLOCK=b_block, BLOCK_K=TILE, **kw)
    return c


def _fp8_gemm_tma(a, sa, b, sb, c, b_block, M, N, K, config):
    cfg = fixed_config(config, _TMA_CONFIGS)
    first = (cfg or _TMA_CONFIGS[0]).kwargs  # the autotuner's pre-hook resets the block shapes
    a_d = TensorDescriptor.from_tensor(a, [first["BLOCK_M"], TILE])
    b_d = TensorDescriptor.from_tensor(b, [first["BLOCK_N"], TILE])
    c_d = TensorDescriptor.from_tensor(c, [first["BLOCK_M"], first["BLOCK_N"]])
    sms = num_sms(a.device)

    def grid(meta):
        return (min(sms, cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"])),)

    args = (a_d, b_d, c_d, sa, sb, M, N, K, sa.stride(0), sb.stride(0), c.element_size())
    if cfg is None:
        _fp8_gemm_tma_tuned[grid](*args, B_BLOCK=b_block, BLOCK_K=TILE, NUM_SMS=sms)
    else:
        kw = launch_kwargs(cfg)
        _fp8_gemm_tma_kernel[grid(kw)](*args, B_BLOCK=b_block, BLOCK_K=TILE, NUM_SMS=sms, **kw)
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

_BACKEND_CACHE: dict[tuple, Choice] = {}  # layout key -> Choice (kernels/autoselect.py)
# "auto" tries them in this order (ties: first). gluon_ws refuses what it cannot do (not a Hopper GPU,
# fp32 results) before compiling anything: a refusal costs no timing
BACKENDS = ("cublas", "triton_tma", "triton_classic", "gluon_ws")
# NOTE: not for the wgrad layout (b_block=1): there the warp-specialized kernel ran at 0.75-0.85 of
# cuBLAS on the long shapes (H200, BENCHMARKS.md 2026-12-06 twenty-first session), and each shape it
# is tried on costs a compile (~4 s) at the training run's start
WGRAD_BACKENDS = tuple(n for n in BACKENDS if n != "gluon_ws")


def fp8_gemm_gluon_checked(a, sa, b, sb, b_block: int = TILE, out_dtype=torch.bfloat16, config: int = 0):
    """A Gluon kernel, after the checks fp8_gemm_triton makes: configs 0 and 1 the pipelined one
    (kernels/fp8_gemm_gluon.py: each slice's promotion overlapped with the next slice's MMA), config 2
    the warp-specialized one (kernels/fp8_gemm_gluon_ws.py: every layout, bf16 or fp16 out). Hopper
    only: Blackwell has no warpgroup MMA."""
    from kernels.fp8_gemm_gluon import check_gluon_config, fp8_gemm_gluon, gluon_runs_on
    M, N, K = _check(a, sa, b, sb, b_block)
    check_gluon_config(config, out_dtype, "fp8_gemm_gluon")
    require_cuda(a, b, sa, sb, what="fp8_gemm_gluon")
    if not gluon_runs_on(a.device):
        raise ValueError("fp8_gemm_gluon: needs Triton's Gluon and a Hopper GPU (sm_90)")
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if not (tma_ok(a, b, c) and sa.stride(1) == 1 and sb.stride(1) == 1):
        raise ValueError(f"fp8_gemm_gluon: needs 16-byte aligned K-contiguous operands and rows, row-major scales "
                         f"(M={M}, N={N}, K={K}, out {out_dtype})")
    return fp8_gemm_gluon(a, sa, b, sb, c, b_block, config)


def _run(backend: str, a, sa, b, sb, b_block, out_dtype):
    if backend == "cublas":
        return fp8_gemm_cublas(a, sa, b, sb, b_block, out_dtype)
    if backend in ("gluon", "gluon_ws"):
        from kernels.fp8_gemm_gluon import WS_CONFIG
        return fp8_gemm_gluon_checked(a, sa, b, sb, b_block, out_dtype, WS_CONFIG if backend == "gluon_ws" else 0)
    if backend in ("triton", "triton_tma", "triton_classic"):
        impl = None if backend == "triton" else backend.split("_")[1]
        return fp8_gemm_triton(a, sa, b, sb, b_block, out_dtype, impl=impl)
    if backend == "reference":
        return fp8_gemm_ref(a, sa, b, sb, b_block, out_dtype=out_dtype)
    raise ValueError(f"fp8_gemm: backend must be 'auto', {', '.join(map(repr, BACKENDS))}, 'triton', 'gluon' "
                     f"or 'reference', got {backend!r}")


def pick_backend(a, sa, b, sb, b_block, out_dtype, candidates=None, timer=None) -> str:
    """Once per shape and layout (shapes, strides, dtypes, b_block, device): run every backend, keep
    those whose result agrees with the dequantized reference (`fp8_gemm_ref` on the same device;
    the FP8 MMA's accumulation differs by ~1e-4), and of those the one with the smallest median time
    (kernels/autoselect.py). NOTE: a backend can accept a shape and still be wrong on it (cuBLAS on
    K/128 not a multiple of 4, measured); "reference" (dequantize + matmul: right, slow) when none
    agrees, with a warning that names the shape. `candidates` ({name: fn(a, sa, b, sb, b_block,
    out_dtype)}) and `timer` replace the real ones in tests."""
    key = ("fp8_gemm", b_block, out_dtype) + tensor_key(a, sa, b, sb)
    if key not in _BACKEND_CACHE:
        ref = fp8_gemm_ref(a, sa, b, sb, b_block, out_dtype=torch.float32)
        names = WGRAD_BACKENDS if b_block == 1 else BACKENDS
        cands = candidates or {n: (lambda *args, n=n: _run(n, *args)) for n in names}

        def error_of(out):
            return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()

        fns = {n: (lambda fn=fn: fn(a, sa, b, sb, b_block, out_dtype)) for n, fn in cands.items()}
        choose(key, fns, error_of, _BACKEND_CACHE, **({"timer": timer} if timer else {}),
               what=f"fp8_gemm M={a.shape[0]} N={b.shape[0]} K={a.shape[1]} b_block={b_block}")
    return _BACKEND_CACHE[key].name


def backend_choices() -> list[dict]:
    """What `auto` chose so far, with the medians it measured (for benchmarks and logs)."""
    return [{"key": str(k), "backend": c.name, "median_ms": c.median_ms, "rel_err": c.rel_err,
             "refused": c.refused, "samples": c.samples, "how": c.how} for k, c in _BACKEND_CACHE.items()]


def fp8_gemm(a, sa, b, sb, b_block: int = TILE, out_dtype=torch.bfloat16,
             backend: str = "auto") -> torch.Tensor:
    """C (M, N) = (a * sa) @ (b * sb)^T. backend: "auto" (the fastest that agrees with the reference,
    per shape and layout), "cublas", "triton" (ours, TMA where it applies), "triton_tma",
    "triton_classic", "gluon" (Hopper; measured slower than "triton_tma", so not among auto's candidates),
    "gluon_ws" (Hopper, warp-specialized; 2-byte results), "reference";
    emulated (the reference) on CPU."""
    if not (a.is_cuda and HAS_TRITON) and backend != "cublas":
        return fp8_gemm_ref(a, sa, b, sb, b_block, out_dtype=out_dtype)
    if backend == "auto":
        backend = pick_backend(a, sa, b, sb, b_block, out_dtype)
    return _run(backend, a, sa, b, sb, b_block, out_dtype)


__all__ = ["fp8_gemm", "fp8_gemm_ref", "fp8_gemm_triton", "fp8_gemm_cublas", "pick_backend",
           "backend_choices", "use_triton"]
