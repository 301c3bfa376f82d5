"""Compile the Triton GEMM kernels for sm_90 on a machine WITHOUT a GPU and report what ptxas made of
each config: registers, stack (spill) bytes, shared memory, and the SASS instructions that matter
(QGMMA/HGMMA: Hopper's warpgroup MMA; UTMALDG/UTMASTG: TMA; STL/LDL: spills to local memory).

    python benchmarks/sass_check.py [fp8_tma fp8_classic grouped_tma gluon wgrad quant combine]

Uses the ptxas and cuobjdump that Triton's wheel carries (triton/backends/nvidia/bin), so it costs
no device time. A config whose shared memory exceeds 227 KB (232,448 bytes) cannot launch on an
H100/H200; one with a stack frame and STL/LDL in its loop spills. This is how the FP8 kernels'
spills were found (2026-11-30: the classic FP8 GEMM kept 1,328 bytes of stack).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels.fp8_gemm as g  # noqa: E402
import kernels.fp8_quant as fq  # noqa: E402
import kernels.moe as m  # noqa: E402
import kernels.routing as routing  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SMEM_LIMIT = 232448
OPS = ("QGMMA", "HGMMA", "FFMA", "UTMALDG", "UTMASTG", "STL", "LDL")


def report(fn, signature: dict, constexprs: dict, cfg, name: str, source=ASTSource) -> str:
    """`signature`: the runtime arguments' types; every constexpr argument is typed from `constexprs`.
    Returns the SASS ("" when it did not compile). source: GluonASTSource for a Gluon kernel."""
    signature = {**signature, **{c: "constexpr" for c in constexprs}}
    try:
        k = triton.compile(source(fn=fn, signature=signature, constexprs=constexprs), target=TARGET,
                           options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                                    **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {})})
    except Exception as e:  # a config this Triton cannot compile
        print(f"| {name} | compile error: {type(e).__name__}: {str(e).splitlines()[0][:120]} |")
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    usage = subprocess.run([BIN / "cuobjdump", "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([BIN / "cuobjdump", "--dump-sass", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    regs = re.search(r"REG:(\d+)", usage).group(1)
    stack = re.search(r"STACK:(\d+)", usage).group(1)
    ops = {op: len(re.findall(rf"\b{op}\b", sass)) for op in OPS}
    smem = k.metadata.shared
    fits = "yes" if smem <= SMEM_LIMIT else "NO"
    print(f"| {name} | w{cfg.num_warps} s{cfg.num_stages} | {regs} | {stack} | {smem:,} ({fits}) | "
          + " | ".join(str(ops[o]) for o in OPS) + " |")
    return sass


def fp8_tma(out="bf16"):
    for cfg in g._TMA_CONFIGS:
        kw = cfg.kwargs
        bm, bn = kw["BLOCK_M"], kw["BLOCK_N"]
        for b_block, o in ((128, out), (1, "fp32")):
            sig = {"a_desc": f"tensordesc<fp8e4nv[{bm}, 128]>", "b_desc": f"tensordesc<fp8e4nv[{bn}, 128]>",
                   "c_desc": f"tensordesc<{o}[{bm}, {bn}]>", "sa_ptr": "*fp32", "sb_ptr": "*fp32", "M": "i32",
                   "N": "i32", "K": "i32", "stride_sam": "i32", "stride_sbn": "i32", "OUT_BYTES": "i32"}
            consts = {"B_BLOCK": b_block, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 128, "GROUP_M": 8,
                      "FLATTEN": kw["FLATTEN"], "NUM_SMS": 132}
            report(g._fp8_gemm_tma_kernel, sig, consts, cfg,
                   f"fp8 tma {bm}x{bn} flatten={kw['FLATTEN']} b_block={b_block} {o}")


def fp8_classic():
    for cfg in g._CONFIGS:
        kw = cfg.kwargs
        sig = {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*bf16", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
               **{a: "i32" for a in ("M", "N", "K", "stride_am", "stride_bn", "stride_cm", "stride_sam",
                                     "stride_sbn")}}
        consts = {"B_BLOCK": 128, "BLOCK_M": kw["BLOCK_M"], "BLOCK_N": kw["BLOCK_N"], "BLOCK_K": 128, "GROUP_M": 8}
        report(g._fp8_gemm_kernel, sig, consts, cfg, f"fp8 classic {kw['BLOCK_M']}x{kw['BLOCK_N']} b_block=128")


def grouped_tma():
    for fp8, cfgs in ((False, m._GG_TMA_CONFIGS), (True, m._GG_TMA_FP8_CONFIGS)):
        dt = "fp8e4nv" if fp8 else "bf16"
        for cfg in cfgs:
            kw = cfg.kwargs
            bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
            sig = {"a_desc": f"tensordesc<{dt}[{bm}, {bk}]>", "b_desc": f"tensordesc<{dt}[{bn}, {bk}]>",
                   "c_desc": f"tensordesc<bf16[{bm}, {bn}]>", "c_ptr": "*bf16", "sa_ptr": "*fp32" if fp8 else "*bf16",
                   "sb_ptr": "*fp32" if fp8 else "*bf16", "tile_expert_ptr": "*i32", "used_ptr": "*i64",
                   "row_tiles_ptr": "*i32", "live_tiles_ptr": "*i32",
                   **{a: "i32" for a in ("P", "N", "K", "E", "stride_cm", "stride_sam", "stride_sbe", "stride_sbn",
                                         "OUT_BYTES")}}
            consts = {"IS_FP8": fp8, "ALIGN_M": 128, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                      "FLATTEN": kw["FLATTEN"], "NUM_SMS": 132}
            report(m._grouped_gemm_tma_kernel, sig, consts, cfg,
                   f"grouped tma {dt} {bm}x{bn}x{bk} flatten={kw['FLATTEN']}")


def gluon():
    """The Gluon FP8 GEMM (kernels/fp8_gemm_gluon.py), dense and grouped. Its point is that the MMA waits
    only for the previous slice (`WARPGROUP.DEPBAR.LE gsb0, 0x1`: one MMA left in flight while the
    CUDA cores scale the other); a wait for zero between MMAs would mean ptxas serialized them."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    import kernels.fp8_gemm_gluon as gg
    fp8 = torch.empty(1024, 1024, dtype=torch.float8_e4m3fn)
    for bm, bn, warps, stages, ws in gg.GLUON_CONFIGS:
        if ws:
            gluon_ws(stages)
            continue
        for b_block, out, grouped in ((128, torch.bfloat16, False), (1, torch.float32, False),
                                      (128, torch.bfloat16, True)):
            c = torch.empty(1024, 1024, dtype=out)
            sig = {"a_desc": mangle_type(gg.gluon_descriptor(fp8, [bm, 128])),
                   "b_desc": mangle_type(gg.gluon_descriptor(fp8, [bn, 128])),
                   "c_desc": mangle_type(gg.gluon_descriptor(c, [bm, bn])), "c_ptr": mangle_type(c),
                   "sa_ptr": "*fp32", "sb_ptr": "*fp32", "tile_expert_ptr": "*i32", "used_ptr": "*i64",
                   **{a: "i32" for a in ("M", "N", "k_steps_rt", "stride_cm", "stride_sam", "stride_sbe", "stride_sbn")}}
            consts = {"K_STEPS": 56, "NUM_N": 16, "B_BLOCK": b_block, "GROUP_M": 8, "STAGES": stages, "NUM_SMS": 132, "GROUPED": grouped,
                      "num_warps": warps}
            cfg = triton.Config({}, num_warps=warps, num_stages=stages)
            name = f"gluon fp8 {'grouped' if grouped else 'dense'} {bm}x{bn} b_block={b_block} {str(out)[6:]}"
            sass = report(gg._fp8_gemm_gluon_kernel, sig, consts, cfg, name, source=GluonASTSource)
            print(f"|   {name}: MMA waits leaving one in flight {sass.count('WARPGROUP.DEPBAR.LE gsb0, 0x1')}, "
                  f"waiting for all {sass.count('WARPGROUP.DEPBAR.LE gsb0, 0x0')} |")


