"""FP8 linear layer: y = x @ w^T + b with all three GEMMs in FP8, the DeepSeek-V3 recipe.

What it computes. Forward: x is quantized per 1x128 tile, w per 128x128 block, and the FP8 GEMM
accumulates in FP32 (kernels/fp8_gemm.py). Backward: dgrad dx = dy @ w reuses the FP8 weight
(transposed: 128x128 blocks transpose into 128x128 blocks) with dy quantized per 1x128 tile; wgrad
dw = dy^T @ x quantizes dy and x along the token axis (128x1 tiles), as the paper does, and writes dw
in the weight's dtype straight from the GEMM (FP32 accumulation, one rounding at the store: the
same value as an FP32 result cast afterwards, without the FP32 pass). The master weight stays in
whatever precision the module holds (DeepSpeed keeps its own FP32 master copy and optimizer state);
FP8 lives only inside the function.

Passes, per training step of one linear (2026-11-30 version in brackets):
  - the weight: quantized once per optimizer step in both layouts, w and w^T, from one read
    (kernels/weight_cache.py) [quantized on every forward, its FP8 copy transposed on every backward];
  - x: both x's 1x128 tiles (forward GEMM) and x^T's (wgrad) are made in the forward, and the FP8
    x^T is what is saved for the backward, as the paper does [x kept in bf16, quantized again in the
    backward]; dy: both layouts (dgrad, wgrad) at once. `act_quant_dual` makes them with one read or
    with the two single-layout kernels, whichever measured faster for the layout: on the H200 the
    one-read kernel won only on narrow activations (BENCHMARKS.md, 2026-11-30 second session);
  - dw: written in bf16 by the GEMM [FP32, then a cast kernel].
A SwiGLU MLP (gate, up, down) is one function (`swiglu_forward` / `swiglu_backward`, dense and
grouped over experts): x quantized once for gate and up, SwiGLU's product and its gradients made
inside their quantizations, and gate and up one stacked FP8 weight [w1; w3] where their width is a
multiple of 128: one GEMM each for [h1 | h3] and for dx (BENCHMARKS.md, 2026-12-06 fifteenth session).

Why it exists. FP8 doubles the tensor-core rate over bf16 on Hopper; the fine-grained scales keep
the loss within the paper's 0.25% of BF16.

Under torch.compile and no_grad. Each FP8 layer is a `torch.library` custom op (the end of this file
and of kernels/experts.py), so a compiled block stays one graph, and inference quantizes x in one
layout only; eager training uses the autograd Functions.

What it matches. `emulate=True` (and any CPU tensor) runs the same quantize -> dequantize -> matmul
numerics in plain PyTorch (the *_ref functions, the same weight cache), so CI on a CPU checks the
FP8 path's gradients against float64 ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from kernels.fp8_gemm import fp8_gemm, fp8_gemm_ref
from kernels.fp8_quant import (FP8, TILE, act_quant, act_quant_dual, act_quant_dual_ref, act_quant_ref, swiglu,
                               swiglu_grad_quant_dual, swiglu_grad_quant_dual_ref, swiglu_quant_dual,
                               swiglu_quant_dual_ref, weight_quant, weight_quant_dual, weight_quant_dual_ref,
                               weight_quant_ref)
from kernels.weight_cache import QuantizedWeight, quantized_weight


@dataclass(frozen=True)
class FP8Ops:
    """The quantizers and GEMM of one mode: the Triton kernels ("gpu") or the references ("emulate")."""

    mode: str
    act: Callable  # x (M, K) -> q, s; pad_to=
    act_dual: Callable  # x (M, K) -> q, s, qt, st (both layouts, one read)
    weight: Callable  # w (N, K) -> q, s
    weight_dual: Callable  # w (N, K) or (E, N, K) -> q, s, qt, st
    gemm: Callable  # fp8_gemm's signature
    swiglu_dual: Callable  # gate, up (M, K) -> act_dual of silu(gate) * up, the product never in memory
    swiglu_grad_dual: Callable  # d product, gate, up -> (act_dual of d gate, act_dual of d up); stacked=True:
    # act_dual of [d gate | d up]

    def weight_of(self, w: torch.Tensor, transposed: bool) -> QuantizedWeight:
        """w's FP8 copy, once per optimizer step (kernels/weight_cache.py)."""
        return quantized_weight(w, transposed, self.weight, self.weight_dual, self.mode)


