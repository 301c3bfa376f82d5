"""FP8 blockwise GEMM in Gluon, warp-specialized: a loader warp and two MMA warpgroups on 128x256 tiles.

What it computes. The same product as kernels/fp8_gemm.py, C = (A * sa) @ (B * sb)^T, A and B FP8
E4M3, K-contiguous, sa one float32 scale per 1x128 tile of A, sb one per 128x128 block of B: the
forward and the input-gradient (dgrad) layouts, dense or as the experts' grouped GEMM, with a bf16
or fp16 result; and the dense weight-gradient (wgrad) layout, sb one scale per 1x128 tile of B (per
column of C and slice). The experts' bf16 grouped GEMM runs in it too (no scales, 64-deep slices).
Refused: fp32 results (ptxas spilled ~70 registers in the main loop with them).

Why this shape. Every FP8 kernel here ran at ~830 TFLOP/s on an H100 on 128x128 tiles, with the
promotion overlapped (kernels/fp8_gemm_gluon.py) or not (kernels/fp8_gemm.py), against cuBLAS's
~1,120. A 128x128x128 step reads 32 KiB from L2 for 4.2 MFLOP: at 830 TFLOP/s that is ~6.5 TB/s of
L2-to-SM traffic, which we took to be about what Hopper's L2 delivers (an estimate, not a
measurement of the traffic; the result below supports it). A 128x256 tile reads 48 KiB for 8.4 MFLOP,
a third less per FLOP. Its accumulator is 128 fp32 registers a thread on 8 warps, and the promotion
needs the product in registers beside it, which one uniform kernel cannot afford. So, as DeepGEMM
does on Hopper:
  - a loader partition (one warp, 24 registers) issues the TMA loads into a ring of stages;
  - two MMA warpgroups (registers moved to them with setmaxnreg) each own 64 rows of the tile. Each
    multiplies its rows by the tile's left 128 columns, waits, scales the product into its left
    accumulator, then does the same for the right 128 columns: a 64-register product beside the
    128 accumulator registers. While one warpgroup scales, the other's MMA holds the tensor cores.
  - each warpgroup frees a stage when both its MMAs on it are done (an mbarrier of count 2), and
    stores its 64x256 result itself (two TMA stores through its own shared buffers).
  - a warpgroup whose 64 rows are all past M, or in the grouped GEMM all padding (an expert's last
    tile holds 1-64 routed rows), multiplies nothing and only releases its stages: each expert's
    padding then costs half a tile at most where it cost a whole one.
A B-scale block is 128 columns, so each half of the tile has one B scale (a number, not a vector).
In the wgrad layout every column has its own scale a slice. The loader brings each slice's 256 column
scales into shared memory with the operands (one TMA row of the scales transposed), whence each part
of a warpgroup's columns reads its own just before it is promoted. In quarters (WS_WGRAD_PART=64, the
default) nothing spills, but each slice waits for four MMAs instead of two: it ran at 0.75-0.85 of
cuBLAS on the long shapes (H200), so `auto` does not try it for that layout (kernels/fp8_gemm.py
WGRAD_BACKENDS). In halves (128) a half's 128 scales are 32 registers a thread beside the two
accumulators and the product: ptxas fits them in the warpgroup's 232 by spilling one register a
slice. Halves ran 1.02-1.08x faster than quarters on H100s (still 0.79-0.87 of cuBLAS bf16;
BENCHMARKS.md, 2026-12-07); quarters stay the default, the variant the device smoke compares bit
for bit with the Triton kernel. bench_kernels.py measures both.

What it measured (BENCHMARKS.md, 2026-12-06 twentieth session): 1.00-1.14x cuBLAS blockwise on the
DeepSeek-V3 shapes (H100), 1.39-1.44x the Triton TMA kernel; as the grouped FP8 GEMM 0.87-1.02 of the
dense FP8 GEMM up to 64 experts (H200). bf16 experts: no faster than the Triton TMA kernel. Two other
H100s, by device time (2026-12-07): 0.91-1.16x cuBLAS, slower on the two longest shapes (4096 x 7168 x
16384, 8192^3), where `auto` takes cuBLAS.

What it matches. `fp8_gemm_ref` and `grouped_gemm_ref`; tests/test_kernels_gpu.py runs it on ragged
shapes and routings, and its bf16 results were bitwise equal to the Triton TMA kernel's (the same
products, promoted in the same order). On CPU nothing here runs; `python benchmarks/sass_check.py
gluon` compiles it for sm_90 offline.
"""