def gluon_ws(stages: int):
    """The warp-specialized Gluon GEMM (kernels/fp8_gemm_gluon_ws.py): FP8 dense (forward and dgrad,
    and the wgrad layout with its column scales) and grouped, bf16 grouped. No spills at its register
    split (REG shows the launch's 168; the MMA warpgroups run at 232-256 after setmaxnreg), but for
    the wgrad layout in halves (one register spilled and reloaded twice a slice, the rest per tile).
    FP8: each MMA waited for before its product is scaled (two waits for zero a slice, four in the
    wgrad layout's quarters); bf16: the previous slice's pair waited for (`gsb0, 0x2`: two MMAs left in
    flight)."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    import kernels.fp8_gemm_gluon as gg
    import kernels.fp8_gemm_gluon_ws as ws
    c = torch.empty(1024, 1024, dtype=torch.bfloat16)
    bm, bn = ws.WS_TILE
    fp8 = torch.float8_e4m3fn
    for dtype, grouped, cols in ((fp8, False, False), (fp8, True, False), (torch.bfloat16, True, False),
                                 (fp8, False, 128), (fp8, False, 64)):  # cols: the wgrad layout's part width
        x, bk = torch.empty(1024, 1024, dtype=dtype), 128 // dtype.itemsize
        s_desc = TensorDescriptor.from_tensor(torch.empty(8, 1024), [1, bn], ws._UNSWIZZLED_F32)
        sig = {"a_desc": mangle_type(gg.gluon_descriptor(x, [bm, bk])),
               "b_desc": mangle_type(gg.gluon_descriptor(x, [bn, bk])),
               "s_desc": mangle_type(s_desc if cols else gg.gluon_descriptor(x, [bm, bk])),
               "c_desc": mangle_type(gg.gluon_descriptor(c, [bm // 2, cols or 128])), "c_ptr": mangle_type(c),
               "sa_ptr": "*fp32", "sb_ptr": "*fp32", "tile_expert_ptr": "*i32", "used_ptr": "*i64",
               "src_token_ptr": "*i32",
               **{a: "i32" for a in ("M", "N", "stride_cm", "stride_sam", "stride_sbe", "stride_sbn")}}
        consts = {"K_STEPS": 16, "NUM_N": 6, "GROUP_M": 8, "STAGES": stages, "NUM_SMS": 132, "GROUPED": grouped,
                  "COL_SCALES": bool(cols), "num_warps": 4}
        cfg = triton.Config({}, num_warps=4, num_stages=stages, maxnreg=ws.WS_MAXNREG)
        name = (f"gluon warp-specialized {str(dtype)[6:]} {'grouped' if grouped else 'dense'} {bm}x{bn}x{bk}"
                f"{f' wgrad (column scales, {cols}-column parts)' if cols else ''} bf16 out")
        sass = report(ws._gemm_ws_kernel, sig, consts, cfg, name, source=GluonASTSource)
        print(f"|   {name}: register moves (setmaxnreg) {sass.count('USETMAXREG')}, MMA waits for zero "
              f"{sass.count('WARPGROUP.DEPBAR.LE gsb0, 0x0')}, leaving two in flight "
              f"{sass.count('WARPGROUP.DEPBAR.LE gsb0, 0x2')} (each counted in both MMA warpgroups' copies) |")


def wgrad():
    for cfg in m._WG_CONFIGS:
        kw = cfg.kwargs
        for out in ("fp32", "bf16"):  # bf16: the weight's dtype, written straight from the accumulator
            sig = {"a_desc": f"tensordesc<fp8e4nv[{kw['BLOCK_M']}, 128]>",
                   "b_desc": f"tensordesc<fp8e4nv[{kw['BLOCK_N']}, 128]>", "c_ptr": f"*{out}", "sa_ptr": "*fp32",
                   "sb_ptr": "*fp32", "offsets_ptr": "*i64",
                   **{a: "i32" for a in ("N", "K", "stride_ce", "stride_cn", "stride_sa", "stride_sb")}}
            consts = {"BLOCK_M": kw["BLOCK_M"], "BLOCK_N": kw["BLOCK_N"], "BLOCK_K": 128, "GROUP_M": 8,
                      "FLATTEN": kw["FLATTEN"]}
            report(m._grouped_wgrad_fp8_kernel, sig, consts, cfg,
                   f"grouped wgrad fp8 {kw['BLOCK_M']}x{kw['BLOCK_N']} {out}")


def quant():
    """The quantization kernels as the wrappers launch them (a 128x128 tile in registers for the dual ones:
    spills would show here)."""
    cfg = triton.Config({}, num_warps=fq.DUAL_WARPS, num_stages=1)
    ptrs = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "qt_ptr": "*fp8e4nv", "st_ptr": "*fp32"}
    # PROLOGUE: the tensor made in the loads (1: SwiGLU's product, 2 and 3: its gate and up gradients)
    for prologue, label in ((0, ""), (1, ", SwiGLU"), (2, ", d gate"), (3, ", d up")):
        report(fq._act_quant_dual_kernel, {**ptrs, "b_ptr": "*bf16", "c_ptr": "*bf16", **{a: "i32" for a in (
               "M", "K", "MP", "stride_xm", "stride_xk", "stride_bm", "stride_bk", "stride_qm", "stride_sm", "stride_qtk",
               "stride_stk")}},
               {"TILE_": 128, "CHUNK": fq.DUAL_CHUNK, "PROLOGUE": prologue},
               triton.Config({}, num_warps=4, num_stages=1),
               f"act quant dual 128x128, strips of {fq.DUAL_CHUNK}{label}")
        report(fq._act_quant_strips_kernel, {**ptrs, "b_ptr": "*bf16", "c_ptr": "*bf16", **{a: "i32" for a in (
               "M", "K", "MP", "stride_xm", "stride_xk", "stride_bm", "stride_bk", "stride_qm", "stride_sm", "stride_qtk",
               "stride_stk")}},
               {"TILE_": 128, "CHUNK": fq.DUAL_CHUNK, "PROLOGUE": prologue},
               triton.Config({}, num_warps=4, num_stages=1),
               f"act quant dual, one {fq.DUAL_CHUNK}x128 strip a program{label}")
    wptrs = {("w_ptr" if k == "x_ptr" else k): v for k, v in ptrs.items()}
    report(fq._weight_quant_dual_kernel, {**wptrs, **{a: "i32" for a in ("N", "K", "stride_we", "stride_wn",
           "stride_wk", "NT", "KT", "N_OUT", "NT_OUT", "ROW_TILE0")}}, {"TILE_": 128}, cfg, "weight quant dual 128x128")
    report(fq._act_quant_kernel, {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", **{a: "i32" for a in (
           "M", "K", "K_OUT", "stride_xm", "stride_xk", "stride_qm", "stride_sm")}}, {"BLOCK_M": 32, "TILE_K": 128},
           triton.Config({}, num_warps=4, num_stages=1), "act quant 32x128 (single layout)")


def combine():
    """The experts' combine backward (one program a permuted row), with and without d topk_w."""
    sig = {"dy_ptr": "*bf16", "w_ptr": "*fp32", "rows_ptr": "*i64", "src_ptr": "*i32", "o_ptr": "*bf16",
           "d_out_ptr": "*bf16", "d_w_ptr": "*fp32", "N": "i32", "stride_dy": "i32", "stride_o": "i32",
           "stride_d": "i32"}
    for has_o in (True, False):
        report(routing._combine_backward_kernel, sig, {"TOPK": 4, "BLOCK_N": 1024, "HAS_O": has_o},
               triton.Config({}, num_warps=4, num_stages=1), f"combine backward, d topk_w {has_o}")


if __name__ == "__main__":
    which = sys.argv[1:] or ["fp8_tma", "fp8_classic", "grouped_tma", "gluon", "wgrad", "quant", "combine"]
    print("| kernel, config | warps, stages | registers | stack bytes | shared memory (fits 227 KB) | "
          + " | ".join(OPS) + " |")
    print("| --- " * (5 + len(OPS)) + "|")
    for w in which:
        globals()[w]()
