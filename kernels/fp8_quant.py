"""Fine-grained FP8 quantization, as in the DeepSeek-V3 recipe (paper section 3.3.2).

What it computes. FP8 E4M3 holds values up to 448 with a 3-bit mantissa, far too little range for a
whole tensor, so each small group of values gets its own float32 scale `s = amax(|group|) / 448`
and is stored as `q = x / s` in FP8 (`x ~ q * s`):
  - activations: one scale per 1x128 tile, i.e. per row and per 128 consecutive columns
    (`act_quant`); x (M, K) -> q (M, K) fp8, s (M, ceil(K/128)) fp32;
  - weights: one scale per 128x128 block (`weight_quant`); w (N, K) -> q (N, K) fp8,
    s (ceil(N/128), ceil(K/128)) fp32.
An outlier then only costs precision inside its own tile, not the whole tensor. For the weight
gradient the recipe quantizes activations and output gradients along the token axis (128x1 tiles);
that is `act_quant(x.t())`: the kernel reads through strides, so no copy is made before it.

Why it exists. Dequantization is folded into the GEMM (`kernels/fp8_gemm.py`), which needs the
scales in exactly these layouts; torch has no op that produces them.

What it matches. `act_quant_ref` / `weight_quant_ref` below, in plain PyTorch, run on CPU and are the
definition; the Triton kernels reproduce them bit for bit up to the rounding of one division
(both divide with round-to-nearest). Shapes need not be multiples of 128: a ragged last tile gets a
scale from the values it has.
"""

from __future__ import annotations

import torch

from kernels._triton import HAS_TRITON, require_cuda, tl, triton, use_triton

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3 value
TILE = 128  # the recipe's tile / block edge
EPS = 1e-12  # amax floor: an all-zero tile gets a tiny scale, not 0/0


def _check_float(x: torch.Tensor, name: str) -> None:
    assert x.dim() == 2, f"{name}: expected a 2-D tensor (rows, cols), got shape {tuple(x.shape)}"
    assert x.is_floating_point() and x.dtype != FP8, f"{name}: expected float input, got {x.dtype}"
    assert x.numel() > 0, f"{name}: empty tensor {tuple(x.shape)}"


# ---------------------------------------------------------------------------------------------
# reference (CPU or GPU, pure PyTorch)


