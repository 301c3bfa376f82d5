"""Token movement for the routed experts: where each (token, slot) pair goes, and back.

What it computes. A router sends each of T tokens to k of E experts (topk_ids (T, k), weights
topk_w (T, k)). `make_routing` sorts the T*k (token, expert) pairs by expert into one permuted
matrix whose rows for expert e form one contiguous segment, padded to a multiple of 128 rows
(DeepGEMM's "contiguous layout": no 128-row GEMM tile and no 128-token FP8 quantization tile spans
two experts); `Routing.row_tiles` lists the 64-row tiles that hold routed rows (a grouped GEMM with
64-row tiles computes only those: on average half a tile less padding per expert). `permute` gathers the tokens'
rows into it; `combine` undoes the permutation and sums each token's k expert outputs with its router
weights, y[t] = sum_j topk_w[t, j] * out[row_of[t, j]]; `combine_backward` is combine's gradient for
both of its inputs. The grouped GEMM over the permuted rows is kernels/moe.py.

Why it exists. Everything here runs on the device with sizes bounded statically (`padded_rows`), so
neither a training step nor a CUDA-graph capture waits on the host for the routing.

What it matches. The *_ref functions, in plain PyTorch, run on CPU and are the definitions; the Triton
kernels match them exactly (combine's weighted sums to float32 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from kernels._triton import HAS_TRITON, INTERPRET, tl, triton, use_triton
from kernels.fp8_quant import cdiv

ALIGN = 128  # rows per expert segment are padded to this; a GEMM row tile must divide it
ROUTING_TENSORS = 5  # len(Routing.tensors()): what a custom op hands on for the routing


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

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensor fields in order: Routing(T, k, E, *r.tensors()) rebuilds r (custom ops pass these)."""
        return self.src_token, self.row_of, self.offsets, self.counts, self.tile_expert

    @cached_property
    def row_tiles(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tiles (P / 64,) int32, live (1,) int32): the permuted matrix's 64-row tiles, the `live` that
        hold routed rows first, in row order, then those of padding alone. A grouped GEMM with 64-row
        tiles computes only the first `live` (kernels/moe.py). Derived from src_token on first use (only
        that GEMM reads it), on the device: no host read. A segment's routed rows come first, so a tile
        holds some exactly when its first row is routed."""
        live = (self.src_token[::64] >= 0).int()
        n_live = live.sum(dtype=torch.int32).reshape(1)
        at = torch.where(live.bool(), live.cumsum(0, dtype=torch.int32) - 1,
                         n_live + (1 - live).cumsum(0, dtype=torch.int32) - 1)
        tiles = torch.empty_like(live)
        tiles[at.long()] = torch.arange(live.shape[0], dtype=torch.int32, device=live.device)
        return tiles, n_live


def fake_routing_tensors(like: torch.Tensor, tokens: int, topk: int, experts: int) -> tuple[torch.Tensor, ...]:
    """Empty tensors of the shapes of Routing.tensors(), for a custom op's fake implementation."""
    P = padded_rows(tokens, topk, experts)
    return (like.new_empty(P, dtype=torch.int32), like.new_empty(tokens, topk, dtype=torch.long),
            like.new_empty(experts + 1, dtype=torch.long), like.new_empty(experts, dtype=torch.long),
            like.new_empty(P // ALIGN, dtype=torch.int32))


def expert_counts(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(num_experts,) int64 rows per expert. NOTE: not torch.bincount, which reads its max on the
    host: a sync on CUDA (so a failed CUDA-graph capture), and a data-dependent shape under torch.compile."""
    return torch.zeros(num_experts, dtype=torch.long, device=expert.device).scatter_add_(
        0, expert.long(), torch.ones_like(expert, dtype=torch.long))


def padded_rows(tokens: int, topk: int, experts: int, align: int = ALIGN) -> int:
    """P, the permuted matrix's row count for `tokens` x `topk` pairs over `experts`. NOTE: a static
    bound (every expert may waste align-1 rows), so nothing waits on the GPU for the real counts."""
    return cdiv(tokens * topk + experts * (align - 1), align) * align


def make_routing(topk_ids: torch.Tensor, num_experts: int, align: int = ALIGN) -> Routing:
    """Sort the (token, slot) pairs by expert, stably, into 128-row-aligned segments (no host sync)."""
    assert topk_ids.dim() == 2, f"make_routing: topk_ids must be (T, k), got {tuple(topk_ids.shape)}"
    assert align % 64 == 0, f"make_routing: align must be a multiple of 64, got {align}"
    T, k = topk_ids.shape
    E = num_experts
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).long()  # (T*k,)
    counts = expert_counts(flat, E)  # (E,)
    padded = (counts + align - 1) // align * align
    offsets = torch.zeros(E + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(padded, 0)
    starts = torch.zeros(E, dtype=torch.long, device=dev)
    starts[1:] = torch.cumsum(counts, 0)[:-1]  # unpadded start of each expert in sorted order
    order = torch.sort(flat, stable=True).indices  # (T*k,) pair index, sorted by expert
    e_sorted = flat[order]
    rank = torch.arange(T * k, device=dev) - starts[e_sorted]  # position inside its expert
    rows = offsets[e_sorted] + rank  # (T*k,) permuted row of each sorted pair
    P = padded_rows(T, k, E, align)
    src_token = torch.full((P,), -1, dtype=torch.int32, device=dev)
    src_token[rows] = (order // k).int()
    row_of = torch.empty(T * k, dtype=torch.long, device=dev)
    row_of[order] = rows
    tile_start = torch.arange(0, P, align, device=dev)
    tile_expert = torch.searchsorted(offsets[1:], tile_start, right=True).int()
    tile_expert = torch.where(tile_expert >= E, -1, tile_expert)  # not a masked store: that may read the mask on the host
    return Routing(T, k, E, src_token, row_of.view(T, k), offsets, counts, tile_expert)



# ---------------------------------------------------------------------------------------------
# references


def permute_ref(x: torch.Tensor, r: Routing) -> torch.Tensor:
    """x (T, D) -> x_perm (P, D); padding rows are zero."""
    out = torch.zeros((r.padded_rows, x.shape[1]), dtype=x.dtype, device=x.device)
    valid = r.src_token >= 0
    out[valid] = x[r.src_token[valid].long()]
    return out


def combine_ref(out_perm: torch.Tensor, topk_w: torch.Tensor, r: Routing) -> torch.Tensor:
    """y (T, N) = sum_j topk_w[t, j] * out_perm[row_of[t, j]], summed in float32."""
    g = out_perm[r.row_of].float()  # (T, k, N)
    return (g * topk_w.float()[..., None]).sum(1).to(out_perm.dtype)


def combine_backward_ref(dy: torch.Tensor, out_perm: torch.Tensor | None, topk_w: torch.Tensor, r: Routing
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients of combine for dy (T, N): d out_perm (P, N), d_out[row_of[t, j]] = topk_w[t, j] * dy[t]
    (rounded to dy's dtype, padding rows zero), and d topk_w (T, k), d_w[t, j] = out_perm[row_of[t, j]] . dy[t]
    summed in float32; d topk_w is None when out_perm is (the weights want no gradient)."""
    rows = r.row_of.reshape(-1)
    d_out = dy.new_zeros(r.padded_rows, dy.shape[-1])
    d_out[rows] = (dy[:, None, :].float() * topk_w[..., None].float()).reshape(
        -1, dy.shape[-1]).to(dy.dtype)  # (T*k, N)
    if out_perm is None:
        return d_out, None
    d_w = (out_perm[r.row_of].float() * dy[:, None, :].float()).sum(-1).to(topk_w.dtype)
    return d_out, d_w


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

    @triton.jit
    def _combine_backward_kernel(dy_ptr, w_ptr, rows_ptr, src_ptr, o_ptr, d_out_ptr, d_w_ptr, N, stride_dy,
                                 stride_o, stride_d, TOPK: tl.constexpr, BLOCK_N: tl.constexpr, HAS_O: tl.constexpr):
        # one program per permuted row: the gradient of the routed pair it holds, written whole (zeros
        # for a padding row, so d_out needs no memset), and that pair's d topk_w from the same read of
        # dy. The row's slot j is found among its token's k rows (k compares, no inverse map stored).
        row = tl.program_id(0)
        src = tl.load(src_ptr + row)
        routed = src >= 0
        t = tl.maximum(src, 0).to(tl.int64)
        wj = 0.0
        slot = 0
        for j in tl.static_range(TOPK):
            hit = tl.load(rows_ptr + t * TOPK + j) == row
            wj = tl.where(hit, tl.load(w_ptr + t * TOPK + j).to(tl.float32), wj)
            slot = tl.where(hit, j, slot)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs = n0 + tl.arange(0, BLOCK_N)
            m = offs < N
            g = tl.load(dy_ptr + t * stride_dy + offs, mask=m & routed, other=0.0).to(tl.float32)
            tl.store(d_out_ptr + row.to(tl.int64) * stride_d + offs, (g * wj).to(d_out_ptr.dtype.element_ty), mask=m)
            if HAS_O:
                o = tl.load(o_ptr + row.to(tl.int64) * stride_o + offs, mask=m & routed, other=0.0).to(tl.float32)
                acc += o * g
        if HAS_O:
            tl.store(d_w_ptr + t * TOPK + slot, tl.sum(acc).to(d_w_ptr.dtype.element_ty), mask=routed)


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


def combine_backward(dy: torch.Tensor, out_perm: torch.Tensor | None, topk_w: torch.Tensor, r: Routing
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """combine_backward_ref in one Triton pass over the permuted rows: dy read once (and out_perm, when
    d topk_w is wanted), d out_perm written once. NOTE: the eager version built (T, k, N) float32
    products and gathers, about 1 GB of traffic per MoE layer and micro-step on `small`
    (H100 profile, 2026-12-05: ~15% of the FP8 step)."""
    if not (use_triton(dy) or INTERPRET):
        return combine_backward_ref(dy, out_perm, topk_w, r)
    T, k, N = r.num_tokens, r.topk, dy.shape[-1]
    assert dy.shape == (T, N) and dy.stride(1) == 1, (
        f"combine_backward: dy must be row-contiguous ({T}, N), got {tuple(dy.shape)} strides {dy.stride()}")
    d_out = torch.empty((r.padded_rows, N), dtype=dy.dtype, device=dy.device)
    has_o = out_perm is not None
    if has_o:
        assert out_perm.shape == (r.padded_rows, N) and out_perm.stride(1) == 1, (
            f"combine_backward: out_perm must be row-contiguous ({r.padded_rows}, {N}), got {tuple(out_perm.shape)}")
    d_w = torch.empty((T, k), dtype=topk_w.dtype, device=dy.device) if has_o else None
    o = out_perm if has_o else dy  # not read without HAS_O
    _combine_backward_kernel[(r.padded_rows,)](dy, topk_w.contiguous(), r.row_of.contiguous(), r.src_token, o, d_out,
                                               d_w if has_o else d_out, N, dy.stride(0), o.stride(0),
                                               d_out.stride(0), TOPK=k, BLOCK_N=min(1024, triton.next_power_of_2(N)),
                                               HAS_O=has_o, num_warps=4)
    return d_out, d_w
