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

Both layouts in one pass. A linear's training step needs x and dy in BOTH layouts: 1x128 along the
features (forward, dgrad) and 128x1 along the tokens (wgrad), and its weight both as w (forward) and
as w^T (dgrad). `act_quant_dual` and `weight_quant_dual` read the input once and write both layouts
(the second layout from a transposed-order read of the same tile, served by the cache), instead of
a second read of the input from device memory or a transpose kernel on the FP8 copy. Their
references are the single-layout references applied twice (`*_dual_ref`). Measured on the H200: the
weight kernel is 2.9x faster than quantize + transpose; the activation's sweep kernel (one program a
128x128 tile) is slower than the two single-layout kernels except on narrow inputs, so
`act_quant_dual` picks per layout among it, the strip kernel (the same reads as one program a strip,
the programs of a tile side by side) and the two passes.

Why it exists. Dequantization is folded into the GEMM (`kernels/fp8_gemm.py`), which needs the
scales in exactly these layouts; torch has no op that produces them.

What it matches. `act_quant_ref` / `weight_quant_ref` below, in plain PyTorch, run on CPU and are the
definition; the Triton kernels reproduce them bit for bit up to the rounding of one division
(both divide with round-to-nearest). Shapes need not be multiples of 128: a ragged last tile gets a
scale from the values it has.
"""

from __future__ import annotations

import functools

import torch

from kernels._triton import HAS_TRITON, require_cuda, tl, triton, use_triton
from kernels.autoselect import Choice, choose, tensor_key

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3 value
TILE = 128  # the recipe's tile / block edge
EPS = 1e-12  # amax floor: an all-zero tile gets a tiny scale, not 0/0
DUAL_WARPS = 8  # the dual weight kernel: one 128x128 fp32 block a program (sass_check.py quant)
DUAL_CHUNK = 32  # the dual activation kernel's strips: 32 x 128 values on 4 warps, 32 a thread


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


def act_quant_dual_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, K) -> q (M, K), s (M, ceil(K/128)) in 1x128 tiles along K, and qt (K, Mp), st (K, ceil(M/128))
    in 1x128 tiles of x^T (128x1 tiles of x along the tokens), Mp = M padded to a multiple of 128 with
    zero columns: what the forward / dgrad and the wgrad of a linear need."""
    q, s = act_quant_ref(x)
    qt, st = act_quant_ref(x.t(), pad_to=TILE)
    return q, s, qt, st


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in the activations' dtype: SwiGLU's product, as the eager model computes it."""
    return torch.nn.functional.silu(gate) * up


def swiglu_grad(dact: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d gate, d up) of swiglu(gate, up) for the gradient dact, computed as autograd computes them on
    the eager product (the same ops, the same roundings)."""
    return torch.ops.aten.silu_backward(dact * up, gate), dact * torch.nn.functional.silu(gate)