def _gemm_ref(a, sa, b, sb, b_block=TILE, out_dtype=torch.bfloat16, backend=None):
    return fp8_gemm_ref(a, sa, b, sb, b_block, out_dtype=out_dtype)


GPU_OPS = FP8Ops("gpu", act_quant, act_quant_dual, weight_quant, weight_quant_dual, fp8_gemm, swiglu_quant_dual,
                 swiglu_grad_quant_dual)
EMULATED_OPS = FP8Ops("emulate", act_quant_ref, act_quant_dual_ref, weight_quant_ref, weight_quant_dual_ref,
                      _gemm_ref, swiglu_quant_dual_ref, swiglu_grad_quant_dual_ref)


def fp8_ops(emulate: bool) -> FP8Ops:
    return EMULATED_OPS if emulate else GPU_OPS


@dataclass(frozen=True)
class FP8Products:
    """How a layer's FP8 products run: dense (`dense_products`) or grouped over experts (kernels/experts.py).
    Operands come quantized; w8 is a QuantizedWeight (its transposed layout for the dgrad)."""

    forward: Callable  # (q, s, w8, out_dtype) -> x @ w^T
    dgrad: Callable  # (q, s, w8, out_dtype) -> dy @ w
    wgrad: Callable  # (dy^T q, s, x^T q, s, w_dtype) -> dy^T @ x, both in 1x128 tiles along the tokens


def dense_products(ops: FP8Ops, backend: str) -> FP8Products:
    return FP8Products(
        forward=lambda q, s, w8, dt: ops.gemm(q, s, w8.q, w8.s, TILE, out_dtype=dt, backend=backend),
        dgrad=lambda q, s, w8, dt: ops.gemm(q, s, w8.qt, w8.st, TILE, out_dtype=dt, backend=backend),
        wgrad=lambda gq, gs, xq, xs, dt: ops.gemm(gq, gs, xq, xs, 1, out_dtype=dt, backend=backend))


def quantize_grad(ops: FP8Ops, g: torch.Tensor, for_dgrad: bool, for_wgrad: bool) -> tuple:
    """A gradient g (M, N) as its products want it, None where not needed: (q, s) in 1x128 tiles along
    N for the dgrad, and (qt, st) of g^T in 1x128 tiles along the tokens, zero-padded to a multiple of
    128 tokens, for the wgrad. NOTE: without the padding, a token count like the MTP block's
    8 x 2047 = 16376 left 16-byte-misaligned rows that neither cuBLAS nor the TMA kernel takes, and
    the pointer kernel ran the wgrad at ~30 TFLOP/s (2026-11-30)."""
    if for_dgrad and for_wgrad:
        return ops.act_dual(g)
    if for_dgrad:
        return (*ops.act(g), None, None)
    if for_wgrad:
        return (None, None, *ops.act(g.t(), pad_to=TILE))
    return None, None, None, None


def grad_products(mm: FP8Products, g8: tuple, xtq, xts, w8, w_dtype, out_dtype) -> tuple:
    """(dx, dw) from a quantized gradient (quantize_grad's four) and the forward's FP8 x^T; None where
    that part of g8 is None."""
    gq, gs, gtq, gts = g8
    dx = mm.dgrad(gq, gs, w8, out_dtype) if gq is not None else None
    dw = mm.wgrad(gtq, gts, xtq, xts, w_dtype) if gtq is not None else None
    return dx, dw