from __future__ import annotations

from kernels._triton import num_sms
from kernels.fp8_gemm_gluon import HAS_GLUON, gluon_descriptor
from kernels.fp8_quant import TILE, cdiv

if HAS_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from kernels.fp8_gemm_gluon import _num_row_tiles, _tile_expert, _tile_of, _zero_unrouted_rows

    @gluon.jit
    def _ws_loader(a_desc, b_desc, s_desc, a_bufs, b_bufs, s_bufs, ready, empty, tile_expert_ptr, used_ptr, M, N,
                   K_STEPS: gl.constexpr, NUM_N: gl.constexpr, GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr,
                   GROUPED: gl.constexpr, COL_SCALES: gl.constexpr):
        # one warp: for each of this program's tiles and each 128-deep slice, wait for a free stage
        # and load A's 128 rows and B's 256 rows of the slice into it (COL_SCALES, the wgrad layout:
        # and the slice's 256 column scales, a row of the transposed scales)
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        num_m = _num_row_tiles(M, used_ptr, BLOCK_M, GROUPED)
        i = 0
        for t in range(gl.program_id(0), num_m * NUM_N, NUM_SMS):
            pid_m, pid_n = _tile_of(t, num_m, NUM_N, GROUP_M)
            off_m = pid_m * BLOCK_M
            row_b = _tile_expert(off_m, tile_expert_ptr, GROUPED) * N + pid_n * BLOCK_N  # stacked (E*N, K)
            for kb in range(K_STEPS):
                s = i % STAGES
                # a fresh mbarrier counts as having completed the phase before its first: the first
                # pass over the ring waits for nothing
                mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
                bar = ready.index(s)
                if COL_SCALES:
                    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes
                                    + s_desc.block_type.nbytes)
                    tma.async_copy_global_to_shared(s_desc, [kb, pid_n * BLOCK_N], bar, s_bufs.index(s))
                else:
                    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(a_desc, [off_m, kb * BLOCK_K], bar, a_bufs.index(s))
                tma.async_copy_global_to_shared(b_desc, [row_b, kb * BLOCK_K], bar, b_bufs.index(s))
                i += 1

    @gluon.jit
    def _ws_half(a, b, acc, prod, sa, sb):
        # one half of a slice: the 64x128 product on the tensor cores, waited for, scaled on the CUDA
        # cores into its accumulator. `prod` only lends its registers (use_acc=False)
        p = warpgroup_mma(a, b.permute((1, 0)), prod, use_acc=False, is_async=True)
        p = warpgroup_mma_wait(0, deps=(p,))
        return acc + p * gl.expand_dims(sa * sb, 1), p

    @gluon.jit
    def _ws_store(acc, c_desc, c_bufs, part: gl.constexpr, off_m, off_n):
        # part `part` of a warpgroup's 256 columns, through two buffers in turn: this one's previous
        # store has read it once at most one store is pending (they retire in order)
        c_smem = c_bufs.index(part % 2)
        tma.store_wait(1)
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [off_m, off_n + part * c_desc.block_type.shape[1]], c_smem)

    @gluon.jit
    def _ws_slices_fp8(a_bufs, b_bufs, ready, empty, i, acc_l, acc_r, prod, sa_ptrs, sb_l_ptr, sb_r_ptr,
                       WG: gl.constexpr, K_STEPS: gl.constexpr, live):
        # one tile's slices, FP8: each half's product waited for and promoted before the next MMA
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        ROWS: gl.constexpr = acc_l.shape[0]
        for kb in range(K_STEPS):
            s = i % STAGES
            # the scales first: their loads run while this warpgroup waits for the stage
            sa = gl.load(sa_ptrs + kb)
            sb_l = gl.load(sb_l_ptr + kb)
            sb_r = gl.load(sb_r_ptr + kb)
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            a = a_bufs.index(s).slice(WG * ROWS, ROWS)
            b = b_bufs.index(s)
            if live:
                acc_l, prod = _ws_half(a, b.slice(0, 128), acc_l, prod, sa, sb_l)
                acc_r, prod = _ws_half(a, b.slice(128, 128), acc_r, prod, sa, sb_r)
            # both MMAs on the stage are done: this warpgroup's half of its release
            mbarrier.arrive(empty.index(s), count=1)
            i += 1
        return acc_l, acc_r, prod, i

    @gluon.jit
    def _ws_slices_bf16(a_bufs, b_bufs, ready, empty, i, acc_l, acc_r, WG: gl.constexpr, K_STEPS: gl.constexpr,
                        live):
        # one tile's slices, bf16: the MMAs accumulate in place, one slice's pair left in flight while
        # the next is issued; a stage is released once its pair is done
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        ROWS: gl.constexpr = acc_l.shape[0]
        for kb in range(K_STEPS):
            s = i % STAGES
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            a = a_bufs.index(s).slice(WG * ROWS, ROWS)
            b = b_bufs.index(s)
            if live:
                acc_l = warpgroup_mma(a, b.slice(0, 128).permute((1, 0)), acc_l, is_async=True)
                acc_r = warpgroup_mma(a, b.slice(128, 128).permute((1, 0)), acc_r, is_async=True)
                acc_l, acc_r = warpgroup_mma_wait(2, deps=(acc_l, acc_r))  # the previous slice's pair is done
            mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=kb > 0)
            i += 1
        acc_l, acc_r = warpgroup_mma_wait(0, deps=(acc_l, acc_r))
        mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1)
        return acc_l, acc_r, i

    @gluon.jit
    def _ws_part(a, b, sb_smem, acc, prod, sa):
        # some columns of a slice, the wgrad layout: the product waited for, then scaled by its rows'
        # and its columns' scales (read from shared memory meanwhile) into its accumulator
        p = warpgroup_mma(a, b.permute((1, 0)), prod, use_acc=False, is_async=True)
        sb = sb_smem.load(gl.SliceLayout(0, acc.type.layout))
        p = warpgroup_mma_wait(0, deps=(p,))
        return acc + p * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0)), p

    @gluon.jit
    def _ws_tile_col_scales(a_bufs, b_bufs, s_bufs, c_bufs, ready, empty, c_desc, i, sa_ptr, stride_sam, M, off_m,
                            off_n, WG: gl.constexpr, K_STEPS: gl.constexpr, live):
        # one tile of the wgrad layout (B scaled per column, in 1x128 tiles along K as A is): the
        # warpgroup's 64x256 in parts of c_desc's width (WS_WGRAD_PART: two halves or four quarters),
        # each multiplied, waited for and promoted in turn with its rows' and columns' scales. A half's
        # 128 column scales are 32 registers a thread beside two 64-register accumulators and the
        # product: the warpgroup's 232 hold them with one register spilled a slice (sass_check.py gluon);
        # quarters need 160 but wait for twice as many MMAs
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        ROWS: gl.constexpr = c_desc.block_type.shape[0]  # 64
        Q: gl.constexpr = c_desc.block_type.shape[1]  # 128 or 64
        BLOCK_N: gl.constexpr = b_bufs.type.shape[1]
        gl.static_assert(Q == 128 or Q == 64, "halves or quarters of the warpgroup's 256 columns")
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, Q, 32])
        rows = gl.minimum(off_m + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma)), M - 1)
        sa_ptrs = sa_ptr + rows * stride_sam
        acc0 = gl.zeros((ROWS, Q), gl.float32, layout=mma)
        acc1 = gl.zeros((ROWS, Q), gl.float32, layout=mma)
        acc2 = gl.zeros((ROWS, Q), gl.float32, layout=mma)  # quarters only (unused, and dropped, with halves)
        acc3 = gl.zeros((ROWS, Q), gl.float32, layout=mma)
        prod = gl.zeros((ROWS, Q), gl.float32, layout=mma)
        for kb in range(K_STEPS):
            s = i % STAGES
            sa = gl.load(sa_ptrs + kb)
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            if live:
                a = a_bufs.index(s).slice(WG * ROWS, ROWS)
                b = b_bufs.index(s)
                # the stage's (1, 256) column scales, read as a vector (unswizzled: the same bytes)
                sb = s_bufs.index(s)._reinterpret(gl.float32, [BLOCK_N], gl.SwizzledSharedLayout(1, 1, 1, [0]))
                acc0, prod = _ws_part(a, b.slice(0, Q), sb.slice(0, Q), acc0, prod, sa)
                acc1, prod = _ws_part(a, b.slice(Q, Q), sb.slice(Q, Q), acc1, prod, sa)
                if Q == 64:
                    acc2, prod = _ws_part(a, b.slice(2 * Q, Q), sb.slice(2 * Q, Q), acc2, prod, sa)
                    acc3, prod = _ws_part(a, b.slice(3 * Q, Q), sb.slice(3 * Q, Q), acc3, prod, sa)
            mbarrier.arrive(empty.index(s), count=1)
            i += 1
        _ws_store(acc0, c_desc, c_bufs, 0, off_m + WG * ROWS, off_n)
        _ws_store(acc1, c_desc, c_bufs, 1, off_m + WG * ROWS, off_n)
        if Q == 64:
            _ws_store(acc2, c_desc, c_bufs, 2, off_m + WG * ROWS, off_n)
            _ws_store(acc3, c_desc, c_bufs, 3, off_m + WG * ROWS, off_n)
        return i

    @gluon.jit
    def _half_has_rows(first_row, M, src_token_ptr, GROUPED: gl.constexpr):
        # a warpgroup's 64 rows hold some to compute: not past M, and (grouped) not padding alone. A
        # segment's routed rows come first (kernels/routing.py), so 64 rows hold some exactly when the
        # first does; only a tile's second half can be padding alone (segments are 128-row aligned)
        if GROUPED:
            return gl.load(src_token_ptr + first_row) >= 0
        return first_row < M

    @gluon.jit
    def _ws_mma(a_bufs, b_bufs, s_bufs, c_bufs, ready, empty, c_desc, sa_ptr, sb_ptr, tile_expert_ptr, used_ptr,
                src_token_ptr, M, N, stride_sam, stride_sbe, stride_sbn, WG: gl.constexpr, K_STEPS: gl.constexpr,
                NUM_N: gl.constexpr, GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr, GROUPED: gl.constexpr,
                COL_SCALES: gl.constexpr):
        # one warpgroup: rows WG*64 .. WG*64+63 of every tile of this program
        BLOCK_M: gl.constexpr = a_bufs.type.shape[1]
        BLOCK_N: gl.constexpr = b_bufs.type.shape[1]
        IS_FP8: gl.constexpr = a_bufs.dtype.is_fp8()
        ROWS: gl.constexpr = c_desc.block_type.shape[0]  # 64
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                      instr_shape=[16, 128, 32 if IS_FP8 else 16])
        n_blocks = gl.cdiv(N, 128)
        num_m = _num_row_tiles(M, used_ptr, BLOCK_M, GROUPED)
        i = 0
        prod = gl.zeros((ROWS, 128), gl.float32, layout=mma)
        for t in range(gl.program_id(0), num_m * NUM_N, NUM_SMS):
            pid_m, pid_n = _tile_of(t, num_m, NUM_N, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            acc_l = gl.zeros((ROWS, 128), gl.float32, layout=mma)
            acc_r = gl.zeros((ROWS, 128), gl.float32, layout=mma)
            # a warpgroup whose rows are all padding or past M multiplies nothing: it only waits for and
            # releases the stages (the loader counts two arrivals a stage), and the other warpgroup has
            # the tensor cores to itself. Its zeros are stored: the grouped GEMM's padding rows must be
            # zero; past M the store is clipped. NOTE: tested inside the slice loop, not by a branch
            # around it or a trip count of zero: with those ptxas spilled ~110 registers of the FP8
            # loop, whose warpgroup is at its register limit (sass_check.py gluon)
            live = _half_has_rows(off_m + WG * ROWS, M, src_token_ptr, GROUPED)
            if COL_SCALES:
                i = _ws_tile_col_scales(a_bufs, b_bufs, s_bufs, c_bufs, ready, empty, c_desc, i, sa_ptr, stride_sam,
                                        M, off_m, off_n, WG, K_STEPS, live)
            elif IS_FP8:
                e = _tile_expert(off_m, tile_expert_ptr, GROUPED)
                rows = gl.minimum(off_m + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma)), M - 1)
                # the halves' B-scale blocks (the right one clamped: past N it scales columns never stored)
                sb_l_ptr = sb_ptr + e * stride_sbe + (off_n // 128) * stride_sbn
                sb_r_ptr = sb_ptr + e * stride_sbe + gl.minimum(off_n // 128 + 1, n_blocks - 1) * stride_sbn
                acc_l, acc_r, prod, i = _ws_slices_fp8(a_bufs, b_bufs, ready, empty, i, acc_l, acc_r, prod,
                                                       sa_ptr + rows * stride_sam, sb_l_ptr, sb_r_ptr, WG, K_STEPS,
                                                       live)
            else:
                acc_l, acc_r, i = _ws_slices_bf16(a_bufs, b_bufs, ready, empty, i, acc_l, acc_r, WG, K_STEPS, live)
            if not COL_SCALES:
                _ws_store(acc_l, c_desc, c_bufs, 0, off_m + WG * ROWS, off_n)
                _ws_store(acc_r, c_desc, c_bufs, 1, off_m + WG * ROWS, off_n)
        tma.store_wait(0)

    @gluon.jit
    def _gemm_ws_kernel(a_desc, b_desc, s_desc, c_desc, c_ptr, sa_ptr, sb_ptr, tile_expert_ptr, used_ptr,
                        src_token_ptr, M, N, stride_cm, stride_sam, stride_sbe, stride_sbn, K_STEPS: gl.constexpr,
                        NUM_N: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                        NUM_SMS: gl.constexpr, GROUPED: gl.constexpr, COL_SCALES: gl.constexpr,
                        num_warps: gl.constexpr):
        # GROUPED: the experts' grouped GEMM, as in kernels/fp8_gemm_gluon.py (A the permuted rows, B
        # the stacked weights (E*N, K), each 128-row tile times its expert's weight; the row tiles past
        # the routed rows are written as zeros; a warpgroup whose 64 rows are padding alone (src_token
        # -1) multiplies nothing). COL_SCALES: the wgrad layout, B scaled per column in 1x128 tiles along
        # K, s_desc over the scales transposed (K/128, N). c_desc's block is what a warpgroup stores at
        # once: 64x128 (half its tile), with COL_SCALES 64 x WS_WGRAD_PART.
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        gl.static_assert(BLOCK_M == 128 and BLOCK_N == 256, "128x256 tiles: two warpgroups of 64 rows")
        gl.static_assert(a_desc.block_type.shape[1] * a_desc.dtype.primitive_bitwidth == 1024,
                         "128-byte slices: 128 deep in FP8 (one scale block), 64 in bf16")
        gl.static_assert(num_warps == 4, "the default partition is one MMA warpgroup")
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
        if COL_SCALES:
            gl.static_assert(not GROUPED, "the wgrad layout is dense (the experts' is kernels/moe.py's)")
            s_bufs = gl.allocate_shared_memory(s_desc.dtype, [STAGES] + s_desc.block_type.shape, s_desc.layout)
        else:
            s_bufs = a_bufs  # unread
        # NOTE: 2-byte results only. With fp32 ptxas spilled ~70 registers in the main loop, whether the
        # epilogue went through shared memory or stored from registers (sass_check.py gluon)
        gl.static_assert(c_desc.dtype.primitive_bitwidth == 16, "a bf16 or fp16 result")
        # each warpgroup's two store buffers: a tile's second store need not wait for its first
        c0 = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
        c1 = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for st in gl.static_range(STAGES):
            mbarrier.init(ready.index(st), count=1)
            mbarrier.init(empty.index(st), count=2)  # one arrival per MMA warpgroup

        WG0: gl.constexpr = 0
        WG1: gl.constexpr = 1
        gl.warp_specialize([
            (_ws_mma, (a_bufs, b_bufs, s_bufs, c0, ready, empty, c_desc, sa_ptr, sb_ptr, tile_expert_ptr,
                       used_ptr, src_token_ptr, M, N, stride_sam, stride_sbe, stride_sbn, WG0, K_STEPS, NUM_N,
                       GROUP_M, NUM_SMS, GROUPED, COL_SCALES)),
            (_ws_mma, (a_bufs, b_bufs, s_bufs, c1, ready, empty, c_desc, sa_ptr, sb_ptr, tile_expert_ptr,
                       used_ptr, src_token_ptr, M, N, stride_sam, stride_sbe, stride_sbn, WG1, K_STEPS, NUM_N,
                       GROUP_M, NUM_SMS, GROUPED, COL_SCALES)),
            (_ws_loader, (a_desc, b_desc, s_desc, a_bufs, b_bufs, s_bufs, ready, empty, tile_expert_ptr, used_ptr,
                          M, N, K_STEPS, NUM_N, GROUP_M, NUM_SMS, GROUPED, COL_SCALES)),
        ], [4, 1], [232, 24])

        for st in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(st))
            mbarrier.invalidate(empty.index(st))
        if GROUPED:
            _zero_unrouted_rows(c_ptr, M, N, used_ptr, stride_cm, BLOCK_M, NUM_SMS, num_warps)


_UNSWIZZLED_F32 = gl.NVMMASharedLayout(0, 32) if HAS_GLUON else None  # the column scales' TMA rows (made once)
WS_TILE = (128, 256)  # (BLOCK_M, BLOCK_N); the store block is one warpgroup's half: (64, 128)
# the wgrad layout's columns promoted at once: 64 (quarters) or 128 (halves: one register spilled a
# slice, 1.02-1.08x faster on an H100); `auto` tries neither (kernels/fp8_gemm.py WGRAD_BACKENDS)
WS_WGRAD_PART = 64
WS_MAXNREG = 168  # 12 warps (4 + 4 + the loader's warpgroup) x 32 x 168 <= 65,536 registers


def launch_ws(a, sa, b, sb, c, stages: int, sb_strides: tuple[int, int], grouped=None, b_block: int = TILE) -> None:
    """c (M, N) = (a * sa) @ (b * sb)^T on checked operands, b (N, K) with scales sb (N/128, K/128), or
    with b_block=1 (the wgrad layout) sb (N, K/128); bf16 operands: c = a @ b^T (sa, sb unread).
    grouped=(tile_expert, used, src_token) of the routing: the experts' GEMM, b the stacked weights
    (E*N, K), sb (E, N/128, K/128). sb_strides: sb's (expert, row) strides."""
    M, K = a.shape
    N = c.shape[1]
    bm, bn = WS_TILE
    bk = 128 // a.element_size()  # 128-byte rows: the widest TMA swizzle
    grid = (min(num_sms(a.device), cdiv(M, bm) * cdiv(N, bn)),)
    tile_expert, used, src_token = grouped if grouped is not None else (c, c, c)  # unread when not grouped
    a_desc = gluon_descriptor(a, [bm, bk])
    col_scales = b_block == 1
    if col_scales:
        # a slice's 256 column scales as one TMA row: the scales transposed, (K/128, N) (a copy of
        # N*K/128 floats, as fp8_gemm_cublas makes), unswizzled. NOTE: not sb.t().contiguous(): with
        # one slice (K=128) that returns sb's own view, whose row stride (4 bytes) TMA refuses
        sbt = sb.new_empty(sb.shape[1], sb.shape[0]).copy_(sb.t())
        s_desc = GluonDescriptor.from_tensor(sbt, [1, bn], _UNSWIZZLED_F32)
    else:
        s_desc = a_desc  # unread
    c_desc = gluon_descriptor(c, [bm // 2, WS_WGRAD_PART if col_scales else 128])  # what a warpgroup stores at once
    _gemm_ws_kernel[grid](a_desc, gluon_descriptor(b, [bn, bk]), s_desc, c_desc, c, sa, sb, tile_expert, used,
                          src_token, M, N, c.stride(0), sa.stride(0), *sb_strides, K_STEPS=cdiv(K, bk),
                          NUM_N=cdiv(N, bn), GROUP_M=8, STAGES=stages, NUM_SMS=grid[0], GROUPED=grouped is not None,
                          COL_SCALES=col_scales, num_warps=4, maxnreg=WS_MAXNREG)
