"""FP8 blockwise GEMM in Gluon: each slice's promotion overlapped with the next slice's MMA.

What it computes. The same product as kernels/fp8_gemm.py, C = (A * sa) @ (B * sb)^T, A and B FP8
E4M3, K-contiguous, sa one float32 scale per 1x128 tile of A, sb one per 128x128 block of B
(`b_block=128`) or per 1x128 tile (`b_block=1`), accumulated in float32.

Why it exists. The Triton kernels in fp8_gemm.py wait for each slice's tensor-core product before
the CUDA cores scale it into the accumulator (the promotion), and the tensor cores idle meanwhile:
Triton's pipeliner keeps a warpgroup MMA in flight only while its result feeds the next MMA's
accumulator (rules in its WGMMAPipeline pass), which a scaled product does not, and its automatic
warp specialization hangs on this kernel (BENCHMARKS.md, tenth session). Gluon, Triton's lower-level
dialect, lets the kernel say when to wait: slice k's MMA is issued, then the kernel waits for slice
k-1's only (`warpgroup_mma_wait(1)`) and scales that one while slice k runs. The cost is a third
register tile (the accumulator, the product being scaled, the one in flight), so tiles are 128x128
on 8 warps.

What it measured (H100, BENCHMARKS.md 2026-12-06 nineteenth session): 0.94-1.00 of the Triton TMA
kernel on large shapes, the grouped GEMM 0.90-0.98; small shapes and the wgrad layout (which spills)
slower. So the overlap alone does not pay, and `auto` does not try this kernel. What did pay is the
wider tile that warp specialization affords: kernels/fp8_gemm_gluon_ws.py (config 2 here, backend
"gluon_ws", among auto's candidates) reaches cuBLAS on the forward and dgrad layouts. This kernel
stays as an explicit backend for that comparison, tested; the WS module shares its tile order and
descriptors.

What it matches. `fp8_gemm_ref` and `grouped_gemm_ref`; tests/test_kernels_gpu.py runs it against
them on ragged shapes and routings. Gluon has no CPU interpreter: on CPU nothing here runs (CI
compiles nothing of it; `python benchmarks/sass_check.py gluon` compiles it for sm_90 offline).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from kernels._triton import _major, num_sms
from kernels.fp8_quant import TILE, cdiv

try:  # Gluon ships with Triton >= 3.4; the CPU venv has no Triton at all
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    HAS_GLUON = True
except ImportError:  # pragma: no cover - depends on the machine
    HAS_GLUON = False

class GluonConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int  # the warp-specialized kernel: its default partition (one MMA warpgroup)
    stages: int
    warp_specialized: bool = False  # kernels/fp8_gemm_gluon_ws.py: forward and dgrad, 2-byte results


# Pipelined: three fp32 register tiles must fit a thread's 255 registers. NOTE: a 64x128 tile on 4
# warps was dropped: slower on every shape measured, 0.29-0.92 of the best of these (H100, 2026-12-06).
# Warp-specialized: 128x256 tiles, three 48 KiB stages (four do not fit beside the store buffers).
GLUON_CONFIGS = [GluonConfig(128, 128, 8, 4), GluonConfig(128, 128, 8, 3),
                 GluonConfig(128, 256, 4, 3, warp_specialized=True)]
WS_CONFIG = next(i for i, c in enumerate(GLUON_CONFIGS) if c.warp_specialized)  # backend / impl "gluon_ws"


def check_gluon_config(config: int, out_dtype: torch.dtype, what: str) -> GluonConfig:
    """GLUON_CONFIGS[config], or a ValueError naming what it cannot do: the warp-specialized kernel
    writes a 2-byte result (bf16 or fp16)."""
    if not 0 <= config < len(GLUON_CONFIGS):
        raise ValueError(f"{what}: config must be 0..{len(GLUON_CONFIGS) - 1} (GLUON_CONFIGS), got {config}")
    cfg = GLUON_CONFIGS[config]
    if cfg.warp_specialized and out_dtype.itemsize != 2:
        pipelined = " or ".join(str(i) for i, c in enumerate(GLUON_CONFIGS) if not c.warp_specialized)
        raise ValueError(f"{what}: config {config} (warp-specialized) writes a bf16 or fp16 result, got "
                         f"{out_dtype}; use config {pipelined}")
    return cfg


def gluon_runs_on(device: torch.device) -> bool:
    """Gluon imports and the GPU is a Hopper (sm_90): warpgroup MMA exists nowhere else."""
    return HAS_GLUON and device.type == "cuda" and _major(device) == 9

if HAS_GLUON:

    @gluon.jit
    def _tile_of(t, num_m, num_n, GROUP_M: gl.constexpr):
        # grouped order, as kernels/_triton.py's grouped_tile: GROUP_M row tiles share a column tile.
        # num_n is a constexpr (as is k_steps in the callers): every step computes tile coordinates
        # twice, and divisions by runtime values cost ~20 instructions each, against a budget of
        # about 2,000 issue slots a step for all warps while the tensor cores run
        group = GROUP_M * num_n
        first_m = (t // group) * GROUP_M
        r = t % group
        if num_m - first_m >= GROUP_M:  # every group but the last: divisions by a constant
            pid_m = first_m + r % GROUP_M
            pid_n = r // GROUP_M
        else:
            size_m = num_m - first_m
            pid_m = first_m + r % size_m
            pid_n = r // size_m
        return pid_m, pid_n

    # -- shared with the warp-specialized kernel (kernels/fp8_gemm_gluon_ws.py) --

    @gluon.jit
    def _num_row_tiles(M, used_ptr, BLOCK_M: gl.constexpr, GROUPED: gl.constexpr):
        # grouped: only the row tiles that hold routed rows (offsets[E], read on the device)
        if GROUPED:
            return gl.cdiv(gl.load(used_ptr).to(gl.int32), BLOCK_M)
        return gl.cdiv(M, BLOCK_M)

    @gluon.jit
    def _tile_expert(off_m, tile_expert_ptr, GROUPED: gl.constexpr):
        if GROUPED:  # a 128-row tile never spans two experts' segments (kernels/routing.py pads to 128)
            return gl.load(tile_expert_ptr + off_m // 128)
        return 0

    @gluon.jit
    def _zero_unrouted_rows(c_ptr, M, N, used_ptr, stride_cm, BLOCK_M: gl.constexpr, NUM_SMS: gl.constexpr,
                            num_warps: gl.constexpr):
        # grouped: the row tiles past the routed rows are written as zeros (kernels/moe.py grouped_gemm's
        # NOTE), in BLOCK_M x 128 pieces shared out over the programs
        zl: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        zero = gl.zeros((BLOCK_M, 128), c_ptr.dtype.element_ty, layout=zl)
        num_m = _num_row_tiles(M, used_ptr, BLOCK_M, True)
        pieces = gl.cdiv(N, 128)
        for t in range(gl.program_id(0), (gl.cdiv(M, BLOCK_M) - num_m) * pieces, NUM_SMS):
            rows = (num_m + t // pieces) * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, zl))
            cols = (t % pieces) * 128 + gl.arange(0, 128, layout=gl.SliceLayout(0, zl))
            ptrs = c_ptr + gl.expand_dims(rows.to(gl.int64) * stride_cm, 1) + gl.expand_dims(cols, 0)
            gl.store(ptrs, zero, mask=gl.expand_dims(cols < N, 0))

    # -- the pipelined kernel --

    @gluon.jit
    def _coords(j, pid, k_steps, num_m, num_n, tile_expert_ptr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr, GROUPED: gl.constexpr):
        # iteration j of this program: tile pid + (j // k_steps) * NUM_SMS, slice j % k_steps; grouped,
        # the expert of the tile's rows too
        pid_m, pid_n = _tile_of(pid + (j // k_steps) * NUM_SMS, num_m, num_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        return off_m, pid_n * BLOCK_N, _tile_expert(off_m, tile_expert_ptr, GROUPED), j % k_steps

    @gluon.jit
    def _issue_loads(j, total, pid, k_steps, num_m, num_n, N, tile_expert_ptr, a_desc, b_desc, a_bufs, b_bufs,
                     ready, GROUP_M: gl.constexpr, STAGES: gl.constexpr, NUM_SMS: gl.constexpr,
                     GROUPED: gl.constexpr):
        # the TMA loads of iteration j into stage j % STAGES (none past the last iteration). Grouped,
        # b_desc views the stacked weights as (E*N, K): expert e's rows start at e*N
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        live = j < total
        off_m, off_n, e, kb = _coords(gl.where(live, j, 0), pid, k_steps, num_m, num_n, tile_expert_ptr,
                                      BLOCK_M, BLOCK_N, GROUP_M, NUM_SMS, GROUPED)
        s = j % STAGES
        bar = ready.index(s)
        mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=live)
        tma.async_copy_global_to_shared(a_desc, [off_m, kb * BLOCK_K], bar, a_bufs.index(s), live)
        tma.async_copy_global_to_shared(b_desc, [e * N + off_n, kb * BLOCK_K], bar, b_bufs.index(s), live)

    @gluon.jit
    def _slice_scales(j, pid, k_steps, num_m, num_n, M, N, tile_expert_ptr, sa_ptr, sb_ptr, stride_sam,
                      stride_sbe, stride_sbn, B_BLOCK: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr, GROUPED: gl.constexpr, mma: gl.constexpr):
        # iteration j's scales: A's per row, B's one block scale (a number) or one per column (wgrad).
        # NOTE: kept as vectors, expanded only where used: a (BLOCK_M, BLOCK_N) scale tile carried
        # to the next iteration would be a fourth register tile
        off_m, off_n, e, kb = _coords(j, pid, k_steps, num_m, num_n, tile_expert_ptr, BLOCK_M, BLOCK_N,
                                      GROUP_M, NUM_SMS, GROUPED)
        rows = gl.minimum(off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma)), M - 1)
        sa = gl.load(sa_ptr + rows * stride_sam + kb)
        if B_BLOCK == 1:
            cols = gl.minimum(off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma)), N - 1)
            sb = gl.load(sb_ptr + cols * stride_sbn + kb)
        else:
            gl.static_assert(BLOCK_N <= B_BLOCK, "a column tile within one weight block")
            sb = gl.load(sb_ptr + e * stride_sbe + (off_n // B_BLOCK) * stride_sbn + kb)
        return sa, sb

    @gluon.jit
    def _promote(acc, prod, sa, sb, B_BLOCK: gl.constexpr):
        if B_BLOCK == 1:
            return acc + prod * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0))
        else:
            return acc + prod * gl.expand_dims(sa * sb, 1)

    @gluon.jit
    def _store_tile(acc, j, pid, k_steps, num_m, num_n, c_desc, c_smem, GROUP_M: gl.constexpr,
                    NUM_SMS: gl.constexpr):
        BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
        pid_m, pid_n = _tile_of(pid + (j // k_steps) * NUM_SMS, num_m, num_n, GROUP_M)
        tma.store_wait(0)  # the previous tile's store has read c_smem
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [pid_m * BLOCK_M, pid_n * BLOCK_N], c_smem)

    @gluon.jit
    def _step(i, old, sa, sb, acc, total, pid, k_steps, num_m, num_n, N, tile_expert_ptr, a_desc, b_desc, c_desc,
              a_bufs, b_bufs, c_smem, ready, B_BLOCK: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
              NUM_SMS: gl.constexpr, GROUPED: gl.constexpr):
        # issue slice i's MMA; then finish slice i-1's (`old`, scales sa, sb) while slice i runs
        s = i % STAGES
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        new = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, use_acc=False, is_async=True)
        acc = _promote(acc, warpgroup_mma_wait(1, deps=(old,)), sa, sb, B_BLOCK)
        # every warp is past slice i-1's MMA: its stage takes the loads of iteration i + STAGES - 1
        gl.thread_barrier()
        _issue_loads(i + STAGES - 1, total, pid, k_steps, num_m, num_n, N, tile_expert_ptr, a_desc, b_desc,
                     a_bufs, b_bufs, ready, GROUP_M, STAGES, NUM_SMS, GROUPED)
        if i % k_steps == 0:  # slice i-1 was its tile's last
            _store_tile(acc, i - 1, pid, k_steps, num_m, num_n, c_desc, c_smem, GROUP_M, NUM_SMS)
            acc = gl.zeros_like(acc)
        return new, acc

    @gluon.jit
    def _fp8_gemm_gluon_kernel(a_desc, b_desc, c_desc, c_ptr, sa_ptr, sb_ptr, tile_expert_ptr, used_ptr, M, N,
                               k_steps_rt, stride_cm, stride_sam, stride_sbe, stride_sbn, K_STEPS: gl.constexpr,
                               NUM_N: gl.constexpr, B_BLOCK: gl.constexpr, GROUP_M: gl.constexpr,
                               STAGES: gl.constexpr, NUM_SMS: gl.constexpr, GROUPED: gl.constexpr,
                               num_warps: gl.constexpr):
        # GROUPED: the experts' grouped GEMM (kernels/moe.py): A is the permuted (P, K) matrix (M = P),
        # b_desc the stacked weights (E*N, K) with scales (E, N/128, K/128), each 128-row tile multiplied
        # by its expert's weight (tile_expert); only the row tiles that hold routed rows are computed
        # (used_ptr: offsets[E], read on the device) and the rest are written as zeros
        BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        gl.static_assert(BLOCK_K == 128, "one MMA per 128-deep scale slice")
        # warpgroup MMA layout: warps stacked along M (16 rows each), one instruction spans BLOCK_N
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                      instr_shape=[16, BLOCK_N, 32])
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
        c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for st in gl.static_range(STAGES):
            mbarrier.init(ready.index(st), count=1)

        # persistent: program pid takes tiles pid, pid + NUM_SMS, ...; its (tile, slice) pairs are one
        # flattened sequence, so the next tile's loads and first MMA overlap this tile's epilogue
        pid = gl.program_id(0)
        num_m = _num_row_tiles(M, used_ptr, BLOCK_M, GROUPED)
        num_n: gl.constexpr = NUM_N  # cdiv(N, BLOCK_N) and cdiv(K, 128): see _tile_of
        k_steps: gl.constexpr = K_STEPS
        # NOTE: the runtime copy of k_steps here: with the constexpr and an even k_steps, LLVM proved
        # `total` even, dropped the odd tail below, and the loop it laid out again made ptxas
        # serialize the MMAs (its C7514; sass_check.py gluon counts the waits)
        total = gl.maximum(gl.cdiv(num_m * num_n - pid, NUM_SMS), 0) * k_steps_rt
        if total > 0:
            # every stage filled first; step i refills the stage that slice i-1 read, with iteration
            # i + STAGES - 1 (so each iteration is loaded exactly once)
            for j in gl.static_range(STAGES):
                _issue_loads(j, total, pid, k_steps, num_m, num_n, N, tile_expert_ptr, a_desc, b_desc, a_bufs,
                             b_bufs, ready, GROUP_M, STAGES, NUM_SMS, GROUPED)
            acc = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout=mma)
            # Two products alternate, x and y: one in flight while the other is scaled. NOTE: the
            # loop is unrolled by two so that neither is copied at the back edge. With one product
            # carried, the new MMA's registers had to move into the old one's while the MMA ran,
            # and ptxas then serialized every MMA (its message C7514, "non wgmma instructions
            # reading accumulator registers").
            mbarrier.wait(ready.index(0), 0)
            x = warpgroup_mma(a_bufs.index(0), b_bufs.index(0).permute((1, 0)), acc, use_acc=False, is_async=True)
            sa_x, sb_x = _slice_scales(0, pid, k_steps, num_m, num_n, M, N, tile_expert_ptr, sa_ptr, sb_ptr,
                                       stride_sam, stride_sbe, stride_sbn, B_BLOCK, BLOCK_M, BLOCK_N, GROUP_M,
                                       NUM_SMS, GROUPED, mma)
            for i in range(1, total - 1, 2):
                y, acc = _step(i, x, sa_x, sb_x, acc, total, pid, k_steps, num_m, num_n, N, tile_expert_ptr,
                               a_desc, b_desc, c_desc, a_bufs, b_bufs, c_smem, ready, B_BLOCK, GROUP_M, STAGES,
                               NUM_SMS, GROUPED)
                sa_y, sb_y = _slice_scales(i, pid, k_steps, num_m, num_n, M, N, tile_expert_ptr, sa_ptr, sb_ptr,
                                           stride_sam, stride_sbe, stride_sbn, B_BLOCK, BLOCK_M, BLOCK_N, GROUP_M,
                                           NUM_SMS, GROUPED, mma)
                x, acc = _step(i + 1, y, sa_y, sb_y, acc, total, pid, k_steps, num_m, num_n, N, tile_expert_ptr,
                               a_desc, b_desc, c_desc, a_bufs, b_bufs, c_smem, ready, B_BLOCK, GROUP_M, STAGES,
                               NUM_SMS, GROUPED)
                sa_x, sb_x = _slice_scales(i + 1, pid, k_steps, num_m, num_n, M, N, tile_expert_ptr, sa_ptr,
                                           sb_ptr, stride_sam, stride_sbe, stride_sbn, B_BLOCK, BLOCK_M, BLOCK_N,
                                           GROUP_M, NUM_SMS, GROUPED, mma)
            if total % 2 == 0:  # one slice left over, the last
                y, acc = _step(total - 1, x, sa_x, sb_x, acc, total, pid, k_steps, num_m, num_n, N,
                               tile_expert_ptr, a_desc, b_desc, c_desc, a_bufs, b_bufs, c_smem, ready, B_BLOCK,
                               GROUP_M, STAGES, NUM_SMS, GROUPED)
                sa_y, sb_y = _slice_scales(total - 1, pid, k_steps, num_m, num_n, M, N, tile_expert_ptr, sa_ptr,
                                           sb_ptr, stride_sam, stride_sbe, stride_sbn, B_BLOCK, BLOCK_M, BLOCK_N,
                                           GROUP_M, NUM_SMS, GROUPED, mma)
                acc = _promote(acc, warpgroup_mma_wait(0, deps=(y,)), sa_y, sb_y, B_BLOCK)
            else:
                acc = _promote(acc, warpgroup_mma_wait(0, deps=(x,)), sa_x, sb_x, B_BLOCK)
            _store_tile(acc, total - 1, pid, k_steps, num_m, num_n, c_desc, c_smem, GROUP_M, NUM_SMS)
            tma.store_wait(0)
        for st in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(st))
        if GROUPED:
            _zero_unrouted_rows(c_ptr, M, N, used_ptr, stride_cm, BLOCK_M, NUM_SMS, num_warps)


def _gl_dtype(t: torch.dtype):
    return {torch.float8_e4m3fn: gl.float8e4nv, torch.bfloat16: gl.bfloat16, torch.float32: gl.float32}[t]


@functools.lru_cache(maxsize=None)
def _shared_layout(block: tuple[int, ...], dtype: torch.dtype):
    # NOTE: cached: Gluon derives it in Python, ~7 us a call (this repo's CPU box), three times a GEMM
    return gl.NVMMASharedLayout.get_default_for(list(block), _gl_dtype(dtype))


def gluon_descriptor(t: torch.Tensor, block: list[int]):
    """A Gluon TMA descriptor of the 2-D tensor t with tiles of `block` (NVMMA shared layout)."""
    return GluonDescriptor.from_tensor(t, block, _shared_layout(tuple(block), t.dtype))


def fp8_gemm_gluon(a, sa, b, sb, c, b_block: int = TILE, config: int = 0) -> torch.Tensor:
    """c (M, N) = (a * sa) @ (b * sb)^T through the Gluon kernel, with GLUON_CONFIGS[config]. The
    caller (kernels/fp8_gemm.py) has checked shapes, dtypes and TMA alignment."""
    M, K = a.shape
    N = b.shape[0]
    bm, bn, warps, stages, ws = GLUON_CONFIGS[config]  # checked by fp8_gemm_gluon_checked
    if ws:
        from kernels.fp8_gemm_gluon_ws import launch_ws
        launch_ws(a, sa, b, sb, c, stages, (0, sb.stride(0)), b_block=b_block)
        return c
    grid = (min(num_sms(a.device), cdiv(M, bm) * cdiv(N, bn)),)
    _fp8_gemm_gluon_kernel[grid](gluon_descriptor(a, [bm, TILE]), gluon_descriptor(b, [bn, TILE]),
                                 gluon_descriptor(c, [bm, bn]), c, sa, sb, sa, sa, M, N, cdiv(K, TILE), c.stride(0),
                                 sa.stride(0), 0, sb.stride(0), K_STEPS=cdiv(K, TILE), NUM_N=cdiv(N, bn),
                                 B_BLOCK=b_block, GROUP_M=8, STAGES=stages, NUM_SMS=grid[0], GROUPED=False,
                                 num_warps=warps)
    return c


def grouped_gemm_gluon(x_perm, w, r, x_scale, w_scale, c, config: int = 0) -> torch.Tensor:
    """The experts' grouped GEMM (kernels/moe.py grouped_gemm, impl="gluon" / "gluon_ws"):
    c (P, N) with c[segment e] = x_perm[segment e] @ w[e]^T, rows past the routed ones zero. FP8 on
    every config; bf16 (x_scale, w_scale None) on the warp-specialized one only. The caller has
    checked shapes, dtypes and TMA alignment."""
    P, K = x_perm.shape
    E, N, _ = w.shape
    bm, bn, warps, stages, ws = GLUON_CONFIGS[config]  # checked by kernels/moe.py _grouped_gluon
    if ws:
        from kernels.fp8_gemm_gluon_ws import launch_ws
        if x_scale is None:  # bf16: no scales (the kernel reads none)
            x_scale, w_scale = x_perm, w
        launch_ws(x_perm, x_scale, w.view(E * N, K), w_scale, c, stages, (w_scale.stride(0), w_scale.stride(1)),
                  grouped=(r.tile_expert, r.offsets[E:], r.src_token))
        return c
    grid = (min(num_sms(x_perm.device), cdiv(P, bm) * cdiv(N, bn)),)
    _fp8_gemm_gluon_kernel[grid](gluon_descriptor(x_perm, [bm, TILE]), gluon_descriptor(w.view(E * N, K), [bn, TILE]),
                                 gluon_descriptor(c, [bm, bn]), c, x_scale, w_scale, r.tile_expert, r.offsets[E:],
                                 P, N, cdiv(K, TILE), c.stride(0), x_scale.stride(0), w_scale.stride(0), w_scale.stride(1),
                                 K_STEPS=cdiv(K, TILE), NUM_N=cdiv(N, bn), B_BLOCK=TILE, GROUP_M=8, STAGES=stages,
                                 NUM_SMS=grid[0], GROUPED=True, num_warps=warps)
    return c