def swiglu_dgrad_needs(needs) -> tuple[bool, bool, bool]:
    """Which of a SwiGLU's weights (w1, w3, w2) a dgrad multiplies by, from which of (x, w1, w3, w2)
    want a gradient: w1 and w3 for dx, w2 for the gradients of h1 = x w1^T and h3 = x w3^T."""
    return needs[0], needs[0], any(needs[:3])


def gate_up_stacked(inter: int) -> bool:
    """Whether a SwiGLU's gate and up projections (width I = inter) run as one stacked weight
    [w1; w3] (.., 2I, D): one forward GEMM for h = [h1 | h3] and one dgrad GEMM for
    dx = [d h1 | d h3] [w1; w3], instead of two each and a bf16 add of the two dx. I must be a
    multiple of 128, so that the stack's 128x128 blocks and the 1x128 tiles of [d h1 | d h3] are each
    projection's own: the same quantization as two separate weights."""
    return inter % TILE == 0


def swiglu_weights(w1, w3, w2) -> tuple:
    """What swiglu_forward quantizes: ((w1, w3), None, w2) when gate_up_stacked (one FP8 weight for the
    stack), else (w1, w3, w2)."""
    return ((w1, w3), None, w2) if gate_up_stacked(w1.shape[-2]) else (w1, w3, w2)


def swiglu_forward(ops: FP8Ops, mm: FP8Products, x2, w1, w3, w2, weight_of, needs) -> tuple:
    """The FP8 SwiGLU's forward, shared by FP8SwiGLUFunction (dense), kernels/experts.py's
    FP8SwiGLUExpertsFunction (grouped) and their torch.compile custom ops (end of each file):
    down(silu(x w1^T) * (x w3^T)), each operand quantized once and where it is made.
    x2 (M, K); weight_of(w, transposed) -> its QuantizedWeight (w may be a stacked pair: see
    `swiglu_weights`); needs: which of (x, w1, w3, w2) want a gradient. Returns (y, saved, w8s):
    saved = (xtq, xts, h, atq, ats), h = [h1 | h3] (M, 2I), None where not needed, and the FP8 weights
    this forward used (as `swiglu_weights` lists them)."""
    need_x, need_w1, need_w3, need_w2 = needs
    stacked = gate_up_stacked(w1.shape[-2])
    w8s = tuple(weight_of(w, t) if w is not None else None
                for w, t in zip(swiglu_weights(w1, w3, w2), swiglu_dgrad_needs(needs)))
    if need_w1 or need_w3:  # x^T in 1x128 tiles along the tokens, for both wgrads
        xq, xs, xtq, xts = ops.act_dual(x2)
    else:
        (xq, xs), xtq, xts = ops.act(x2), None, None
    if stacked:  # [w1; w3]: one GEMM
        h = mm.forward(xq, xs, w8s[0], x2.dtype)
    else:  # NOTE: a copy, for widths that are not multiples of 128 (small test models)
        h = torch.cat([mm.forward(xq, xs, w8, x2.dtype) for w8 in w8s[:2]], dim=1)
    h1, h3 = gate_and_up(h)
    if need_w2:  # the product made inside its quantization, both layouts
        aq, as_, atq, ats = ops.swiglu_dual(h1, h3)
    else:
        (aq, as_), atq, ats = ops.act(swiglu(h1, h3)), None, None
    need_h = need_x or need_w1 or need_w3  # the gradients of h1 = x w1^T and h3 = x w3^T
    saved = (xtq, xts, h if need_h else None, atq, ats)
    return mm.forward(aq, as_, w8s[2], x2.dtype), saved, w8s


