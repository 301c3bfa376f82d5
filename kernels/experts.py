"""Routed SwiGLU experts on the grouped GEMM, in bf16 or FP8, with autograd.

The interface (what `kernels.convert.convert_to_fp8` looks for, and what a model's MoE layer can use
directly): a module with three stacked parameters
    w1 (E, I, D)  gate projection      w3 (E, I, D)  up projection      w2 (E, D, I)  down projection
and `forward(x (T, D), topk_ids (T, k) int, topk_w (T, k) float) -> (T, D)` computing
    y[t] = sum_j topk_w[t, j] * w2[e] @ (silu(w1[e] @ x[t]) * (w3[e] @ x[t])),  e = topk_ids[t, j].
A model whose experts are a ModuleList of per-expert nn.Linear modules (the DeepSeek-V3 inference
code's layout) is converted linear by linear instead, with no grouped GEMM.

Backward. dgrad runs the grouped GEMM again on the transposed weights. wgrad in FP8 is one launch
over all experts (`grouped_wgrad_fp8`: each expert's reduction runs over its own 128-aligned row
segment, bounds read on the device, no host sync, written in the weight's dtype); its operands are
quantized along rows (128x1 tiles), which never straddle two experts because segments are
128-aligned. wgrad in bf16 is one GEMM per non-empty expert (a host read of the segment offsets;
empty experts are skipped).

FP8 passes, as in kernels/fp8_linear.py: the stacked weights are quantized once per optimizer step in
both layouts (w and the dgrad's w^T, one launch over all experts: kernels/weight_cache.py); the
input rows and the output gradient are each read once for both of their layouts
(`act_quant_dual`), and the FP8 x^T is what the forward saves for the wgrad. In FP8 the whole
expert MLP is one function (`FP8SwiGLUExpertsFunction`): the gate and up projections share one
quantization of their input, and SwiGLU's product and its two gradients are made inside their
quantizations, never written in bf16. Where I is a multiple of 128, w1 and w3 are one stacked FP8
weight (E, 2I, D): one grouped GEMM makes [h1 | h3] and one dgrad GEMM makes dx
(kernels/fp8_linear.py `gate_up_stacked`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.fp8_linear import (SWIGLU_SAVED, FP8Products, dgrad_operands, fake_dgrad_operands, fake_swiglu_grads,
                                fake_swiglu_saved, fp8_ops, grad_products, or_empty, or_none, quantize_grad,
                                swiglu_backward, swiglu_dgrad_needs, swiglu_forward, swiglu_weights,
                                transposed_weights, use_custom_op, wants_grad)
from kernels.fp8_quant import FP8, TILE, swiglu
from kernels.moe import grouped_gemm, grouped_gemm_ref, grouped_wgrad_fp8, grouped_wgrad_ref
from kernels.routing import (ROUTING_TENSORS, Routing, combine, combine_backward, fake_routing_tensors, make_routing,
                             padded_rows, permute)
from kernels.weight_cache import quantized_weight


def _quant_stacked(w: torch.Tensor, wq_fn):
    """w (E, N, K) -> fp8 (E, N, K), scales (E, ceil(N/128), ceil(K/128)), one 128x128 block each."""
    E, N, K = w.shape
    if N % TILE == 0:  # blocks of the (E*N, K) view are exactly the per-expert blocks
        q, s = wq_fn(w.reshape(E * N, K))
        return q.view(E, N, K), s.view(E, N // TILE, -1)
    qs = [wq_fn(w[e]) for e in range(E)]
    return torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])


def stacked_weight_of(ops):
    """weight_of(w, transposed) for stacked expert weights (E, N, K): their cached FP8 copy."""
    return lambda w, transposed: quantized_weight(w, transposed, lambda t: _quant_stacked(t, ops.weight),
                                                  ops.weight_dual, ops.mode)


def grouped_products(r: Routing, emulate: bool) -> FP8Products:
    """The FP8 products over experts (kernels/moe.py), for the shared FP8 backward and SwiGLU.
    NOTE: no host read of the routing: segment bounds stay on the device."""
    grouped = grouped_gemm_ref if emulate else grouped_gemm
    wgrad = grouped_wgrad_ref if emulate else grouped_wgrad_fp8
    return FP8Products(forward=lambda q, s, w8, dt: grouped(q, w8.q, r, s, w8.s, out_dtype=dt),
                       dgrad=lambda q, s, w8, dt: grouped(q, w8.qt, r, s, w8.st, out_dtype=dt),
                       wgrad=lambda gq, gs, xq, xs, dt: wgrad(gq, gs, xq, xs, r, out_dtype=dt))  # (E, N, K)


class GroupedLinearFunction(torch.autograd.Function):
    """out (P, N) = x_perm (P, K) @ w[expert(row)]^T, bf16 or FP8; see the module docstring."""

    @staticmethod
    def forward(ctx, x_perm, w, r: Routing, fp8: bool, emulate: bool):
        grouped = grouped_gemm_ref if emulate else grouped_gemm
        if fp8:
            ops = fp8_ops(emulate)
            need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            w8 = stacked_weight_of(ops)(w, need_dx)
            if need_dw:  # (K, P): x^T in 1x128 tiles along the rows, for the wgrad
                xq, xs, xtq, xts = ops.act_dual(x_perm)
            else:
                xq, xs = ops.act(x_perm)
                xtq = xts = None
            out = grouped(xq, w8.q, r, xs, w8.s, out_dtype=x_perm.dtype)
            ctx.save_for_backward(xtq, xts)
            ctx.w8, ctx.ops = w8, ops
        else:
            out = grouped(x_perm, w, r)
            ctx.save_for_backward(x_perm, w)
        ctx.r, ctx.fp8, ctx.emulate, ctx.w_dtype = r, fp8, emulate, w.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        r, fp8, emulate = ctx.r, ctx.fp8, ctx.emulate
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grouped = grouped_gemm_ref if emulate else grouped_gemm
        dx = dw = None
        if fp8:  # dout's 128x1 tiles (wgrad) never straddle two experts: segments are 128-aligned
            xtq, xts = ctx.saved_tensors
            dx, dw = grad_products(grouped_products(r, emulate), quantize_grad(ctx.ops, dout, need_dx, need_dw),
                                   xtq, xts, ctx.w8, ctx.w_dtype, dout.dtype)
        else:
            dout = dout.contiguous()
            x_perm, w = ctx.saved_tensors
            dx = grouped(dout, w.transpose(1, 2).contiguous(), r)
            dw = torch.zeros(w.shape, dtype=torch.float32, device=dout.device)
            offs, counts = r.offsets.tolist(), r.counts.tolist()  # NOTE: a host sync (bf16 path only)
            for e in range(w.shape[0]):
                if counts[e] == 0:
                    continue
                lo, hi = offs[e], offs[e + 1]
                dw[e] = dout[lo:hi].float().t() @ x_perm[lo:hi].float()
            dw = dw.to(ctx.w_dtype)
        # NOTE: rows of dx past the last segment are zeros (the grouped GEMM writes them); PermuteFunction's
        # backward reads routed rows only
        return dx, dw, None, None, None


class FP8SwiGLUExpertsFunction(torch.autograd.Function):
    """o (P, D) = (silu(x w1[e]^T) * (x w3[e]^T)) w2[e]^T for each permuted row's expert e, the three
    grouped GEMMs in FP8: kernels/fp8_linear.py's shared `swiglu_forward` / `swiglu_backward` on the
    grouped products. Against three GroupedLinearFunctions around an eager SwiGLU: the rows are
    quantized once for w1 and w3, SwiGLU's product and its two gradients are made inside their
    quantizations (never in bf16), silu(h1) is not kept for the backward. Same numerics, but for dx
    where gate and up are stacked (`gate_up_stacked`: one GEMM, rounded once)."""

    @staticmethod
    def forward(ctx, xp, w1, w3, w2, r: Routing, emulate: bool):
        ops = fp8_ops(emulate)

        mm, needs = grouped_products(r, emulate), ctx.needs_input_grad[:4]
        y, saved, w8s = swiglu_forward(ops, mm, xp, w1, w3, w2, stacked_weight_of(ops), needs)
        ctx.save_for_backward(*saved)
        ctx.swiglu = (ops, mm, w8s, w1.dtype, needs)  # NOTE: the FP8 weights this forward used
        return y

    @staticmethod
    def backward(ctx, do):
        ops, mm, w8s, w_dtype, needs = ctx.swiglu
        return *swiglu_backward(ops, mm, w8s, w_dtype, needs, ctx.saved_tensors, do), None, None


def permute_backward(dxp: torch.Tensor, r: Routing) -> torch.Tensor:
    """dx (T, D) of permute: dx[t] = sum_j dxp[row_of[t, j]]."""
    ones = torch.ones((r.num_tokens, r.topk), dtype=torch.float32, device=dxp.device)
    return combine(dxp.contiguous(), ones, r)


class PermuteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, r: Routing):
        ctx.r = r
        return permute(x, r)

    @staticmethod
    def backward(ctx, dxp):
        return permute_backward(dxp, ctx.r), None


class CombineFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out_perm, topk_w, r: Routing):
        ctx.save_for_backward(out_perm, topk_w)
        ctx.r = r
        return combine(out_perm, topk_w, r)

    @staticmethod
    def backward(ctx, dy):
        return *combine_backward(dy, *ctx.saved_tensors, ctx.r), None


class GroupedExperts(nn.Module):
    """E routed SwiGLU experts with stacked weights, on the grouped GEMM (bf16, or FP8 once converted)."""

    def __init__(self, num_experts: int, dim: int, inter_dim: int, init_std: float = 0.02):
        super().__init__()
        self.num_experts, self.dim, self.inter_dim = num_experts, dim, inter_dim
        self.w1 = nn.Parameter(torch.randn(num_experts, inter_dim, dim) * init_std)
        self.w3 = nn.Parameter(torch.randn(num_experts, inter_dim, dim) * init_std)
        self.w2 = nn.Parameter(torch.randn(num_experts, dim, inter_dim) * init_std)
        self.fp8 = False
        self.emulate = False

    def forward(self, x, topk_ids, topk_w):
        T, D = x.shape
        assert D == self.dim, f"GroupedExperts: x has {D} features, experts expect {self.dim}"
        return grouped_swiglu(x, topk_ids, topk_w, self.w1, self.w2, self.w3, self.fp8, self.emulate)


def grouped_swiglu(x, topk_ids, topk_w, w1, w2, w3, fp8: bool, emulate: bool = False) -> torch.Tensor:
    """GroupedExperts' forward as a function of its weights (for wrappers that own the parameters,
    e.g. training/expert_parallel.py): x (T, D), topk_ids / topk_w (T, k) -> (T, D). In FP8 under
    torch.compile or no_grad: one custom op (see the end of this file); else autograd Functions."""
    emulate = emulate or not x.is_cuda
    if fp8 and use_custom_op():
        needs = [wants_grad(t) for t in (x, topk_w, w1, w3, w2)]
        return torch.ops.seekflow.fp8_experts(x, topk_ids, topk_w, w1, w3, w2, emulate, needs)[0]
    return _grouped_swiglu_eager(x, topk_ids, topk_w, w1, w2, w3, fp8, emulate)


@torch.compiler.disable  # bf16: the weight gradient reads the segment bounds on the host (a graph break anyway)
def _grouped_swiglu_eager(x, topk_ids, topk_w, w1, w2, w3, fp8: bool, emulate: bool) -> torch.Tensor:
    r = make_routing(topk_ids, w1.shape[0])
    xp = PermuteFunction.apply(x, r)  # (P, D), P = padded rows
    if fp8:
        o = FP8SwiGLUExpertsFunction.apply(xp, w1, w3, w2, r, emulate)  # (P, D)
    else:
        h1 = GroupedLinearFunction.apply(xp, w1, r, fp8, emulate)  # (P, I)
        h3 = GroupedLinearFunction.apply(xp, w3, r, fp8, emulate)  # (P, I)
        o = GroupedLinearFunction.apply(swiglu(h1, h3), w2, r, fp8, emulate)  # (P, D)
    return CombineFunction.apply(o, topk_w, r)  # (T, D)


def experts_ref(x, topk_ids, topk_w, w1, w2, w3) -> torch.Tensor:
    """Per-token dense definition of the experts (any precision), for tests."""
    out = torch.zeros_like(x)
    for j in range(topk_ids.shape[1]):
        e = topk_ids[:, j]
        h = F.silu(torch.einsum("tid,td->ti", w1[e], x)) * torch.einsum("tid,td->ti", w3[e], x)
        out = out + topk_w[:, j, None] * torch.einsum("tdi,ti->td", w2[e], h)
    return out


# ---------------------------------------------------------------------------------------------
# torch.compile: the FP8 experts (permute, FP8 SwiGLU, combine) as one custom op, for the reasons
# given at the end of kernels/fp8_linear.py. The routing is made inside the op and comes back as
# outputs, with the tensors the backward reads.

# y, o, the routing's tensors, swiglu_forward's saved, and the stacked weights' six dgrad operands
# (kernels/fp8_linear.py)
EXPERTS_OUTPUTS = tuple[(torch.Tensor,) * (2 + ROUTING_TENSORS + SWIGLU_SAVED + 6)]
EXPERTS_GRADS = tuple[(torch.Tensor,) * 5]  # dx, d topk_w, dw1, dw3, dw2


@torch.library.custom_op("seekflow::fp8_experts", mutates_args=())
def _experts_op(x: torch.Tensor, topk_ids: torch.Tensor, topk_w: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                w2: torch.Tensor, emulate: bool, needs: list[bool]) -> EXPERTS_OUTPUTS:
    """needs: gradients wanted for (x, topk_w, w1, w3, w2). o (P, D), the experts' permuted outputs,
    is kept for d topk_w."""
    r = make_routing(topk_ids, w1.shape[0])
    ops = fp8_ops(emulate)
    swiglu_needs = [needs[0], *needs[2:]]
    o, saved, w8s = swiglu_forward(ops, grouped_products(r, emulate), permute(x, r), w1, w3, w2,
                                   stacked_weight_of(ops), swiglu_needs)
    return (combine(o, topk_w, r), o if needs[1] else x.new_empty(0), *r.tensors(),
            *(or_empty(t, x) for t in saved), *dgrad_operands(w8s, swiglu_dgrad_needs(swiglu_needs), x))


@_experts_op.register_fake
def _(x, topk_ids, topk_w, w1, w3, w2, emulate, needs):
    (T, D), k, (E, I) = x.shape, topk_ids.shape[1], w1.shape[:2]
    P = padded_rows(T, k, E)
    routing = fake_routing_tensors(x, T, k, E)
    swiglu_needs = [needs[0], *needs[2:]]
    return (x.new_empty(T, D), x.new_empty(P, D) if needs[1] else x.new_empty(0), *routing,
            *fake_swiglu_saved(x, P, D, I, swiglu_needs),
            *fake_dgrad_operands(x, swiglu_weights(w1, w3, w2), swiglu_dgrad_needs(swiglu_needs)))


@torch.library.custom_op("seekflow::fp8_experts_backward", mutates_args=())
def _experts_backward_op(dy: torch.Tensor, topk_w: torch.Tensor, o: torch.Tensor, routing: list[torch.Tensor],
                         saved: list[torch.Tensor], wt: list[torch.Tensor], w1: torch.Tensor, w3: torch.Tensor,
                         w2: torch.Tensor, emulate: bool, needs: list[bool]) -> EXPERTS_GRADS:
    r = Routing(dy.shape[0], topk_w.shape[1], w1.shape[0], *routing)
    ops = fp8_ops(emulate)
    swiglu_needs = [needs[0], *needs[2:]]
    d_o, d_w = combine_backward(dy, or_none(o), topk_w, r)
    dxp, dw1, dw3, dw2 = swiglu_backward(ops, grouped_products(r, emulate), transposed_weights(wt), w1.dtype,
                                         swiglu_needs, [or_none(t) for t in saved], d_o)
    dx = permute_backward(dxp, r) if needs[0] else None
    return tuple(or_empty(g, dy) for g in (dx, d_w, dw1, dw3, dw2))


@_experts_backward_op.register_fake
def _(dy, topk_w, o, routing, saved, wt, w1, w3, w2, emulate, needs):
    dx, dw1, dw3, dw2 = fake_swiglu_grads(dy, dy.shape[0], w1, w3, w2, [needs[0], *needs[2:]])
    return dx, topk_w.new_empty(topk_w.shape) if needs[1] else dy.new_empty(0), dw1, dw3, dw2


def _experts_setup(ctx, inputs, output):
    _, _, topk_w, w1, w3, w2, ctx.emulate, ctx.needs = inputs
    ctx.save_for_backward(topk_w, *output[1:], w1, w3, w2)


def _experts_grad(ctx, dy, *_):
    topk_w, o, *rest = ctx.saved_tensors
    n = ROUTING_TENSORS
    routing, saved, wt, (w1, w3, w2) = rest[:n], rest[n:n + SWIGLU_SAVED], rest[n + SWIGLU_SAVED:-3], rest[-3:]
    dx, d_w, dw1, dw3, dw2 = _experts_backward_op(dy.contiguous(), topk_w, o, routing, saved, wt, w1, w3, w2,
                                                  ctx.emulate, ctx.needs)
    return or_none(dx), None, or_none(d_w), or_none(dw1), or_none(dw3), or_none(dw2), None, None


_experts_op.register_autograd(_experts_grad, setup_context=_experts_setup)


__all__ = ["GroupedExperts", "GroupedLinearFunction", "grouped_swiglu", "experts_ref", "FP8"]
