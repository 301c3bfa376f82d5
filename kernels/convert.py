"""Opt-in FP8 conversion of a model, by module name (torchtitan's converter habit).

`convert_to_fp8(model, FP8Config(...))` walks the model once, before DeepSpeed or any wrapper sees it,
and swaps in place:
  - every `nn.Linear` whose qualified name matches `include` and none of `exclude` -> `FP8Linear`
    (same Parameter objects, same state-dict keys);
  - every module with the grouped-experts interface (3-D parameters w1, w2, w3; see
    kernels/experts.py; training/model/moe.py's `Experts` has it) -> a `GroupedExperts` in FP8 mode
    sharing the same Parameters (the grouped GEMM replaces the module's own per-expert loop).
The defaults keep the paper's higher-precision parts out: embeddings, the output head, the MoE
router gate and norms (norms hold no nn.Linear, but a pattern costs nothing). The swap keeps the
master weights in the module's own dtype: optimizer state and DeepSpeed's FP32 master copy are
untouched; FP8 only lives inside the forward and backward products.

Hardware. FP8 tensor cores need compute capability 8.9 or newer (Ada, Hopper); on an older GPU
the conversion fails loudly rather than silently running emulated. On CPU, or with `emulate=True`,
the same numerics run in plain PyTorch (quantize, dequantize, matmul): that is how CI tests it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from kernels._triton import HAS_TRITON
from kernels.experts import GroupedExperts
from kernels.fp8_linear import FP8Linear

# names matched with fnmatch against the fully qualified module name (`layers.3.attn.wq`)
DEFAULT_EXCLUDE = ["*embed*", "*lm_head*", "head", "*.head", "*output*", "gate", "*.gate",
                   "*router*", "*norm*"]


@dataclass
class FP8Config:
    # which modules go to FP8: fnmatch patterns over qualified names; exclude wins over include
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    # GEMM backend on the GPU: "auto" (faster of Triton and cuBLAS per shape), "triton", "cublas"
    backend: str = "auto"
    # run the CPU-style emulation even on a GPU (numerics checks); CPU tensors always emulate
    emulate: bool = False
    # linears narrower than this (in or out features) stay in high precision: FP8 does not pay there
    min_features: int = 0


def _selected(name: str, cfg: FP8Config) -> bool:
    return (any(fnmatch.fnmatchcase(name, p) for p in cfg.include)
            and not any(fnmatch.fnmatchcase(name, p) for p in cfg.exclude))


def _is_grouped_experts(m: nn.Module) -> bool:
    ws = [getattr(m, n, None) for n in ("w1", "w2", "w3")]
    return all(isinstance(w, nn.Parameter) and w.dim() == 3 for w in ws)


def _as_grouped_experts(m: nn.Module) -> GroupedExperts:
    """A model's own experts module with the interface -> GroupedExperts sharing its Parameters."""
    if isinstance(m, GroupedExperts):
        return m
    E, I, D = m.w1.shape
    assert m.w3.shape == (E, I, D) and m.w2.shape == (E, D, I), (
        f"convert_to_fp8: experts {type(m).__name__} has w1 {tuple(m.w1.shape)}, w3 "
        f"{tuple(m.w3.shape)}, w2 {tuple(m.w2.shape)}; expected (E, I, D), (E, I, D), (E, D, I)")
    g = GroupedExperts.__new__(GroupedExperts)
    nn.Module.__init__(g)
    g.num_experts, g.dim, g.inter_dim = E, D, I
    g.w1, g.w3, g.w2 = m.w1, m.w3, m.w2  # same Parameter objects, same state-dict keys
    g.fp8 = g.emulate = False
    return g


def check_fp8_hardware(model: nn.Module, emulate: bool) -> None:
    """Fail loudly when the model sits on a GPU that cannot run the FP8 kernels."""
    devices = {p.device for p in model.parameters()}
    for dev in devices:
        if dev.type != "cuda" or emulate:
            continue
        cap = torch.cuda.get_device_capability(dev)
        if cap < (8, 9):
            raise RuntimeError(
                f"convert_to_fp8: {torch.cuda.get_device_name(dev)} (sm_{cap[0]}{cap[1]}) has no FP8 "
                "tensor cores; FP8 needs compute capability 8.9+ (Ada, Hopper). Use precision "
                "bf16, or FP8Config(emulate=True) for a (slow) numerics check")
        if not HAS_TRITON:
            raise RuntimeError("convert_to_fp8: the model is on CUDA but Triton is not installed; "
                               "install triton or use FP8Config(emulate=True)")


def convert_to_fp8(model: nn.Module, config: FP8Config | None = None) -> list[str]:
    """Swap selected linears / grouped experts to FP8 in place; return the converted names."""
    cfg = config or FP8Config()
    assert cfg.backend in ("auto", "triton", "cublas"), (
        f"FP8Config.backend must be 'auto', 'triton' or 'cublas', got {cfg.backend!r}")
    check_fp8_hardware(model, cfg.emulate)
    converted: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or not _selected(name, cfg):
            continue
        if type(module) is nn.Linear:
            if min(module.in_features, module.out_features) < cfg.min_features:
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, FP8Linear.from_linear(module, cfg.backend, cfg.emulate))
            converted.append(name)
        elif _is_grouped_experts(module):
            g = _as_grouped_experts(module)
            g.fp8, g.emulate = True, cfg.emulate
            if g is not module:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, g)
            converted.append(name)
    if not converted:
        raise ValueError(f"convert_to_fp8: no nn.Linear or grouped-experts module matched include="
                         f"{cfg.include} minus exclude={cfg.exclude}; check the module names "
                         f"(e.g. {[n for n, _ in list(model.named_modules())[1:6]]})")
    return converted