def gate_and_up(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h1, h3 (M, I): views of swiglu_forward's h = [h1 | h3] (M, 2I)."""
    inter = h.shape[1] // 2
    return h[:, :inter], h[:, inter:]


def swiglu_backward(ops: FP8Ops, mm: FP8Products, w8s, w_dtype, needs, saved, do2: torch.Tensor) -> tuple:
    """(dx, dw1, dw3, dw2) of swiglu_forward from do2 (M, D) and its (saved, w8s): d h1 and d h3 made
    inside their quantizations (`swiglu_grad_dual`). When gate_up_stacked, they are quantized side by
    side as [d h1 | d h3] (M, 2I), both layouts, and dx is one dgrad GEMM over it and the stacked
    [w1; w3]; else dx = dx1 + dx3 as autograd summed it."""
    xtq, xts, h, atq, ats = saved
    w18, w38, w28 = w8s
    need_x, need_w1, need_w3, need_w2 = needs
    need_h = need_x or need_w1 or need_w3
    da, dw2 = grad_products(mm, quantize_grad(ops, do2, need_h, need_w2), atq, ats, w28, w_dtype, do2.dtype)
    dx = dw1 = dw3 = None
    if need_h:
        h1, h3 = gate_and_up(h)
        inter = h1.shape[1]
        if gate_up_stacked(inter):  # the transposed layout's rows: d h1^T, then d h3^T
            q, s, qt, st = ops.swiglu_grad_dual(da, h1, h3, stacked=True)
            dx = mm.dgrad(q, s, w18, do2.dtype) if need_x else None
            dh1t, dh3t = (qt[:inter], st[:inter]), (qt[inter:], st[inter:])
        else:
            dh1, dh3 = ops.swiglu_grad_dual(da, h1, h3)  # each (q, s, qt, st)
            dx = mm.dgrad(*dh1[:2], w18, do2.dtype) + mm.dgrad(*dh3[:2], w38, do2.dtype) if need_x else None
            dh1t, dh3t = dh1[2:], dh3[2:]
        dw1 = mm.wgrad(*dh1t, xtq, xts, w_dtype) if need_w1 else None
        dw3 = mm.wgrad(*dh3t, xtq, xts, w_dtype) if need_w3 else None
    return dx, dw1, dw3, dw2


def linear_forward(ops: FP8Ops, x2, weight, backend: str, need_dx: bool, need_dw: bool) -> tuple:
    """y (M, N) = x2 (M, K) @ weight^T in FP8, with what its backward keeps: (y, xtq, xts, w8). xtq, xts
    (x^T in 1x128 tiles along the tokens, for the wgrad) are None unless need_dw."""
    K = x2.shape[-1]
    assert weight.shape[1] == K, f"FP8Linear: input has {K} features, weight is {tuple(weight.shape)}"
    w8 = ops.weight_of(weight, transposed=need_dx)
    xtq = xts = None
    if need_dw:  # (K, Mp), (K, Mp/128), Mp = M padded to 128
        xq, xs, xtq, xts = ops.act_dual(x2)
    else:
        xq, xs = ops.act(x2)
    return ops.gemm(xq, xs, w8.q, w8.s, TILE, out_dtype=x2.dtype, backend=backend), xtq, xts, w8


def linear_backward(ops: FP8Ops, dy2, xtq, xts, w8, w_dtype, backend: str, need_dx: bool, need_dw: bool) -> tuple:
    """(dx (M, K), dw (N, K)) of linear_forward from dy2 (M, N); None where not needed."""
    return grad_products(dense_products(ops, backend), quantize_grad(ops, dy2, need_dx, need_dw), xtq, xts,
                         w8, w_dtype, dy2.dtype)


class FP8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, backend: str = "auto", emulate: bool = False):
        ops = fp8_ops(emulate)
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        y, xtq, xts, w8 = linear_forward(ops, x.reshape(-1, x.shape[-1]), weight, backend, need_dx, need_dw)
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(xtq, xts)
        ctx.w8 = w8  # NOTE: the FP8 copy this forward used, even if the cache moves on before backward
        ctx.meta = (x.shape, weight.dtype, bias is not None, backend, ops)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        xtq, xts = ctx.saved_tensors
        x_shape, w_dtype, has_bias, backend, ops = ctx.meta
        dy2 = dy.reshape(-1, dy.shape[-1])  # (M, N)
        dx, dw = linear_backward(ops, dy2, xtq, xts, ctx.w8, w_dtype, backend, *ctx.needs_input_grad[:2])
        db = dy2.float().sum(0).to(w_dtype) if has_bias and ctx.needs_input_grad[2] else None
        return (dx.view(x_shape) if dx is not None else None), dw, db, None, None