def swiglu_quant_dual_ref(gate: torch.Tensor, up: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """act_quant_dual_ref of swiglu(gate, up): the FP8 input of an expert's down projection, both layouts."""
    return act_quant_dual_ref(swiglu(gate, up))


def swiglu_grad_quant_dual_ref(dact: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                               stacked: bool = False) -> tuple:
    """act_quant_dual_ref of each of swiglu_grad's two gradients: the FP8 operands of the gate and up
    projections' dgrad and wgrad. stacked: of [d gate | d up] (M, 2I) instead, one 4-tuple (the
    operands of a stacked [w1; w3]: kernels/fp8_linear.py gate_up_stacked); I a multiple of 128, so
    every tile is one gradient's own and the values are the same."""
    grads = swiglu_grad(dact, gate, up)
    if stacked:
        _check_stackable(dact)
        return act_quant_dual_ref(torch.cat(grads, dim=1))
    return tuple(act_quant_dual_ref(g) for g in grads)


def _check_stackable(dact: torch.Tensor) -> None:
    if dact.shape[1] % TILE:
        raise ValueError(f"swiglu_grad_quant_dual(stacked=True): the width must be a multiple of {TILE} so that "
                         f"no tile straddles the two gradients; got {tuple(dact.shape)}")


def weight_quant_dual_ref(w: torch.Tensor | tuple[torch.Tensor, ...]
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) or stacked (E, N, K), or a tuple of them stacked along N (`stacked_rows`)
    -> q, s as weight_quant_ref (per matrix), and the transposed layout
    qt (.., K, N) = q^T, st (.., ceil(K/128), ceil(N/128)) = s^T: 128x128 blocks transpose with the
    matrix, so w^T's quantization is q^T with the same scales (the dgrad's operand)."""
    if isinstance(w, tuple):  # stacked along N (see stacked_rows): blocks never straddle two weights
        w = torch.cat(stacked_rows(w, "weight_quant_dual_ref"), dim=-2)
    assert w.dim() in (2, 3), f"weight_quant_dual_ref: expected (N, K) or (E, N, K), got {tuple(w.shape)}"
    if w.dim() == 2:
        q, s = weight_quant_ref(w)
    else:
        qs = [weight_quant_ref(w[e]) for e in range(w.shape[0])]
        q, s = torch.stack([a for a, _ in qs]), torch.stack([b for _, b in qs])
    return q, s, q.transpose(-1, -2).contiguous(), s.transpose(-1, -2).contiguous()


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
    def _load_tile(ptr, offs_r, offs_c, R, C, stride_r, stride_c):
        """A (len(offs_r), len(offs_c)) tile of a strided matrix in fp32, zeros outside (R, C)."""
        mask = (offs_r[:, None] < R) & (offs_c[None, :] < C)
        return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _to_fp8(x, s):
        """x / s rounded to nearest, clamped to E4M3's finite range, for ONE scale s (a weight block).
        NOTE: the activation kernels write this inline: with a per-row scale vector passed in, ptxas
        (sm_90) gave the 32x128 kernel 148 registers instead of 80 and the dual one 280 bytes of stack
        instead of 48 (benchmarks/sass_check.py quant)."""
        return tl.minimum(tl.maximum(tl.div_rn(x, s), -448.0), 448.0).to(tl.float8e4nv)

    @triton.jit
    def _act_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, K_OUT, stride_xm, stride_xk, stride_qm, stride_sm,
                          BLOCK_M: tl.constexpr, TILE_K: tl.constexpr):
        # one program: BLOCK_M rows x one 128-wide tile; x is read through strides (may be x.t());
        # columns K..K_OUT of q (padding) get zeros
        pid_m = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = pid_k * TILE_K + tl.arange(0, TILE_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0).to(tl.float32)
        s = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / 448.0  # (BLOCK_M,)
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
        w = _load_tile(w_ptr, offs_n, offs_k, N, K, stride_wn, stride_wk)
        s = tl.maximum(tl.max(tl.abs(w)), 1e-12) / 448.0
        tl.store(q_ptr + offs_n[:, None] * stride_qn + offs_k[None, :], _to_fp8(w, s),
                 mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))
        tl.store(s_ptr + pid_n * stride_sn + pid_k, s)

    @triton.jit
    def _silu_parts(g):
        """silu(g) and sigmoid(g) in fp32, as PyTorch's CUDA kernels compute them."""
        e = tl.exp(-g)
        return g / (1.0 + e), 1.0 / (1.0 + e)

    @triton.jit
    def _load_act(x_ptr, b_ptr, c_ptr, offs_a, offs_b, stride_a, stride_b, bc_stride_a, bc_stride_b, mask,
                  PROLOGUE: tl.constexpr):
        """A strip of the tensor to quantize, in fp32, made from up to three inputs of one shape, b and c
        with strides of their own (rounded to the inputs' dtype wherever the eager ops round):
          PROLOGUE 0: x itself;
          1: silu(x) * b            (x the gate, b the up activation: SwiGLU's product);
          2: silu_backward(x * b, c)  (x the product's gradient, b up, c the gate: the gate's gradient);
          3: x * silu(c)            (x the product's gradient, c the gate: the up activation's gradient)."""
        offs = offs_a[:, None] * stride_a + offs_b[None, :] * stride_b
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        offs = offs_a[:, None] * bc_stride_a + offs_b[None, :] * bc_stride_b  # b and c's
        dt = x_ptr.dtype.element_ty
        if PROLOGUE == 1:
            up = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            act, _ = _silu_parts(x)
            x = (act.to(dt).to(tl.float32) * up).to(dt).to(tl.float32)
        elif PROLOGUE == 2:
            up = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            _, sig = _silu_parts(g)
            dact = (x * up).to(dt).to(tl.float32)
            x = (dact * sig * (1.0 + g * (1.0 - sig))).to(dt).to(tl.float32)
        elif PROLOGUE == 3:
            g = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            act, _ = _silu_parts(g)
            x = (x * act.to(dt).to(tl.float32)).to(dt).to(tl.float32)
        return x

    @triton.jit
    def _quant_strip(x_ptr, b_ptr, c_ptr, q_ptr, s_ptr, offs_a, offs_b, A, B, B_OUT, stride_a, stride_b, bc_stride_a,
                     bc_stride_b, stride_q, stride_s, s_col, PROLOGUE: tl.constexpr):
        """Rows offs_a x columns offs_b (one 128-wide tile) of the strided (A, B) tensor that _load_act
        makes -> q rows in 1x128 tiles (columns B..B_OUT are padding: zeros) and one scale per row,
        stored at column s_col of s. Both dual kernels' sweeps: along K on x, along M on x^T."""
        x = _load_act(x_ptr, b_ptr, c_ptr, offs_a, offs_b, stride_a, stride_b, bc_stride_a, bc_stride_b,
                      (offs_a[:, None] < A) & (offs_b[None, :] < B), PROLOGUE)
        s = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / 448.0  # one per row
        q = tl.minimum(tl.maximum(tl.div_rn(x, s[:, None]), -448.0), 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + offs_a[:, None] * stride_q + offs_b[None, :], q,
                 mask=(offs_a[:, None] < A) & (offs_b[None, :] < B_OUT))
        tl.store(s_ptr + offs_a * stride_s + s_col, s, mask=offs_a < A)

    @triton.jit
    def _act_quant_dual_kernel(x_ptr, b_ptr, c_ptr, q_ptr, s_ptr, qt_ptr, st_ptr, M, K, MP, stride_xm, stride_xk,
                               stride_bm, stride_bk, stride_qm, stride_sm, stride_qtk, stride_stk, TILE_: tl.constexpr,
                               CHUNK: tl.constexpr, PROLOGUE: tl.constexpr):
        # one program: one 128x128 tile of x, in two sweeps of CHUNK-wide strips. Sweep 1, strips of
        # CHUNK rows: row scales (amax over the tile's 128 columns) give q / s (1x128 along K). Sweep 2,
        # strips of CHUNK columns over all 128 rows: column scales give qt / st (1x128 along M of x^T),
        # stored transposed. The second sweep reads the tile this program has just read (L1/L2), so
        # device memory sees one read of x. Rows M..MP are zeros: qt's padding columns.
        # NOTE: a first version held the whole 128x128 tile in registers (16 warps, one program per
        # SM): 1,000 GB/s on H200, slower than the two single-layout passes together (2026-11-30).
        # NOTE: no tl.trans (see the weight kernel): sweep 2 reads its strips in transposed order
        # PROLOGUE (see _load_act): the quantized tensor is made from x, b and c as it is read (SwiGLU's
        # product, or its gradients), instead of in elementwise passes that write it to memory and a
        # quantization pass that reads it back
        pid_m = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_k = pid_k * TILE_ + tl.arange(0, TILE_)
        for r0 in tl.static_range(0, TILE_, CHUNK):
            offs_m = pid_m * TILE_ + r0 + tl.arange(0, CHUNK)
            _quant_strip(x_ptr, b_ptr, c_ptr, q_ptr, s_ptr, offs_m, offs_k, M, K, K, stride_xm, stride_xk, stride_bm,
                         stride_bk, stride_qm, stride_sm, pid_k, PROLOGUE)
        offs_m = pid_m * TILE_ + tl.arange(0, TILE_)
        for c0 in tl.static_range(0, TILE_, CHUNK):
            # (CHUNK columns, 128 rows) read in transposed order: x^T's rows come out contiguous along m
            offs_c = pid_k * TILE_ + c0 + tl.arange(0, CHUNK)
            _quant_strip(x_ptr, b_ptr, c_ptr, qt_ptr, st_ptr, offs_c, offs_m, K, M, MP, stride_xk, stride_xm,
                         stride_bk, stride_bm, stride_qtk, stride_stk, pid_m, PROLOGUE)

    @triton.jit
    def _act_quant_strips_kernel(x_ptr, b_ptr, c_ptr, q_ptr, s_ptr, qt_ptr, st_ptr, M, K, MP, stride_xm, stride_xk,
                                 stride_bm, stride_bk, stride_qm, stride_sm, stride_qtk, stride_stk, TILE_: tl.constexpr,
                                 CHUNK: tl.constexpr, PROLOGUE: tl.constexpr):
        # _act_quant_dual_kernel's two sweeps as separate programs, 2 x 128/CHUNK per 128x128 tile,
        # adjacent in launch order (axis 0 runs fastest): the first half take CHUNK-row strips (q, s
        # along K), the second half CHUNK-column strips read in transposed order (qt, st). They run
        # at the same time, so the tile's later reads can come from L2, and a program holds one strip:
        # 118 registers for sm_90, against the sweep kernel's 174 (sass_check.py quant), so more
        # programs share an SM. Measured (H100, 2026-12-06): 1.2-2.5x the two single-layout passes
        # in isolation, but only ~3% on the `small` step's activation quantization (BENCHMARKS.md)
        STRIPS = TILE_ // CHUNK
        pid_m = tl.program_id(0) // (2 * STRIPS)
        strip = tl.program_id(0) % (2 * STRIPS)
        pid_k = tl.program_id(1)
        if strip < STRIPS:
            offs_m = pid_m * TILE_ + strip * CHUNK + tl.arange(0, CHUNK)
            _quant_strip(x_ptr, b_ptr, c_ptr, q_ptr, s_ptr, offs_m, pid_k * TILE_ + tl.arange(0, TILE_), M, K, K,
                         stride_xm, stride_xk, stride_bm, stride_bk, stride_qm, stride_sm, pid_k, PROLOGUE)
        else:
            offs_c = pid_k * TILE_ + (strip - STRIPS) * CHUNK + tl.arange(0, CHUNK)
            _quant_strip(x_ptr, b_ptr, c_ptr, qt_ptr, st_ptr, offs_c, pid_m * TILE_ + tl.arange(0, TILE_), K, M, MP,
                         stride_xk, stride_xm, stride_bk, stride_bm, stride_qtk, stride_stk, pid_m, PROLOGUE)

    @triton.jit
    def _weight_quant_dual_kernel(w_ptr, q_ptr, s_ptr, qt_ptr, st_ptr, N, K, stride_we, stride_wn, stride_wk,
                                  NT, KT, N_OUT, NT_OUT, ROW_TILE0, TILE_: tl.constexpr):
        # two programs per 128x128 block of matrix e, side by side in launch order (the second read
        # of the block comes from L2): the even one writes the block to q (E, N_OUT, K) and its scale to
        # s (E, NT_OUT, KT), the odd one reads it in transposed order and writes qt (E, K, N_OUT),
        # st (E, KT, NT_OUT). w's rows land at rows ROW_TILE0 * 128.. of the outputs (a weight stacked
        # with others along N: `weight_quant_dual_triton`'s tuple form; else 0, N_OUT = N).
        # NOTE: no tl.trans of an FP8 tile: on the H200 (Triton 3.6) a transposed FP8 store from one
        # program holding the block came out wrong for fp32 inputs and left bytes unwritten (NaN in
        # the FP8 experts' dgrad), while the interpreter got it right; reading the block twice in one
        # program instead spilled (255 registers + 568 bytes of stack on 8 warps)
        pid_n = tl.program_id(0) // 2
        transposed = tl.program_id(0) % 2
        pid_k = tl.program_id(1)
        e = tl.program_id(2).to(tl.int64)
        offs_n = pid_n * TILE_ + tl.arange(0, TILE_)
        offs_k = pid_k * TILE_ + tl.arange(0, TILE_)
        out_n = ROW_TILE0 * TILE_ + offs_n  # the rows' place in the outputs
        if transposed == 0:
            w = _load_tile(w_ptr + e * stride_we, offs_n, offs_k, N, K, stride_wn, stride_wk)  # (n, k)
            s = tl.maximum(tl.max(tl.abs(w)), 1e-12) / 448.0
            tl.store(q_ptr + e * N_OUT * K + out_n[:, None] * K + offs_k[None, :], _to_fp8(w, s),
                     mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))
            tl.store(s_ptr + e * NT_OUT * KT + (ROW_TILE0 + pid_n) * KT + pid_k, s)
        else:
            wt = _load_tile(w_ptr + e * stride_we, offs_k, offs_n, K, N, stride_wk, stride_wn)  # (k, n)
            s = tl.maximum(tl.max(tl.abs(wt)), 1e-12) / 448.0
            tl.store(qt_ptr + e * N_OUT * K + offs_k[:, None] * N_OUT + out_n[None, :], _to_fp8(wt, s),
                     mask=(offs_k[:, None] < K) & (offs_n[None, :] < N))
            tl.store(st_ptr + e * KT * NT_OUT + pid_k * NT_OUT + ROW_TILE0 + pid_n, s)


