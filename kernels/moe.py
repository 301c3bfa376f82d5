"""Grouped GEMM over experts (bf16 and FP8) and the experts' FP8 weight gradient.

What it computes. The routed (token, expert) pairs arrive sorted by expert in one permuted matrix,
each expert's rows one contiguous segment padded to a multiple of 128 rows (kernels/routing.py:
`make_routing`, `permute`; `combine` sums the outputs back per token). One launch (`grouped_gemm`)
multiplies every tile of rows by its own expert's weight, W (E, N, K):
out[r] = x_perm[r] @ W[expert(r)]^T. No 128-row GEMM tile and no 128-token FP8 quantization tile
ever spans two experts.

Why it exists. A per-expert loop launches E small GEMMs, each too short to fill the GPU, and a
dense GEMM over all experts wastes E/k of its work. The grouped GEMM does exactly the routed FLOPs
in one launch, with no host synchronisation (the routing's sizes are bounded statically).

Two Triton kernels compute the grouped GEMM: "classic" (one program per tile of the static padded
bound, pointer loads) and "tma" (persistent: one program per SM over the tiles that hold routed
rows, the count read on the device; operands through Hopper's TMA unit; larger tiles); `impl="auto"`
keeps the faster of the two that agree with the reference, per shape. The FP8 weight gradient of all
experts is one more launch (`grouped_wgrad_fp8`): the reduction runs along each expert's own rows,
with the segment bounds read on the device, so the backward needs no host read of the routing.

What it matches. `grouped_gemm_ref` (a loop over experts in plain PyTorch, skipping empty ones) and
`moe_ref` (per-token dense evaluation, no permutation at all) run on CPU, as does `grouped_wgrad_ref`;
tests compare the Triton kernels with them on random routings, including experts that receive no
token.
"""

from __future__ import annotations

import torch

from kernels._triton import (HAS_TRITON, INTERPRET, TensorDescriptor, autotuned, fixed_config, grouped_tile,
                             launch_kwargs, num_sms, require_cuda, tl, tma_block_shapes, tma_ok, triton,
                             use_triton)
from kernels.autoselect import Choice, choose
from kernels.fp8_quant import FP8, TILE, act_dequant, cdiv
from kernels.routing import ALIGN, Routing


# ---------------------------------------------------------------------------------------------
# references


def grouped_gemm_ref(x_perm, w, r: Routing, x_scale=None, w_scale=None, out_dtype=None):
    """out (P, N) with out[segment e] = x_perm[segment e] @ w[e]^T; a loop over non-empty experts.

    bf16: x_perm (P, K), w (E, N, K). FP8: x_perm and w are fp8 with x_scale (P, ceil(K/128)) and
    w_scale (E, ceil(N/128), ceil(K/128)); dequantized, multiplied in float32.
    """
    P, K = x_perm.shape
    E, N, Kw = w.shape
    assert K == Kw and E == r.num_experts, f"grouped_gemm_ref: x {tuple(x_perm.shape)} vs w {tuple(w.shape)}"
    out_dtype = out_dtype or (torch.bfloat16 if x_perm.dtype == FP8 else x_perm.dtype)
    out = torch.zeros((P, N), dtype=out_dtype, device=x_perm.device)
    offs, counts = r.offsets.tolist(), r.counts.tolist()
    for e in range(E):
        if counts[e] == 0:  # empty experts are skipped, as in the DeepSeek-V3 inference code
            continue
        lo, hi = offs[e], offs[e] + counts[e]
        if x_perm.dtype == FP8:
            a = act_dequant(x_perm[lo:hi], x_scale[lo:hi])
            b = act_dequant(w[e], w_scale[e], group_rows=TILE)
            out[lo:hi] = (a @ b.t()).to(out_dtype)
        else:
            out[lo:hi] = (x_perm[lo:hi].float() @ w[e].float().t()).to(out_dtype)
    return out