class FP8SwiGLUFunction(torch.autograd.Function):
    """y = down(silu(gate(x)) * up(x)) with the three products in FP8 (`swiglu_forward`): against three
    FP8LinearFunctions around an eager SwiGLU, x is quantized once for gate and up, SwiGLU's product
    and its two gradients are made inside their quantizations (never in bf16), and silu(gate(x)) is
    not kept for the backward. Same numerics, bit for bit in the emulation, but for dx where gate and
    up are stacked (`gate_up_stacked`: one dgrad GEMM, rounded once instead of two rounded and summed)."""

    @staticmethod
    def forward(ctx, x, w1, w3, w2, backend: str, emulate: bool):
        ops = fp8_ops(emulate)
        mm, needs = dense_products(ops, backend), ctx.needs_input_grad[:4]
        y, saved, w8s = swiglu_forward(ops, mm, x.reshape(-1, x.shape[-1]), w1, w3, w2, ops.weight_of, needs)
        ctx.save_for_backward(*saved)
        ctx.swiglu = (ops, mm, w8s, w1.dtype, needs, x.shape)  # NOTE: the FP8 weights this forward used
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        ops, mm, w8s, w_dtype, needs, x_shape = ctx.swiglu
        dx, dw1, dw3, dw2 = swiglu_backward(ops, mm, w8s, w_dtype, needs, ctx.saved_tensors,
                                            dy.reshape(-1, dy.shape[-1]))
        return (dx.view(x_shape) if dx is not None else None), dw1, dw3, dw2, None, None


