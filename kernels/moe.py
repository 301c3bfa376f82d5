"""MoE token permutation, grouped GEMM over experts (bf16 and FP8), inverse permutation + combine.

What it computes. A router sends each of T tokens to k of E experts (topk_ids (T, k), weights
topk_w (T, k)). Instead of a Python loop over experts, the T*k (token, expert) pairs are sorted by
expert into one permuted activation matrix whose rows for expert e form one contiguous segment
(`make_routing`, `permute`). Every segment is padded to a multiple of 128 rows (DeepGEMM's
"contiguous layout"): then no 128-row GEMM tile and no 128-token FP8 quantization tile ever spans
two experts. One launch (`grouped_gemm`) multiplies every tile of rows by its own expert's weight,
W (E, N, K): out[r] = x_perm[r] @ W[expert(r)]^T. `combine` undoes the permutation and sums each
token's k expert outputs with its router weights: y[t] = sum_j topk_w[t, j] * out[row_of[t, j]].

Why it exists. A per-expert loop launches E small GEMMs, each too short to fill the GPU, and a
dense GEMM over all experts wastes E/k of its work. The grouped GEMM does exactly the routed FLOPs
in one launch, with no host synchronisation (the routing's sizes are bounded statically).

What it matches. `grouped_gemm_ref` (a loop over experts in plain PyTorch, skipping empty ones) and
`moe_ref` (per-token dense evaluation, no permutation at all) run on CPU; tests compare the Triton
kernels with them on random routings, including experts that receive no token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels._triton import HAS_TRITON, INTERPRET, grouped_tile, require_cuda, tl, triton, use_triton
from kernels.fp8_quant import FP8, TILE, act_dequant, cdiv

ALIGN = 128  # rows per expert segment are padded to this; a GEMM row tile must divide it


@dataclass
class Routing:
    """Where each (token, slot) pair lives in the permuted matrix. P = padded row count (static)."""

    num_tokens: int  # T
    topk: int  # k
    num_experts: int  # E
    src_token: torch.Tensor  # (P,) int32: source token of each permuted row, -1 for padding rows
    row_of: torch.Tensor  # (T, k) int64: permuted row of each (token, slot)
    offsets: torch.Tensor  # (E + 1,) int64: first padded row of each expert; offsets[E] = rows used
    counts: torch.Tensor  # (E,) int64: real rows (routed pairs) per expert
    tile_expert: torch.Tensor  # (P / ALIGN,) int32: expert of each 128-row tile, -1 past the end

    @property
    def padded_rows(self) -> int:
        return self.src_token.shape[0]


def make_routing(topk_ids: torch.Tensor, num_experts: int, align: int = ALIGN) -> Routing:
    """Sort the (token, slot) pairs by expert, stably, into 128-row-aligned segments (no host sync)."""
    assert topk_ids.dim() == 2, f"make_routing: topk_ids must be (T, k), got {tuple(topk_ids.shape)}"
    assert align % 64 == 0, f"make_routing: align must be a multiple of 64, got {align}"
    T, k = topk_ids.shape
    E = num_experts
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).long()  # (T*k,)
    counts = torch.bincount(flat, minlength=E)[:E]  # (E,)
    padded = (counts + align - 1) // align * align
    offsets = torch.zeros(E + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(padded, 0)
    starts = torch.zeros(E, dtype=torch.long, device=dev)
    starts[1:] = torch.cumsum(counts, 0)[:-1]  # unpadded start of each expert in sorted order
    order = torch.sort(flat, stable=True).indices  # (T*k,) pair index, sorted by expert
    e_sorted = flat[order]
    rank = torch.arange(T * k, device=dev) - starts[e_sorted]  # position inside its expert
    rows = offsets[e_sorted] + rank  # (T*k,) permuted row of each sorted pair
    # NOTE: P is a static bound (every expert may waste align-1 rows), so nothing waits on the GPU
    P = cdiv(T * k + E * (align - 1), align) * align
    src_token = torch.full((P,), -1, dtype=torch.int32, device=dev)
    src_token[rows] = (order // k).int()
    row_of = torch.empty(T * k, dtype=torch.long, device=dev)
    row_of[order] = rows
    tile_start = torch.arange(0, P, align, device=dev)
    tile_expert = torch.searchsorted(offsets[1:], tile_start, right=True).int()
    tile_expert[tile_expert >= E] = -1
    return Routing(T, k, E, src_token, row_of.view(T, k), offsets, counts, tile_expert)


# ---------------------------------------------------------------------------------------------
# references


def permute_ref(x: torch.Tensor, r: Routing) -> torch.Tensor:
    """x (T, D) -> x_perm (P, D); padding rows are zero."""
    out = torch.zeros((r.padded_rows, x.shape[1]), dtype=x.dtype, device=x.device)
    valid = r.src_token >= 0
    out[valid] = x[r.src_token[valid].long()]
    return out


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


def combine_ref(out_perm: torch.Tensor, topk_w: torch.Tensor, r: Routing) -> torch.Tensor:
    """y (T, N) = sum_j topk_w[t, j] * out_perm[row_of[t, j]], summed in float32."""
    g = out_perm[r.row_of].float()  # (T, k, N)
    return (g * topk_w.float()[..., None]).sum(1).to(out_perm.dtype)


def moe_ref(x, topk_ids, topk_w, w) -> torch.Tensor:
    """Definition without any permutation: y[t] = sum_j topk_w[t, j] * x[t] @ w[topk_ids[t, j]]^T."""
    wt = w[topk_ids]  # (T, k, N, K)
    y = torch.einsum("tk,tknd,td->tn", topk_w.double(), wt.double(), x.double())
    return y


# ---------------------------------------------------------------------------------------------
# Triton kernels

if HAS_TRITON:

    @triton.jit
    def _permute_kernel(x_ptr, out_ptr, src_ptr, D, stride_x, stride_o, BLOCK_D: tl.constexpr):
        # one program per permuted row: copy its source token's row, zero for padding rows
        row = tl.program_id(0)
        src = tl.load(src_ptr + row)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            m = offs < D
            v = tl.load(x_ptr + src.to(tl.int64) * stride_x + offs, mask=m & (src >= 0), other=0.0)
            tl.store(out_ptr + row.to(tl.int64) * stride_o + offs, v, mask=m)

    @triton.jit
    def _combine_kernel(o_ptr, w_ptr, rows_ptr, y_ptr, N, stride_o, stride_y,
                        TOPK: tl.constexpr, BLOCK_N: tl.constexpr):
        # one program per (token, column block): weighted sum of its k expert outputs in fp32
        t = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = offs < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for j in tl.static_range(TOPK):
            row = tl.load(rows_ptr + t * TOPK + j)
            wj = tl.load(w_ptr + t * TOPK + j).to(tl.float32)
            acc += wj * tl.load(o_ptr + row * stride_o + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + t.to(tl.int64) * stride_y + offs, acc.to(y_ptr.dtype.element_ty), mask=m)

    _GG_CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    ]

    @triton.jit
    def _grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, tile_expert_ptr, P, N, K,
                             stride_am, stride_be, stride_bn, stride_cm,
                             stride_sam, stride_sbe, stride_sbn,
                             IS_FP8: tl.constexpr, ALIGN_M: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(P, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

        e = tl.load(tile_expert_ptr + (pid_m * BLOCK_M) // ALIGN_M)
        if e >= 0:  # tiles past the last expert's segment do nothing
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
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
                    acc += tl.dot(a, tl.trans(b)) * sa[:, None] * sb[None, :]
                else:
                    acc = tl.dot(a, tl.trans(b), acc)
                a_ptrs += BLOCK_K
                b_ptrs += BLOCK_K
                kb += 1
            c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=offs_n[None, :] < N)

    _grouped_gemm_tuned = (_grouped_gemm_kernel if INTERPRET else
                           triton.autotune(configs=_GG_CONFIGS, key=["N", "K", "IS_FP8"])(_grouped_gemm_kernel))


def permute(x: torch.Tensor, r: Routing) -> torch.Tensor:
    """x (T, D) (any dtype, fp8 and its (T, D/128) scales too) -> (P, D), padding rows zero."""
    if not (use_triton(x) or INTERPRET):
        return permute_ref(x, r)
    assert x.dim() == 2 and x.stride(1) == 1, f"permute: x must be (T, D) row-contiguous, got {tuple(x.shape)}"
    assert x.shape[0] == r.num_tokens, f"permute: x has {x.shape[0]} rows, routing has {r.num_tokens} tokens"
    out = torch.empty((r.padded_rows, x.shape[1]), dtype=x.dtype, device=x.device)
    D = x.shape[1]
    _permute_kernel[(r.padded_rows,)](x, out, r.src_token, D, x.stride(0), out.stride(0),
                                      BLOCK_D=min(1024, triton.next_power_of_2(D)), num_warps=4)
    return out


def combine(out_perm: torch.Tensor, topk_w: torch.Tensor, r: Routing) -> torch.Tensor:
    if not (use_triton(out_perm) or INTERPRET):
        return combine_ref(out_perm, topk_w, r)
    assert out_perm.stride(1) == 1, "combine: out_perm must be row-contiguous"
    T, k = r.num_tokens, r.topk
    N = out_perm.shape[1]
    y = torch.empty((T, N), dtype=out_perm.dtype, device=out_perm.device)
    block = min(1024, triton.next_power_of_2(N))
    _combine_kernel[(T, cdiv(N, block))](out_perm, topk_w.contiguous(), r.row_of.contiguous(), y, N,
                                         out_perm.stride(0), y.stride(0), TOPK=k, BLOCK_N=block,
                                         num_warps=4)
    return y


def grouped_gemm(x_perm, w, r: Routing, x_scale=None, w_scale=None, out_dtype=None):
    """Triton grouped GEMM (bf16, or FP8 with 1x128 / 128x128 scales); the reference on CPU."""
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
    c = torch.empty((P, N), dtype=out_dtype, device=x_perm.device)

    def grid(meta):
        return (cdiv(P, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    extra = dict(_GG_CONFIGS[0].kwargs) if INTERPRET else {}
    if is_fp8:
        extra["BLOCK_K"] = TILE
        if not INTERPRET:  # the FP8 path needs 128-deep K steps: override the tuned BLOCK_K
            return _grouped_fp8(x_perm, w, c, sa, sb, r, P, N, K)
    _grouped_gemm_tuned[grid](x_perm, w, c, sa, sb, r.tile_expert, P, N, K,
                              x_perm.stride(0), w.stride(0), w.stride(1), c.stride(0),
                              sa.stride(0), sb.stride(0) if is_fp8 else 0, sb.stride(1) if is_fp8 else 0,
                              IS_FP8=is_fp8, ALIGN_M=ALIGN, **extra)
    return c


def _grouped_fp8(x_perm, w, c, sa, sb, r, P, N, K):
    # fixed tile for FP8 (BLOCK_K must be the 128 of the scales); 128x128, 8 warps, 4 stages
    bm, bn = 128, 128
    _grouped_gemm_kernel[(cdiv(P, bm) * cdiv(N, bn),)](
        x_perm, w, c, sa, sb, r.tile_expert, P, N, K, x_perm.stride(0), w.stride(0), w.stride(1),
        c.stride(0), sa.stride(0), sb.stride(0), sb.stride(1), IS_FP8=True, ALIGN_M=ALIGN,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=TILE, GROUP_M=8, num_warps=8, num_stages=4)
    return c