def act_quant_ref(x: torch.Tensor, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float -> q (M, K) fp8 e4m3, s (M, ceil(K/128)) fp32 with x ~ q * s per 1x128 tile.
    pad_to (dividing 128): q gets ceil(K/pad_to)*pad_to columns, the extra ones zero (scales unchanged)."""
    _check_float(x, "act_quant_ref")
    assert TILE % pad_to == 0, f"act_quant: pad_to must divide {TILE}, got {pad_to}"
    M, K = x.shape
    kt = cdiv(K, TILE)
    xp = torch.nn.functional.pad(x.float(), (0, kt * TILE - K)).view(M, kt, TILE)  # (M, kt, 128)
    amax = xp.abs().amax(dim=-1).clamp_min(EPS)  # (M, kt)
    s = amax / FP8_MAX
    q = (xp / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(M, kt * TILE)[:, :cdiv(K, pad_to) * pad_to].contiguous(), s


def weight_quant_ref(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> q (N, K) fp8 e4m3, s (ceil(N/128), ceil(K/128)) fp32, one per 128x128 block."""
    _check_float(w, "weight_quant_ref")
    N, K = w.shape
    nt, kt = cdiv(N, TILE), cdiv(K, TILE)
    wp = torch.nn.functional.pad(w.float(), (0, kt * TILE - K, 0, nt * TILE - N))
    wb = wp.view(nt, TILE, kt, TILE)  # (nt, 128, kt, 128)
    amax = wb.abs().amax(dim=(1, 3)).clamp_min(EPS)  # (nt, kt)
    s = amax / FP8_MAX
    q = (wb / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(nt * TILE, kt * TILE)[:N, :K].contiguous(), s


def act_dequant(q: torch.Tensor, s: torch.Tensor, group_rows: int = 1) -> torch.Tensor:
    """Inverse of the quantizers: q (R, C) fp8 with s (ceil(R/group_rows), ceil(C/128)) -> float32.

    group_rows=1 undoes act_quant (1x128 tiles), group_rows=128 undoes weight_quant (128x128 blocks).
    """
    R, C = q.shape
    assert s.shape == (cdiv(R, group_rows), cdiv(C, TILE)), (
        f"act_dequant: scales {tuple(s.shape)} do not fit q {tuple(q.shape)} with "
        f"{group_rows}x{TILE} groups")
    full = s.repeat_interleave(group_rows, 0)[:R].repeat_interleave(TILE, 1)[:, :C]
    return q.float() * full


def weight_dequant(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return act_dequant(q, s, group_rows=TILE)


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# ---------------------------------------------------------------------------------------------
# Triton kernels

if HAS_TRITON:

    @triton.jit
    def _act_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, K_OUT, stride_xm, stride_xk, stride_qm, stride_sm,
                          BLOCK_M: tl.constexpr, TILE_K: tl.constexpr):
        # one program: BLOCK_M rows x one 128-wide tile; x is read through strides (may be x.t());
        # columns K..K_OUT of q (padding) get zeros
        pid_m = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = pid_k * TILE_K + tl.arange(0, TILE_K)
        mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12)  # (BLOCK_M,)
        s = amax / 448.0
        q = tl.div_rn(x, s[:, None])
        q = tl.minimum(tl.maximum(q, -448.0), 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + offs_m[:, None] * stride_qm + offs_k[None, :], q,
                 mask=(offs_m[:, None] < M) & (offs_k[None, :] < K_OUT))
        tl.store(s_ptr + offs_m * stride_sm + pid_k, s, mask=offs_m < M)

    @triton.jit
    def _weight_quant_kernel(w_ptr, q_ptr, s_ptr, N, K, stride_wn, stride_wk, stride_qn,
                             stride_sn, TILE_: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * TILE_ + tl.arange(0, TILE_)
        offs_k = pid_k * TILE_ + tl.arange(0, TILE_)
        mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                    mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(w)), 1e-12)
        s = amax / 448.0
        q = tl.div_rn(w, s)
        q = tl.minimum(tl.maximum(q, -448.0), 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + offs_n[:, None] * stride_qn + offs_k[None, :], q, mask=mask)
        tl.store(s_ptr + pid_n * stride_sn + pid_k, s)


def act_quant_triton(x: torch.Tensor, block_m: int = 32, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of act_quant_ref; x may be a strided view (e.g. y.t() for 128x1 tiles)."""
    _check_float(x, "act_quant_triton")
    require_cuda(x, what="act_quant_triton")
    assert TILE % pad_to == 0, f"act_quant: pad_to must divide {TILE}, got {pad_to}"
    M, K = x.shape
    kt = cdiv(K, TILE)
    k_out = cdiv(K, pad_to) * pad_to
    q = torch.empty((M, k_out), dtype=FP8, device=x.device)
    s = torch.empty((M, kt), dtype=torch.float32, device=x.device)
    grid = (cdiv(M, block_m), kt)
    _act_quant_kernel[grid](x, q, s, M, K, k_out, x.stride(0), x.stride(1), q.stride(0), s.stride(0),
                            BLOCK_M=block_m, TILE_K=TILE, num_warps=4)
    return q, s


def weight_quant_triton(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_float(w, "weight_quant_triton")
    require_cuda(w, what="weight_quant_triton")
    N, K = w.shape
    nt, kt = cdiv(N, TILE), cdiv(K, TILE)
    q = torch.empty((N, K), dtype=FP8, device=w.device)
    s = torch.empty((nt, kt), dtype=torch.float32, device=w.device)
    _weight_quant_kernel[(nt, kt)](w, q, s, N, K, w.stride(0), w.stride(1), q.stride(0),
                                   s.stride(0), TILE_=TILE, num_warps=8)
    return q, s


# ---------------------------------------------------------------------------------------------
# dispatch: Triton on CUDA, the reference elsewhere (the CPU emulation path)


def act_quant(x: torch.Tensor, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return act_quant_triton(x, pad_to=pad_to) if use_triton(x) else act_quant_ref(x, pad_to=pad_to)


def weight_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return weight_quant_triton(w) if use_triton(w) else weight_quant_ref(w)