def fp8_swiglu(x: torch.Tensor, gate: "FP8Linear", up: "FP8Linear", down: "FP8Linear") -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) for three bias-free FP8Linears of one mode: FP8SwiGLUFunction, or its
    custom op (`use_custom_op`)."""
    if gate.bias is not None or up.bias is not None or down.bias is not None:
        raise ValueError("fp8_swiglu: the gate, up and down projections must have no bias")
    if len({(m.backend, m.emulate) for m in (gate, up, down)}) != 1:
        raise ValueError("fp8_swiglu: the gate, up and down projections must share one backend and emulate "
                         f"setting, got {[(m.backend, m.emulate) for m in (gate, up, down)]}")
    emulate = gate.emulate or not x.is_cuda
    ws = (gate.weight, up.weight, down.weight)
    if use_custom_op():
        needs = [wants_grad(t) for t in (x, *ws)]
        y = torch.ops.seekflow.fp8_swiglu(x.reshape(-1, x.shape[-1]), *ws, gate.backend, emulate, needs)[0]
        return y.view(*x.shape[:-1], y.shape[-1])
    return FP8SwiGLUFunction.apply(x, *ws, gate.backend, emulate)


class FP8Linear(nn.Linear):
    """nn.Linear whose matmuls run in FP8 (1x128 / 128x128 scales). Same parameters and state dict."""

    backend: str = "auto"
    emulate: bool = False

    @classmethod
    def from_linear(cls, lin: nn.Linear, backend: str = "auto", emulate: bool = False) -> "FP8Linear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = lin.in_features, lin.out_features
        new.weight = lin.weight  # the same Parameter objects: optimizer / DeepSpeed see no change
        new.bias = lin.bias
        new.backend, new.emulate = backend, emulate
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emulate = self.emulate or not x.is_cuda
        if use_custom_op():
            needs = [wants_grad(x), wants_grad(self.weight)]
            y = torch.ops.seekflow.fp8_linear(x.reshape(-1, x.shape[-1]), self.weight, self.backend, emulate,
                                              needs)[0]
            y = y.view(*x.shape[:-1], y.shape[-1])
            return y + self.bias.to(y.dtype) if self.bias is not None else y
        return FP8LinearFunction.apply(x, self.weight, self.bias, self.backend, emulate)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fp8=({'emulated' if self.emulate else self.backend})"


# ---------------------------------------------------------------------------------------------
# torch.compile: the same layers as torch.library custom ops
#
# Why. Dynamo cannot trace what the FP8 layers run: Triton launches with host-side TMA descriptors,
# the weight cache (data_ptr, version) and `auto`'s per-layout timing. As `torch.compiler.disable`d
# eager islands they broke every compiled block into pieces. A custom op is opaque to the compiler
# too, but it stays one node of the block's graph: the norms, RoPE and residuals around it are fused,
# and AOTAutograd calls the registered backward op. Measured (H100, BENCHMARKS.md 2026-12-05): the
# `small` FP8 step compiled alone ran no faster (63.1k tok/s): the FP8 ops' own host time bounds it.
# Compiled and then captured (pretrain.cuda_graphs) it ran at 117k, against 85k captured uncompiled.
# Each op runs the same functions as the autograd Function beside it (same numerics, bit for bit in
# the emulation); eager runs keep the Functions. Shapes for the compiler come from the fake
# implementations (`register_fake`). What the backward needs comes back as extra outputs (empty where
# not needed), the FP8 weights' transposed layouts among them (`dgrad_operands`).


def use_custom_op() -> bool:
    """The custom op rather than the autograd Function: under torch.compile (one node of its graph),
    and under no_grad (validation, evaluation, rollouts), where a Function's `ctx.needs_input_grad`
    still follows requires_grad: it would quantize x in both layouts and keep them for a backward that
    never comes. The op asks only for what `wants_grad` says."""
    return torch.compiler.is_compiling() or not torch.is_grad_enabled()


def wants_grad(t: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A custom op returns tensors only: an absent one is an empty tensor."""
    return t if t is not None else like.new_empty(0)


def or_none(t: torch.Tensor) -> torch.Tensor | None:
    return t if t.numel() else None


def dgrad_operands(w8s, transposed, like: torch.Tensor) -> list[torch.Tensor]:
    """A forward op's FP8 weights as it hands them to its backward op: for each weight, the transposed
    layout (qt, st) its dgrad multiplies by, empty where `transposed` did not ask for it. NOTE: handed
    on, not fetched again from the weight cache: inside a CUDA-graph capture the cache is bypassed
    (kernels/weight_cache.py), and a second fetch quantized every weight twice per micro-step
    (BENCHMARKS.md, 2026-12-05, thirteenth session)."""
    return [t for w8, need in zip(w8s, transposed)
            for t in ((w8.qt, w8.st) if need and w8 is not None else (like.new_empty(0), like.new_empty(0)))]


def transposed_weights(operands: list[torch.Tensor]) -> list[QuantizedWeight | None]:
    """dgrad_operands' pairs back as QuantizedWeights that hold the transposed layout only (all a
    dgrad reads), None where empty."""
    return [QuantizedWeight(None, None, None, qt, st) if qt.numel() else None
            for qt, st in zip(operands[::2], operands[1::2])]


