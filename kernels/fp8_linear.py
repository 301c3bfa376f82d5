"""FP8 linear layer: y = x @ w^T + b with all three GEMMs in FP8, the DeepSeek-V3 recipe.

What it computes. Forward: x is quantized per 1x128 tile, w per 128x128 block, and the FP8 GEMM
accumulates in FP32 (kernels/fp8_gemm.py). Backward: dgrad dx = dy @ w reuses the FP8 weight
(transposed: 128x128 blocks transpose into 128x128 blocks) with dy quantized per 1x128 tile; wgrad
dw = dy^T @ x quantizes dy and x along the token axis (128x1 tiles), as the paper does, and returns
dw in FP32 before casting to the weight's dtype. The master weight stays in whatever precision the
module holds (DeepSpeed keeps its own FP32 master copy and optimizer state); FP8 lives only inside
the function.

Why it exists. FP8 doubles the tensor-core rate over bf16 on Hopper; the fine-grained scales keep
the loss within the paper's 0.25% of BF16.

What it matches. `emulate=True` (and any CPU tensor) runs the same quantize -> dequantize -> matmul
numerics in plain PyTorch, so CI on a CPU checks the FP8 path's gradients against float64 ones.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.fp8_gemm import fp8_gemm, fp8_gemm_ref
from kernels.fp8_quant import TILE, act_quant, act_quant_ref, weight_quant, weight_quant_ref


def _ops(emulate: bool):
    if emulate:
        return act_quant_ref, weight_quant_ref, (lambda *a, **k: fp8_gemm_ref(*a, **{kk: v for kk, v in k.items() if kk != "backend"}))
    return act_quant, weight_quant, fp8_gemm


class FP8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, backend: str = "auto", emulate: bool = False):
        aq, wq_fn, gemm = _ops(emulate)
        K = x.shape[-1]
        N = weight.shape[0]
        assert weight.shape[1] == K, f"FP8Linear: input has {K} features, weight is {tuple(weight.shape)}"
        x2 = x.reshape(-1, K)  # (M, K), M = all leading dims
        xq, xs = aq(x2)
        wq, ws = wq_fn(weight)
        y = gemm(xq, xs, wq, ws, TILE, out_dtype=x.dtype, backend=backend)  # (M, N)
        if bias is not None:
            y = y + bias.to(y.dtype)
        # NOTE: x is kept in its own precision for wgrad (the paper caches it in FP8; a later step)
        ctx.save_for_backward(x2, wq, ws)
        ctx.meta = (x.shape, weight.dtype, bias is not None, backend, emulate)
        return y.view(*x.shape[:-1], N)

    @staticmethod
    def backward(ctx, dy):
        x2, wq, ws = ctx.saved_tensors
        x_shape, w_dtype, has_bias, backend, emulate = ctx.meta
        aq, _, gemm = _ops(emulate)
        N = wq.shape[0]
        dy2 = dy.reshape(-1, N)  # (M, N)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dyq, dys = aq(dy2)  # 1x128 tiles along N, the reduction axis of dgrad
            dx = gemm(dyq, dys, wq.t().contiguous(), ws.t().contiguous(), TILE,
                      out_dtype=dy.dtype, backend=backend).view(x_shape)  # (M, K)
        if ctx.needs_input_grad[1]:
            # (N, Mp), (K, Mp): 128x1 tiles of dy and x along tokens, Mp = M padded with zero columns
            # to a multiple of 128. NOTE: without the padding, a token count like the MTP block's
            # 8 x 2047 = 16376 left 16-byte-misaligned rows that neither cuBLAS nor the TMA kernel
            # takes, and the pointer kernel ran this product at ~30 TFLOP/s (2026-11-30, H200: 113 of
            # the FP8 step's 476 ms of kernels at 4x the small width)
            dytq, dyts = aq(dy2.t(), pad_to=TILE)
            xtq, xts = aq(x2.t(), pad_to=TILE)
            dw = gemm(dytq, dyts, xtq, xts, 1, out_dtype=torch.float32,
                      backend=backend).to(w_dtype)  # (N, K)
        if has_bias and ctx.needs_input_grad[2]:
            db = dy2.float().sum(0).to(w_dtype)
        return dx, dw, db, None, None


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
        return FP8LinearFunction.apply(x, self.weight, self.bias, self.backend, emulate)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fp8=({'emulated' if self.emulate else self.backend})"