def _outputs(device, q_shape: tuple, s_shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty FP8 values and fp32 scales (every element is written by the kernel)."""
    return (torch.empty(q_shape, dtype=FP8, device=device), torch.empty(s_shape, dtype=torch.float32, device=device))


DUAL_KERNELS = ("sweeps", "strips")  # _act_quant_dual_kernel, _act_quant_strips_kernel: the same outputs


def act_quant_dual_triton(x: torch.Tensor, kernel: str = "sweeps"
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton version of act_quant_dual_ref: one read of x (any strides), both layouts written."""
    return _act_quant_dual_launch(0, x, kernel=kernel)


def swiglu_quant_dual_triton(gate: torch.Tensor, up: torch.Tensor, kernel: str = "sweeps"
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton version of swiglu_quant_dual_ref: one read of gate and up, the product never in memory."""
    return _act_quant_dual_launch(1, gate, up, kernel=kernel)


def swiglu_grad_quant_dual_triton(dact: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                                  kernel: str = "sweeps", stacked: bool = False) -> tuple:
    """Triton version of swiglu_grad_quant_dual_ref: the two gradients never in memory (a launch each).
    stacked: each launch writes its half of the shared outputs (no copy to put them side by side)."""
    halves = (None, None)
    if stacked:
        _check_stackable(dact)
        (M, inter), mt = dact.shape, cdiv(dact.shape[0], TILE)
        q, s = _outputs(dact.device, (M, 2 * inter), (M, 2 * inter // TILE))
        qt, st = _outputs(dact.device, (2 * inter, mt * TILE), (2 * inter, mt))
        halves = [(q[:, lo:lo + inter], s[:, lo // TILE:(lo + inter) // TILE], qt[lo:lo + inter], st[lo:lo + inter])
                  for lo in (0, inter)]
    grads = (_act_quant_dual_launch(2, dact, up, gate, kernel=kernel, out=halves[0]),
             _act_quant_dual_launch(3, dact, gate, gate, kernel=kernel, out=halves[1]))  # b unused: c is the gate
    return (q, s, qt, st) if stacked else grads


def _act_quant_dual_launch(prologue: int, x: torch.Tensor, *more: torch.Tensor, kernel: str = "sweeps", out=None):
    """The dual activation kernel on x, or on what its prologue makes of x and `more` (see _load_act).
    kernel: one of DUAL_KERNELS. out: (q, s, qt, st) to write into (views with unit column strides,
    e.g. one half of a stacked output), else new tensors."""
    assert kernel in DUAL_KERNELS, f"act_quant_dual: kernel must be one of {DUAL_KERNELS}, got {kernel!r}"
    what = ("act_quant_dual", "swiglu_quant_dual", "swiglu_grad_quant_dual", "swiglu_grad_quant_dual")[prologue]
    _check_float(x, what)
    require_cuda(x, what=what)
    for t in more:  # NOTE: x may have strides of its own (a GEMM's output beside views of [h1 | h3])
        if t.shape != x.shape or t.stride() != more[0].stride() or t.dtype != x.dtype:
            raise ValueError(f"{what}: its inputs must share shape and dtype, and all but the first their strides; "
                             f"got {[(tuple(t.shape), t.stride(), t.dtype) for t in (x, *more)]}")
    b, c = (list(more) + [x, x])[:2]
    M, K = x.shape
    mt, kt = cdiv(M, TILE), cdiv(K, TILE)
    if out is None:
        q, s = _outputs(x.device, (M, K), (M, kt))
        qt, st = _outputs(x.device, (K, mt * TILE), (K, mt))
    else:
        q, s, qt, st = out
        assert (q.shape, s.shape, qt.shape, st.shape) == ((M, K), (M, kt), (K, mt * TILE), (K, mt)) and all(
            t.stride(1) == 1 for t in out), f"{what}: out has the wrong shapes or strides"
    grid, fn = ((mt, kt), _act_quant_dual_kernel) if kernel == "sweeps" else (
        (mt * 2 * (TILE // DUAL_CHUNK), kt), _act_quant_strips_kernel)
    fn[grid](x, b, c, q, s, qt, st, M, K, mt * TILE, x.stride(0), x.stride(1), b.stride(0), b.stride(1), q.stride(0),
             s.stride(0), qt.stride(0), st.stride(0), TILE_=TILE, CHUNK=DUAL_CHUNK, PROLOGUE=prologue, num_warps=4)
    return q, s, qt, st


def weight_quant_dual_triton(w: torch.Tensor | tuple[torch.Tensor, ...]
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton version of weight_quant_dual_ref, (N, K) or stacked (E, N, K), or a tuple of such weights
    stacked along N: a launch per weight, each writing its rows of the shared outputs (no copy of the
    stacked weight is made)."""
    ws = stacked_rows(w, "weight_quant_dual_triton")
    for t in ws:
        _check_float(t.reshape(-1, t.shape[-1]), "weight_quant_dual_triton")
        require_cuda(t, what="weight_quant_dual_triton")
    *lead, _, K = ws[0].shape
    E, n_out = (lead or [1])[0], sum(t.shape[-2] for t in ws)
    nt_out, kt = cdiv(n_out, TILE), cdiv(K, TILE)
    q, s = _outputs(ws[0].device, (E, n_out, K), (E, nt_out, kt))
    qt, st = _outputs(ws[0].device, (E, K, n_out), (E, kt, nt_out))
    row_tile = 0
    for t in ws:
        w3 = t if t.dim() == 3 else t[None]
        N, nt = w3.shape[1], cdiv(w3.shape[1], TILE)
        _weight_quant_dual_kernel[(2 * nt, kt, E)](w3, q, s, qt, st, N, K, w3.stride(0), w3.stride(1), w3.stride(2),
                                               nt, kt, n_out, nt_out, row_tile, TILE_=TILE, num_warps=DUAL_WARPS)
        row_tile += nt
    if not lead:
        return q[0], s[0], qt[0], st[0]
    return q, s, qt, st


def stacked_rows(w: torch.Tensor | tuple[torch.Tensor, ...], what: str) -> tuple[torch.Tensor, ...]:
    """The weights a weight quantizer stacks along N (rows): w itself, or each of a tuple, which must
    agree on every dimension but N, with every N but the last a multiple of 128 (no 128x128 block may
    straddle two of them: then the stack's blocks are each weight's own). A SwiGLU's gate and up
    projections are quantized as one [w1; w3] this way (kernels/fp8_linear.py)."""
    ws = w if isinstance(w, tuple) else (w,)
    for t in ws:
        if t.dim() not in (2, 3):
            raise ValueError(f"{what}: expected weights (N, K) or (E, N, K), got {tuple(t.shape)}")
    if len({(t.shape[:-2], t.shape[-1], t.dtype) for t in ws}) != 1 or any(t.shape[-2] % TILE for t in ws[:-1]):
        raise ValueError(f"{what}: weights stacked along N must agree on every other dimension and dtype, with "
                         f"each N but the last a multiple of {TILE}; got {[tuple(t.shape) for t in ws]}")
    return ws


def act_quant_triton(x: torch.Tensor, block_m: int = 32, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of act_quant_ref; x may be a strided view (e.g. y.t() for 128x1 tiles)."""
    _check_float(x, "act_quant_triton")
    require_cuda(x, what="act_quant_triton")
    assert TILE % pad_to == 0, f"act_quant: pad_to must divide {TILE}, got {pad_to}"
    M, K = x.shape
    kt = cdiv(K, TILE)
    k_out = cdiv(K, pad_to) * pad_to
    q, s = _outputs(x.device, (M, k_out), (M, kt))
    grid = (cdiv(M, block_m), kt)
    _act_quant_kernel[grid](x, q, s, M, K, k_out, x.stride(0), x.stride(1), q.stride(0), s.stride(0),
                            BLOCK_M=block_m, TILE_K=TILE, num_warps=4)
    return q, s


def weight_quant_triton(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_float(w, "weight_quant_triton")
    require_cuda(w, what="weight_quant_triton")
    N, K = w.shape
    nt, kt = cdiv(N, TILE), cdiv(K, TILE)
    q, s = _outputs(w.device, (N, K), (nt, kt))
    _weight_quant_kernel[(nt, kt)](w, q, s, N, K, w.stride(0), w.stride(1), q.stride(0),
                                   s.stride(0), TILE_=TILE, num_warps=8)
    return q, s


# ---------------------------------------------------------------------------------------------
# dispatch: Triton on CUDA, the reference elsewhere (the CPU emulation path)


def act_quant(x: torch.Tensor, pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return act_quant_triton(x, pad_to=pad_to) if use_triton(x) else act_quant_ref(x, pad_to=pad_to)


def weight_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return weight_quant_triton(w) if use_triton(w) else weight_quant_ref(w)


def act_quant_two_pass_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """act_quant_dual_ref's four outputs from the two single-layout kernels (x read twice)."""
    return (*act_quant_triton(x), *act_quant_triton(x.t(), pad_to=TILE))


_DUAL_CACHE: dict[tuple, Choice] = {}  # layout key -> Choice (kernels/autoselect.py)


def dual_choices() -> list[dict]:
    """What `act_quant_dual` and the SwiGLU quantizations chose per layout, with the medians they measured."""
    return [{"key": str(k), "impl": c.name, "median_ms": c.median_ms, "refused": c.refused, "how": c.how}
            for k, c in (*_DUAL_CACHE.items(), *_SWIGLU_CACHE.items())]


def act_quant_dual(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both layouts of x. On the GPU, per layout (shape, strides, dtype), the faster of the one-read
    dual kernel and the two single-layout kernels, measured once (kernels/autoselect.py); both must
    agree with the reference. The reference on CPU."""
    if not use_triton(x):
        return act_quant_dual_ref(x)
    key = ("act_quant_dual",) + tensor_key(x)
    if key not in _DUAL_CACHE:
        # NOTE: measured on a random tensor of x's layout, not on x: x may hold rows nothing wrote
        # (the MoE's padded tail), whose NaNs made every candidate "disagree" with the reference
        probe = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).normal_()
        ref = [act_dequant(q, sc) for q, sc in _pairs(act_quant_dual_ref(probe))]

        def error_of(out):
            return max(((act_dequant(q, sc) - r).norm() / r.norm().clamp_min(1e-30)).item()
                       for (q, sc), r in zip(_pairs(out), ref))

        choose(key, {name: lambda f=f: f(probe) for name, f in _DUAL_IMPLS.items()}, error_of, _DUAL_CACHE,
               what=f"act_quant_dual {tuple(x.shape)}")
    return _DUAL_IMPLS.get(_DUAL_CACHE[key].name, act_quant_dual_ref)(x)


# act_quant_dual's candidates: the one-read kernels ("dual" is the sweep kernel, its first name) and
# the two single-layout passes
_DUAL_IMPLS = {"dual": act_quant_dual_triton, "strips": lambda x: act_quant_dual_triton(x, kernel="strips"),
               "two_pass": act_quant_two_pass_triton}


_SWIGLU_CACHE: dict[tuple, Choice] = {}  # (which, layout) key -> Choice


def swiglu_quant_dual(gate: torch.Tensor, up: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both FP8 layouts of swiglu(gate, up); see `_fused_or_not`."""
    if not use_triton(gate):
        return swiglu_quant_dual_ref(gate, up)
    impl = _fused_or_not("swiglu_quant_dual", (gate, up), swiglu_quant_dual_triton,
                         lambda g, u: act_quant_dual(swiglu(g, u)), swiglu_quant_dual_ref)
    return impl(gate, up)


def swiglu_grad_quant_dual(dact: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, stacked: bool = False) -> tuple:
    """Both FP8 layouts of each of swiglu_grad's gradients (d gate, d up), or of [d gate | d up] when
    stacked (see swiglu_grad_quant_dual_ref); see `_fused_or_not`."""
    if not use_triton(dact):
        return swiglu_grad_quant_dual_ref(dact, gate, up, stacked=stacked)
    impl = _fused_or_not("swiglu_grad_quant_dual" + (" stacked" if stacked else ""), (dact, gate, up),
                         *(functools.partial(f, stacked=stacked) for f in (
                             swiglu_grad_quant_dual_triton, _swiglu_grad_unfused, swiglu_grad_quant_dual_ref)))
    return impl(dact, gate, up)


def _swiglu_grad_unfused(dact: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, stacked: bool = False) -> tuple:
    """The eager gradients, then `act_quant_dual` of each, or of [d gate | d up] when stacked."""
    grads = swiglu_grad(dact, gate, up)
    return act_quant_dual(torch.cat(grads, dim=1)) if stacked else tuple(act_quant_dual(g) for g in grads)


def _fused_or_not(name: str, inputs: tuple, fused, unfused, reference):
    """Per layout, the fastest of the fused kernels (the prologue makes the tensor as it is read; the
    sweep or the strip kernel) and the eager ops followed by `act_quant_dual`, measured once
    (kernels/autoselect.py); each must agree with the reference. Returns the chosen function of `inputs`."""
    key = (name,) + tensor_key(*inputs)  # every input's strides: h1, h3 may be views of [h1 | h3]
    impls = {"fused": fused, "fused_strips": functools.partial(fused, kernel="strips"), "unfused": unfused}
    if key not in _SWIGLU_CACHE:
        # NOTE: random probes of the layout, as in act_quant_dual: the padded expert rows hold garbage
        probes = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).normal_() for t in inputs]
        ref = [act_dequant(q, sc) for q, sc in _quantized_pairs(reference(*probes))]

        def error_of(out):
            return max(((act_dequant(q, sc) - r).norm() / r.norm().clamp_min(1e-30)).item()
                       for (q, sc), r in zip(_quantized_pairs(out), ref))

        choose(key, {n: lambda f=f: f(*probes) for n, f in impls.items()}, error_of, _SWIGLU_CACHE,
               what=f"{name} {tuple(inputs[0].shape)}")
    return impls.get(_SWIGLU_CACHE[key].name, reference)


def _quantized_pairs(out) -> list:
    """(values, scales) pairs of one dual quantization's four outputs, or of several of them."""
    return [pair for dual in (out if isinstance(out[0], tuple) else (out,)) for pair in _pairs(dual)]


def _pairs(out):
    q, s, qt, st = out
    return (q, s), (qt, st)


def weight_quant_dual(w: torch.Tensor | tuple[torch.Tensor, ...]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return weight_quant_dual_triton(w) if use_triton(w if torch.is_tensor(w) else w[0]) else weight_quant_dual_ref(w)