def fake_dgrad_operands(like: torch.Tensor, weights, transposed) -> list[torch.Tensor]:
    """The shapes of dgrad_operands for weights (.., N, K): qt (.., K, N) FP8, st (.., K/128, N/128).
    An entry may be a tuple stacked along N, or None (as `swiglu_weights` lists them)."""
    out = []
    for w, need in zip(weights, transposed):
        if not need or w is None:
            out += [like.new_empty(0), like.new_empty(0)]
            continue
        ws = w if isinstance(w, tuple) else (w,)
        *lead, _, k = ws[0].shape
        n = sum(t.shape[-2] for t in ws)
        out += [ws[0].new_empty(*lead, k, n, dtype=FP8),
                ws[0].new_empty(*lead, -(-k // TILE), -(-n // TILE), dtype=torch.float32)]
    return out


def fake_quantized_t(like: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shapes `act_quant_dual` gives the transposed layout of a (rows, cols) input: q (cols, Mp)
    FP8 and s (cols, Mp / 128) fp32, Mp = rows padded to 128."""
    mp = -(-rows // TILE) * TILE
    return like.new_empty(cols, mp, dtype=FP8), like.new_empty(cols, mp // TILE, dtype=torch.float32)


@torch.library.custom_op("seekflow::fp8_linear", mutates_args=())
def _linear_op(x2: torch.Tensor, weight: torch.Tensor, backend: str, emulate: bool,
               needs: list[bool]) -> tuple[(torch.Tensor,) * 5]:
    """(y, xtq, xts, wqt, wst): FP8LinearFunction's forward without the bias, and the FP8 x^T and w^T
    its backward multiplies by."""
    y, xtq, xts, w8 = linear_forward(fp8_ops(emulate), x2, weight, backend, *needs)
    return y, or_empty(xtq, x2), or_empty(xts, x2), *dgrad_operands([w8], needs[:1], x2)


@_linear_op.register_fake
def _(x2, weight, backend, emulate, needs):
    y = x2.new_empty(x2.shape[0], weight.shape[0])
    xt = fake_quantized_t(x2, *x2.shape) if needs[1] else (x2.new_empty(0), x2.new_empty(0))
    return y, *xt, *fake_dgrad_operands(x2, [weight], needs[:1])


@torch.library.custom_op("seekflow::fp8_linear_backward", mutates_args=())
def _linear_backward_op(dy2: torch.Tensor, xtq: torch.Tensor, xts: torch.Tensor, wt: list[torch.Tensor],
                        weight: torch.Tensor, backend: str, emulate: bool,
                        needs: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    dx, dw = linear_backward(fp8_ops(emulate), dy2, or_none(xtq), or_none(xts), transposed_weights(wt)[0],
                             weight.dtype, backend, *needs)
    return or_empty(dx, dy2), or_empty(dw, dy2)


@_linear_backward_op.register_fake
def _(dy2, xtq, xts, wt, weight, backend, emulate, needs):
    return (dy2.new_empty(dy2.shape[0], weight.shape[1]) if needs[0] else dy2.new_empty(0),
            weight.new_empty(weight.shape) if needs[1] else dy2.new_empty(0))


def _linear_setup(ctx, inputs, output):
    _, weight, ctx.backend, ctx.emulate, ctx.needs = inputs
    ctx.save_for_backward(*output[1:], weight)


def _linear_grad(ctx, dy2, *_):
    xtq, xts, wqt, wst, weight = ctx.saved_tensors
    dx, dw = _linear_backward_op(dy2.contiguous(), xtq, xts, [wqt, wst], weight, ctx.backend, ctx.emulate, ctx.needs)
    return or_none(dx), or_none(dw), None, None, None


_linear_op.register_autograd(_linear_grad, setup_context=_linear_setup)


def fake_swiglu_saved(like: torch.Tensor, rows: int, dim: int, inter: int, needs) -> list[torch.Tensor]:
    """The shapes of swiglu_forward's saved (xtq, xts, h, atq, ats) for `rows` rows of width `dim`
    through experts of width `inter`, empty where `needs` (x, w1, w3, w2) does not want them."""
    need_x, need_w1, need_w3, need_w2 = needs

    def empty():  # NOTE: fresh tensors each time: fake outputs that are one object would alias each other
        return like.new_empty(0), like.new_empty(0)

    return [*(fake_quantized_t(like, rows, dim) if need_w1 or need_w3 else empty()),
            like.new_empty(rows, 2 * inter) if need_x or need_w1 or need_w3 else like.new_empty(0),
            *(fake_quantized_t(like, rows, inter) if need_w2 else empty())]


def fake_swiglu_grads(like: torch.Tensor, rows: int, w1, w3, w2, needs) -> list[torch.Tensor]:
    """The shapes of swiglu_backward's (dx, dw1, dw3, dw2), empty where not needed."""
    return [like.new_empty(rows, w1.shape[-1]) if needs[0] else like.new_empty(0),
            *(w.new_empty(w.shape) if need else like.new_empty(0) for w, need in zip((w1, w3, w2), needs[1:]))]


SWIGLU_SAVED = 5  # swiglu_forward's saved: xtq, xts, h, atq, ats
SWIGLU_OUTPUTS = tuple[(torch.Tensor,) * (1 + SWIGLU_SAVED + 6)]  # y, saved, dgrad_operands' six
SWIGLU_GRADS = tuple[(torch.Tensor,) * 4]  # dx, dw1, dw3, dw2


@torch.library.custom_op("seekflow::fp8_swiglu", mutates_args=())
def _swiglu_op(x2: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, backend: str, emulate: bool,
               needs: list[bool]) -> SWIGLU_OUTPUTS:
    """(y, xtq, xts, h, atq, ats, and the weights' dgrad operands): FP8SwiGLUFunction's forward and
    what its backward keeps."""
    ops = fp8_ops(emulate)
    y, saved, w8s = swiglu_forward(ops, dense_products(ops, backend), x2, w1, w3, w2, ops.weight_of, needs)
    return y, *(or_empty(t, x2) for t in saved), *dgrad_operands(w8s, swiglu_dgrad_needs(needs), x2)


@_swiglu_op.register_fake
def _(x2, w1, w3, w2, backend, emulate, needs):
    return (x2.new_empty(x2.shape[0], w2.shape[0]), *fake_swiglu_saved(x2, x2.shape[0], *w2.shape, needs),
            *fake_dgrad_operands(x2, swiglu_weights(w1, w3, w2), swiglu_dgrad_needs(needs)))


@torch.library.custom_op("seekflow::fp8_swiglu_backward", mutates_args=())
def _swiglu_backward_op(do2: torch.Tensor, saved: list[torch.Tensor], wt: list[torch.Tensor], w1: torch.Tensor,
                        w3: torch.Tensor, w2: torch.Tensor, backend: str, emulate: bool,
                        needs: list[bool]) -> SWIGLU_GRADS:
    ops = fp8_ops(emulate)
    grads = swiglu_backward(ops, dense_products(ops, backend), transposed_weights(wt), w1.dtype, needs,
                            [or_none(t) for t in saved], do2)
    return tuple(or_empty(g, do2) for g in grads)


@_swiglu_backward_op.register_fake
def _(do2, saved, wt, w1, w3, w2, backend, emulate, needs):
    return tuple(fake_swiglu_grads(do2, do2.shape[0], w1, w3, w2, needs))


def _swiglu_setup(ctx, inputs, output):
    _, w1, w3, w2, ctx.backend, ctx.emulate, ctx.needs = inputs
    ctx.save_for_backward(*output[1:], w1, w3, w2)


def _swiglu_grad(ctx, do2, *_):
    *rest, w1, w3, w2 = ctx.saved_tensors
    grads = _swiglu_backward_op(do2.contiguous(), rest[:SWIGLU_SAVED], rest[SWIGLU_SAVED:], w1, w3, w2, ctx.backend,
                                ctx.emulate, ctx.needs)
    return *(or_none(g) for g in grads), None, None, None


_swiglu_op.register_autograd(_swiglu_grad, setup_context=_swiglu_setup)