def grouped_wgrad_ref(dq, ds, xq, xs, r: Routing, out_dtype=torch.float32) -> torch.Tensor:
    """dw (E, N, K) in out_dtype (computed in fp32), dw[e] = dout[segment e]^T @ x[segment e] from the FP8 transposed operands:
    dq (N, P) and xq (K, P) quantized along the rows' axis (1x128 tiles of the transposes: 128x1
    tiles of dout and x), ds (N, P/128), xs (K, P/128). A loop over non-empty experts."""
    N, P = dq.shape
    K = xq.shape[0]
    dw = torch.zeros((r.num_experts, N, K), dtype=torch.float32, device=dq.device)
    offs, counts = r.offsets.tolist(), r.counts.tolist()
    for e in range(r.num_experts):
        if counts[e] == 0:
            continue
        lo, hi = offs[e], offs[e + 1]  # multiples of 128: whole scale tiles
        a = act_dequant(dq[:, lo:hi], ds[:, lo // TILE:hi // TILE])
        b = act_dequant(xq[:, lo:hi], xs[:, lo // TILE:hi // TILE])
        dw[e] = a @ b.t()
    return dw.to(out_dtype)


def moe_ref(x, topk_ids, topk_w, w) -> torch.Tensor:
    """Definition without any permutation: y[t] = sum_j topk_w[t, j] * x[t] @ w[topk_ids[t, j]]^T."""
    wt = w[topk_ids]  # (T, k, N, K)
    y = torch.einsum("tk,tknd,td->tn", topk_w.double(), wt.double(), x.double())
    return y


# ---------------------------------------------------------------------------------------------
# Triton kernels

if HAS_TRITON:

    _GG_CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    ]

    @triton.jit
    def _grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, tile_expert_ptr, src_token_ptr, P, N, K,
                             stride_am, stride_be, stride_bn, stride_cm,
                             stride_sam, stride_sbe, stride_sbn,
                             IS_FP8: tl.constexpr, ALIGN_M: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(P, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

        e = tl.load(tile_expert_ptr + (pid_m * BLOCK_M) // ALIGN_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        # a tile past the last expert's segment, or (tiles under 128 rows) of an expert's padding alone:
        # zeros (see grouped_gemm's NOTE). A segment's routed rows come first: the tile's first row tells
        if tl.load(src_token_ptr + pid_m * BLOCK_M) < 0:
            tl.store(c_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=c_ptr.dtype.element_ty), mask=offs_n[None, :] < N)
        else:
            rn = offs_n % N
            offs_k = tl.arange(0, BLOCK_K)
            a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
            b_ptrs = b_ptr + e.to(tl.int64) * stride_be + rn[:, None] * stride_bn + offs_k[None, :]
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            kb = 0
            for k0 in range(0, K, BLOCK_K):
                kmask = offs_k[None, :] < K - k0
                a = tl.load(a_ptrs, mask=kmask, other=0.0)
                b = tl.load(b_ptrs, mask=kmask, other=0.0)
                if IS_FP8:  # BLOCK_K == 128: one scale slice per step, promoted into fp32
                    sa = tl.load(sa_ptr + offs_m * stride_sam + kb)
                    sb = tl.load(sb_ptr + e * stride_sbe + (rn // 128) * stride_sbn + kb)
                    # NOTE: the scales' product first, as in the TMA kernel: the two kernels then
                    # round alike, and `auto` choosing either changes no bit of the result
                    acc += tl.dot(a, tl.trans(b)) * (sa[:, None] * sb[None, :])
                else:
                    acc = tl.dot(a, tl.trans(b), acc)
                a_ptrs += BLOCK_K
                b_ptrs += BLOCK_K
                kb += 1
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=offs_n[None, :] < N)

    _grouped_gemm_tuned = autotuned(_grouped_gemm_kernel, _GG_CONFIGS, key=["N", "K", "IS_FP8"])

    def _gg_tma_config(bm, bn, bk, warps, stages, flatten=True, group_m=8, c_split=1):
        meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "FLATTEN": flatten}
        if c_split != 1:  # the grouped kernel's C_SPLIT (a default argument: the wgrad kernel has none)
            meta["C_SPLIT"] = c_split
        return triton.Config(meta, num_warps=warps, num_stages=stages, pre_hook=tma_block_shapes)

    # NOTE: BLOCK_M must divide ALIGN (128): a row tile never spans two experts. Shared memory
    # (ptxas, sm_90, limit 227 KB): 128x256x64 with 3 stages 208 KB, with 4 stages 256 KB (too much);
    # with 4 stages and the store in halves (C_SPLIT=2) it fits beside a 2-byte result, not an fp32 one
    _GG_TMA_CONFIGS = [
        _gg_tma_config(128, 256, 64, 8, 3),
        _gg_tma_config(128, 128, 64, 8, 4),
        _gg_tma_config(128, 128, 64, 8, 5),
        _gg_tma_config(128, 128, 64, 4, 4),
        _gg_tma_config(64, 256, 64, 4, 4),
        _gg_tma_config(128, 256, 64, 8, 3, flatten=False),
        # four stages, the store in two halves: 0.86 of dense at 64 experts where the three-stage tile
        # gets 0.78 (H100; BENCHMARKS.md, 2026-12-07 twenty-third session); slower at 256 experts
        _gg_tma_config(128, 256, 64, 8, 4, c_split=2, group_m=4),
    ]
    _GG_TMA_FP8_CONFIGS = [  # BLOCK_K is the 128 of the scales; tiles that do not spill (fp8_gemm.py)
        _gg_tma_config(128, 128, 128, 8, 4),
        _gg_tma_config(64, 256, 128, 8, 4),
        _gg_tma_config(64, 128, 128, 4, 4),
        _gg_tma_config(128, 128, 128, 8, 3, flatten=False),
    ]

    @triton.jit
    def _grouped_gemm_tma_kernel(a_desc, b_desc, c_desc, c_ptr, sa_ptr, sb_ptr, tile_expert_ptr, used_ptr,
                                 row_tiles_ptr, live_tiles_ptr, P, N, K, E,
                                 stride_cm, stride_sam, stride_sbe, stride_sbn, OUT_BYTES,
                                 IS_FP8: tl.constexpr, ALIGN_M: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                                 FLATTEN: tl.constexpr, NUM_SMS: tl.constexpr, C_SPLIT: tl.constexpr = 1):
        # E: the autotuner's key only (each expert count tunes its own config).
        # C_SPLIT=2 stores the tile in two halves of its columns: the TMA store's staging buffer in
        # shared memory is half the tile's, which leaves room for a fourth stage of 128x256 loads.
        # persistent over the row tiles that hold routed rows: `used` (offsets[E]) is read on the
        # device, so tiles of the static padding bound past the last segment cost nothing.
        # 64-row tiles (BLOCK_M < ALIGN_M) go by the routing's list of them (`Routing.row_tiles`)
        # instead, which skips the ones of padding alone too: a 64-row tile wastes 32 rows per expert on average where a
        # 128-row one wastes 64. It also runs 5-10% slower per FLOP, so it pays only where padding
        # is a large share: on the H100, FP8 at 16-64 experts gained 1-4%, bf16 nothing (the autotuner
        # picks; BENCHMARKS.md, 2026-12-06 eighteenth session)
        SMALL_M: tl.constexpr = BLOCK_M < ALIGN_M
        if SMALL_M:
            tl.static_assert(BLOCK_M == 64, "the routing lists 64-row tiles")
            num_m = tl.load(live_tiles_ptr)
        else:
            num_m = tl.cdiv(tl.load(used_ptr).to(tl.int32), BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        k_steps = tl.cdiv(K, BLOCK_K)
        for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=FLATTEN):
            pid_m, pid_n = grouped_tile(tile, num_m, num_n, GROUP_M)
            if SMALL_M:
                off_m = tl.load(row_tiles_ptr + pid_m) * BLOCK_M
            else:
                off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            e = tl.load(tile_expert_ptr + off_m // ALIGN_M)
            # b_desc views the stacked weights as (E*N, K): expert e's rows start at e*N. NOTE: when
            # N % BLOCK_N != 0 the last column tile reads the next expert's first rows (or zeros past
            # the end): they only feed output columns >= N, which the TMA store clips
            b_row = e * N + off_n
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kb in range(k_steps):
                a = a_desc.load([off_m, kb * BLOCK_K])
                b = b_desc.load([b_row, kb * BLOCK_K])
                if IS_FP8:  # one 128-deep slice per step, promoted into fp32 with its scales
                    sa = tl.load(sa_ptr + (off_m + tl.arange(0, BLOCK_M)) * stride_sam + kb)
                    # one or two 128x128 weight blocks per tile: scalars, not a per-column vector
                    sb_row = sb_ptr + e * stride_sbe + kb
                    sb0 = tl.load(sb_row + (off_n // 128) * stride_sbn)
                    if BLOCK_N <= 128:
                        acc += tl.dot(a, b.T) * (sa * sb0)[:, None]
                    else:
                        tl.static_assert(BLOCK_N == 256, "BLOCK_N must be at most two weight blocks")
                        sb1 = tl.load(sb_row + tl.minimum(off_n // 128 + 1, tl.cdiv(N, 128) - 1) * stride_sbn)
                        sb = tl.where(tl.arange(0, BLOCK_N) < 128, sb0, sb1)
                        acc += tl.dot(a, b.T) * (sa[:, None] * sb[None, :])
                else:
                    acc = tl.dot(a, b.T, acc)
            out = acc.to(c_desc.dtype)
            if C_SPLIT == 1:
                c_desc.store([off_m, off_n], out)
            else:
                tl.static_assert(C_SPLIT == 2, "C_SPLIT: the tile's columns in one store or two")
                left, right = out.reshape(BLOCK_M, 2, BLOCK_N // 2).permute(0, 2, 1).split()
                c_desc.store([off_m, off_n], left)
                c_desc.store([off_m, off_n + BLOCK_N // 2], right)
        # the row tiles not computed (past the last segment, or 64-row tiles of padding alone): zeros
        # (see grouped_gemm's NOTE), through plain stores (a TMA store would want a staging buffer in
        # shared memory beside the pipeline's)
        zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=c_ptr.dtype.element_ty)
        for tile in tl.range(tl.program_id(0), (tl.cdiv(P, BLOCK_M) - num_m) * num_n, NUM_SMS):
            m_tile = num_m + tile // num_n
            if SMALL_M:
                m_tile = tl.load(row_tiles_ptr + m_tile)
            offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
            offs_n = (tile % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
            tl.store(c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :], zero,
                     mask=offs_n[None, :] < N)

    _gg_tma_tuned = {  # one autotuner per precision: their config lists differ
        fp8: autotuned(_grouped_gemm_tma_kernel, cfgs, key=["N", "K", "E", "IS_FP8", "OUT_BYTES"])
        for fp8, cfgs in ((False, _GG_TMA_CONFIGS), (True, _GG_TMA_FP8_CONFIGS))}

    _WG_CONFIGS = [  # tiles whose per-column B scales did not make ptxas spill (fp8_gemm.py)
        _gg_tma_config(64, 256, 128, 8, 4),
        _gg_tma_config(64, 128, 128, 4, 4),
        _gg_tma_config(64, 256, 128, 8, 3),
    ]

    @triton.jit
    def _grouped_wgrad_fp8_kernel(a_desc, b_desc, c_ptr, sa_ptr, sb_ptr, offsets_ptr, N, K,
                                  stride_ce, stride_cn, stride_sa, stride_sb,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                  GROUP_M: tl.constexpr, FLATTEN: tl.constexpr):
        # program (tile, e): dw[e] tile = sum over expert e's rows [lo, hi) of a[:, rows] b[:, rows]^T,
        # the reduction running along the permuted rows in 128-row slices (one scale tile each);
        # operands through TMA (a (N, P), b (K, P), both fp8 with 1x128 scales along P)
        e = tl.program_id(1)
        pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_M), tl.cdiv(K, BLOCK_N), GROUP_M)
        lo = tl.load(offsets_ptr + e).to(tl.int32)
        hi = tl.load(offsets_ptr + e + 1).to(tl.int32)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        sa_ptrs = sa_ptr + tl.minimum(off_m + tl.arange(0, BLOCK_M), N - 1) * stride_sa
        sb_ptrs = sb_ptr + tl.minimum(off_n + tl.arange(0, BLOCK_N), K - 1) * stride_sb
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(lo, hi, BLOCK_K):  # segment ends are multiples of 128: whole scale tiles
            a = a_desc.load([off_m, k0])
            b = b_desc.load([off_n, k0])
            j = k0 // BLOCK_K
            acc += tl.dot(a, b.T) * (tl.load(sa_ptrs + j)[:, None] * tl.load(sb_ptrs + j)[None, :])
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        c_ptrs = c_ptr + e.to(tl.int64) * stride_ce + offs_m[:, None] * stride_cn + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < N) & (offs_n[None, :] < K))

    # keyed by N and K only: the segment lengths change every step and must not re-tune
    _grouped_wgrad_tuned = autotuned(_grouped_wgrad_fp8_kernel, _WG_CONFIGS, key=["N", "K"])


_IMPL_CACHE: dict[tuple, Choice] = {}  # layout key -> Choice (kernels/autoselect.py)


def grouped_gemm(x_perm, w, r: Routing, x_scale=None, w_scale=None, out_dtype=None, impl: str = "auto",
                 config=None):
    """Triton grouped GEMM (bf16, or FP8 with 1x128 / 128x128 scales); the reference on CPU.

    impl: "tma" (persistent, TMA loads and stores, only the row tiles that hold routed rows),
    "classic" (one program per tile of the static padded bound), "gluon" (FP8 on Hopper: the TMA
    kernel's schedule with each slice's promotion overlapped with the next MMA; measured slower
    than "tma", so not among auto's candidates), "gluon_ws" (Hopper, FP8 or bf16 in, bf16 or fp16
    out: warp-specialized, 128x256 tiles; kernels/fp8_gemm_gluon_ws.py), "auto": the fastest of
    tma, classic and gluon_ws among those that agree with the reference, measured once per (N, K, E,
    dtypes) (not per row count: that changes with the routing). config: None autotunes; an index or
    a triton.Config fixes it (tests).
    NOTE: output rows past the last expert's segment (offsets[E], up to the static bound P) are
    written as zeros, like the padding rows inside each segment (zero inputs give zero products).
    Nothing downstream needs their values (combine reads routed rows only), but the experts' next
    steps read whole tensors (SwiGLU, the 1x128 / 128x1 quantization of the activation and of its
    gradient): with the rows left unwritten those read whatever the allocator held, which is
    harmless only as long as no later step mixes them into a routed row, and is what
    compute-sanitizer's initcheck reports. Writing them costs (P - offsets[E]) x N stores, a few
    percent of P at most."""
    is_fp8 = x_perm.dtype == FP8
    if not (use_triton(x_perm, w) or INTERPRET):
        return grouped_gemm_ref(x_perm, w, r, x_scale, w_scale, out_dtype)
    require_cuda(x_perm, w, what="grouped_gemm")
    P, K = x_perm.shape
    E, N, Kw = w.shape
    assert K == Kw, f"grouped_gemm: x_perm is (P, {K}) but w is (E, N, {Kw})"
    assert P == r.padded_rows and E == r.num_experts, "grouped_gemm: x_perm / w do not match the routing"
    assert x_perm.stride(1) == 1 and w.stride(2) == 1, "grouped_gemm: operands must be K-contiguous"
    assert (w.dtype == FP8) == is_fp8, f"grouped_gemm: x is {x_perm.dtype} but w is {w.dtype}"
    if is_fp8:
        assert x_scale is not None and w_scale is not None, "grouped_gemm: FP8 needs x_scale and w_scale"
        assert x_scale.shape == (P, cdiv(K, TILE)) and w_scale.shape == (E, cdiv(N, TILE), cdiv(K, TILE)), (
            f"grouped_gemm: scales {tuple(x_scale.shape)}, {tuple(w_scale.shape)} do not fit "
            f"x (P={P}, K={K}) and w (E={E}, N={N}) with 1x128 / 128x128 tiles")
        sa, sb = x_scale.contiguous(), w_scale.contiguous()
    else:
        sa = sb = x_perm  # unused
    out_dtype = out_dtype or (torch.bfloat16 if is_fp8 else x_perm.dtype)
    args = (x_perm, w, r, sa, sb, out_dtype, is_fp8)
    if impl == "auto" and INTERPRET:  # no timing without a GPU: the TMA kernel where it applies
        impl = "tma" if _tma_fits(x_perm, w, out_dtype) else "classic"
    if impl == "auto":
        impl = _pick_impl(*args, x_scale, w_scale)
    if impl == "tma":
        return _grouped_tma(*args, config)
    if impl == "classic":
        return _grouped_classic(*args, config)
    if impl in ("gluon", "gluon_ws"):
        from kernels.fp8_gemm_gluon import WS_CONFIG
        return _grouped_gluon(*args, WS_CONFIG if impl == "gluon_ws" else config)
    raise ValueError(f"grouped_gemm: impl must be 'auto', 'tma', 'classic', 'gluon' or 'gluon_ws', got {impl!r}")


def _tma_fits(x_perm, w, out_dtype) -> bool:
    E, N, K = w.shape
    c_row_bytes = N * torch.empty((), dtype=out_dtype).element_size()
    return w.is_contiguous() and c_row_bytes % 16 == 0 and tma_ok(x_perm, w.view(E * N, K))


def _pick_impl(x_perm, w, r, sa, sb, out_dtype, is_fp8, x_scale, w_scale) -> str:
    E, N, K = w.shape
    key = ("grouped_gemm", E, N, K, x_perm.dtype, out_dtype, x_perm.device.type, x_perm.device.index)
    if key not in _IMPL_CACHE:
        rows = r.row_of.flatten()  # routed rows: the only ones with a defined value
        ref = grouped_gemm_ref(x_perm, w, r, x_scale, w_scale, out_dtype=torch.float32)[rows]
        args = (x_perm, w, r, sa, sb, out_dtype, is_fp8, None)
        cands = {"tma": lambda: _grouped_tma(*args)} if _tma_fits(x_perm, w, out_dtype) else {}
        cands["classic"] = lambda: _grouped_classic(*args)
        # refused (no timing) where it cannot run: not a Hopper GPU, an fp32 result
        from kernels.fp8_gemm_gluon import WS_CONFIG
        cands["gluon_ws"] = lambda: _grouped_gluon(*args[:-1], WS_CONFIG)

        def error_of(out):
            return ((out[rows].float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()

        choose(key, cands, error_of, _IMPL_CACHE, what=f"grouped_gemm E={E} N={N} K={K} {x_perm.dtype}")
    name = _IMPL_CACHE[key].name
    if name == "reference":
        raise RuntimeError(f"grouped_gemm: no Triton kernel agrees with the reference for {key} "
                           f"({_IMPL_CACHE[key].refused})")
    return name


def impl_choices() -> list[dict]:
    """What `impl="auto"` chose so far, with the medians it measured."""
    return [{"key": str(k), "impl": c.name, "median_ms": c.median_ms, "rel_err": c.rel_err,
             "refused": c.refused, "how": c.how} for k, c in _IMPL_CACHE.items()]


def _grouped_tma(x_perm, w, r, sa, sb, out_dtype, is_fp8, config=None):
    P, K = x_perm.shape
    E, N, _ = w.shape
    if not _tma_fits(x_perm, w, out_dtype):
        raise ValueError(f"grouped_gemm: impl='tma' needs contiguous weights and 16-byte aligned rows "
                         f"(K={K}, N={N}, {x_perm.dtype} -> {out_dtype}); use impl='classic'")
    c = torch.empty((P, N), dtype=out_dtype, device=x_perm.device)
    configs = _GG_TMA_FP8_CONFIGS if is_fp8 else _GG_TMA_CONFIGS
    cfg = fixed_config(config, configs)
    first = (cfg or configs[0]).kwargs  # the autotuner's pre-hook resets the block shapes
    bm, bn, bk = first["BLOCK_M"], first["BLOCK_N"], first["BLOCK_K"]
    a_d = TensorDescriptor.from_tensor(x_perm, [bm, bk])
    b_d = TensorDescriptor.from_tensor(w.view(E * N, K), [bn, bk])
    c_d = TensorDescriptor.from_tensor(c, [bm, bn // first.get("C_SPLIT", 1)])
    sms = num_sms(x_perm.device)

    def grid(meta):  # NOTE: P is the static bound; the kernel stops at the routed rows itself
        return (min(sms, cdiv(P, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"])),)

    args = (a_d, b_d, c_d, c, sa, sb, r.tile_expert, r.offsets[E:], *r.row_tiles, P, N, K, E,
            c.stride(0), sa.stride(0), sb.stride(0) if is_fp8 else 0, sb.stride(1) if is_fp8 else 0,
            c.element_size())  # OUT_BYTES: a key
    if cfg is None:
        _gg_tma_tuned[is_fp8][grid](*args, IS_FP8=is_fp8, ALIGN_M=ALIGN, NUM_SMS=sms)
    else:
        kw = launch_kwargs(cfg)
        _grouped_gemm_tma_kernel[grid(kw)](*args, IS_FP8=is_fp8, ALIGN_M=ALIGN, NUM_SMS=sms, **kw)
    return c


def _grouped_gluon(x_perm, w, r, sa, sb, out_dtype, is_fp8, config=None):
    # FP8 on Hopper only: configs 0-1 pipelined (kernels/fp8_gemm_gluon.py), 2 warp-specialized (_ws.py)
    from kernels.fp8_gemm_gluon import GLUON_CONFIGS, check_gluon_config, gluon_runs_on, grouped_gemm_gluon
    config = config or 0
    check_gluon_config(config, out_dtype, "grouped_gemm(impl='gluon')")
    if not is_fp8 and not GLUON_CONFIGS[config].warp_specialized:
        raise ValueError(f"grouped_gemm: impl='gluon' config {config} (pipelined) is FP8 only, got {x_perm.dtype}; "
                         "bf16 experts take impl='gluon_ws'")
    if not (gluon_runs_on(x_perm.device) and _tma_fits(x_perm, w, out_dtype)):
        raise ValueError("grouped_gemm: impl='gluon' needs Triton's Gluon, a Hopper GPU (sm_90) and TMA-aligned "
                         f"operands (got {x_perm.dtype}, w {tuple(w.shape)}, out {out_dtype})")
    c = torch.empty((x_perm.shape[0], w.shape[1]), dtype=out_dtype, device=x_perm.device)
    return grouped_gemm_gluon(x_perm, w, r, sa if is_fp8 else None, sb if is_fp8 else None, c, config=config)


def _grouped_classic(x_perm, w, r, sa, sb, out_dtype, is_fp8, config=None):
    P, K = x_perm.shape
    E, N, _ = w.shape
    c = torch.empty((P, N), dtype=out_dtype, device=x_perm.device)
    if is_fp8 and config is None and not INTERPRET:
        return _grouped_fp8(x_perm, w, c, sa, sb, r, P, N, K)
    cfg = fixed_config(config, _GG_CONFIGS)

    def grid(meta):
        return (cdiv(P, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    args = (x_perm, w, c, sa, sb, r.tile_expert, r.src_token, P, N, K, x_perm.stride(0), w.stride(0), w.stride(1),
            c.stride(0), sa.stride(0), sb.stride(0) if is_fp8 else 0, sb.stride(1) if is_fp8 else 0)
    if cfg is None:
        _grouped_gemm_tuned[grid](*args, IS_FP8=is_fp8, ALIGN_M=ALIGN)
    else:
        kw = launch_kwargs(cfg)
        if is_fp8:
            kw["BLOCK_K"] = TILE  # the FP8 path needs 128-deep K steps
        _grouped_gemm_kernel[grid(kw)](*args, IS_FP8=is_fp8, ALIGN_M=ALIGN, **kw)
    return c


def _grouped_fp8(x_perm, w, c, sa, sb, r, P, N, K):
    # fixed tile for FP8 (BLOCK_K must be the 128 of the scales); 128x128, 8 warps, 4 stages
    bm, bn = 128, 128
    _grouped_gemm_kernel[(cdiv(P, bm) * cdiv(N, bn),)](
        x_perm, w, c, sa, sb, r.tile_expert, r.src_token, P, N, K, x_perm.stride(0), w.stride(0), w.stride(1),
        c.stride(0), sa.stride(0), sb.stride(0), sb.stride(1), IS_FP8=True, ALIGN_M=ALIGN,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=TILE, GROUP_M=8, num_warps=8, num_stages=4)
    return c


def grouped_wgrad_fp8(dq, ds, xq, xs, r: Routing, config=None, out_dtype=torch.float32) -> torch.Tensor:
    """dw (E, N, K) = per expert, dout[segment]^T @ x[segment], in one launch with the segment
    bounds read on the device (no host sync, no loop over experts; an empty expert gets zeros).
    Accumulated in fp32, stored in out_dtype (the weight's dtype: no fp32 copy and cast pass).
    Operands as in `grouped_wgrad_ref` (which runs on CPU)."""
    if not (use_triton(dq, xq) or INTERPRET):
        return grouped_wgrad_ref(dq, ds, xq, xs, r, out_dtype=out_dtype)
    require_cuda(dq, xq, what="grouped_wgrad_fp8")
    N, P = dq.shape
    K = xq.shape[0]
    assert dq.dtype == xq.dtype == FP8, f"grouped_wgrad_fp8: operands must be {FP8}, got {dq.dtype}, {xq.dtype}"
    assert xq.shape[1] == P == r.padded_rows, (
        f"grouped_wgrad_fp8: dq (N, P)={tuple(dq.shape)} and xq (K, P)={tuple(xq.shape)} must span the "
        f"routing's {r.padded_rows} padded rows")
    assert ds.shape == (N, P // TILE) and xs.shape == (K, P // TILE), "grouped_wgrad_fp8: scales must be 1x128 tiles"
    assert dq.stride(1) == 1 and xq.stride(1) == 1 and ds.stride(1) == 1 and xs.stride(1) == 1, (
        "grouped_wgrad_fp8: operands and scales must be row-contiguous")
    assert tma_ok(dq, xq), "grouped_wgrad_fp8: operands must be 16-byte aligned (P a multiple of 16)"
    E = r.num_experts
    dw = torch.empty((E, N, K), dtype=out_dtype, device=dq.device)
    cfg = fixed_config(config, _WG_CONFIGS)
    first = (cfg or _WG_CONFIGS[0]).kwargs  # the autotuner's pre-hook resets the block shapes
    a_d = TensorDescriptor.from_tensor(dq, [first["BLOCK_M"], TILE])
    b_d = TensorDescriptor.from_tensor(xq, [first["BLOCK_N"], TILE])

    def grid(meta):
        return (cdiv(N, meta["BLOCK_M"]) * cdiv(K, meta["BLOCK_N"]), E)

    args = (a_d, b_d, dw, ds, xs, r.offsets, N, K, dw.stride(0), dw.stride(1), ds.stride(0), xs.stride(0))
    if cfg is None:
        _grouped_wgrad_tuned[grid](*args)
    else:
        kw = launch_kwargs(cfg)
        _grouped_wgrad_fp8_kernel[grid(kw)](*args, **kw)
    return dw
