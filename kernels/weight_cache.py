"""FP8 copies of the weights, made once per optimizer step instead of on every forward.

What it does. `quantized_weight(w, ...)` returns w's FP8 blocks (128x128 scales) and, when asked,
the transposed layout the dgrad multiplies by, from one pass (`weight_quant_dual`). The result is
kept on the Parameter itself (attribute `_fp8_cached`) and reused while the weight has not changed:
every micro-step of a gradient-accumulation window and every backward pass share one quantization.

When is a copy stale? Its key is (storage address, `w._version`, shape, dtype, quantizer, generation):
  - `w._version` counts in-place writes through autograd-visible ops: torch optimizers
    (`p.add_`, fused AdamW's `_fused_adamw_`), `load_state_dict`, `with torch.no_grad(): p.mul_(..)`;
  - the storage address changes when `p.data` is replaced by a new tensor;
  - the generation is a global counter, bumped after EVERY torch optimizer's step (a global
    `register_optimizer_step_post_hook`, installed on first use) and by `invalidate_fp8_weights()`.
NOTE: the generation exists for DeepSpeed. Its ZeRO optimizer steps an fp32 master copy (a torch
optimizer: the hook fires) and then writes the bf16 weights through `p.data.copy_(...)`, which
bumps no version counter. Code that writes weights through `.data` outside a torch optimizer step
must call `invalidate_fp8_weights()` itself.

Why it exists. Quantizing a weight and transposing its FP8 copy were two of the FP8 step's extra
passes on every micro-step (BENCHMARKS.md, 2026-11-30). Memory: one FP8 byte per weight element per
layout kept (the saved activations of a step are far larger at the `small` profile).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from kernels.fp8_quant import stacked_rows

_generation = 0
_hook = None


def invalidate_fp8_weights() -> None:
    """Mark every cached FP8 weight stale (the next forward quantizes again)."""
    global _generation
    _generation += 1


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    invalidate_fp8_weights()


def _install_hook() -> None:
    global _hook
    if _hook is None:
        _hook = register_optimizer_step_post_hook(_after_optimizer_step)


@dataclass
class QuantizedWeight:
    key: tuple
    q: torch.Tensor  # (.., N, K) fp8
    s: torch.Tensor  # (.., ceil(N/128), ceil(K/128)) fp32
    qt: torch.Tensor | None = None  # (.., K, N) fp8: q transposed (the dgrad's operand), or None
    st: torch.Tensor | None = None  # (.., ceil(K/128), ceil(N/128)) fp32


def weight_key(w: torch.Tensor, mode: str) -> tuple:
    return (w.data_ptr(), w._version, tuple(w.shape), w.dtype, mode, _generation)


def quantized_weight(w: torch.Tensor | tuple[torch.Tensor, ...], transposed: bool, quant, quant_dual, mode: str,
                     cache: bool = True) -> QuantizedWeight:
    """w's FP8 copy (and its transposed layout when `transposed`), from the cache while w is unchanged.

    quant(w) -> (q, s) and quant_dual(w) -> (q, s, qt, st) are the quantizers (Triton or reference);
    `mode` names them in the key, so an emulated and a GPU copy are never mixed up. w may be a tuple
    of weights stacked along N (rows) into one FP8 weight (kernels/fp8_quant.py `stacked_rows`: a
    SwiGLU's [w1; w3]); it is kept on the first, under its own attribute, stale when any of them
    changes."""
    _install_hook()
    ws = w if isinstance(w, tuple) else (w,)  # NOTE: checked on a miss only (this runs every layer call)
    if cache and ws[0].is_cuda and torch.cuda.is_current_stream_capturing():
        # NOTE: under CUDA-graph capture the hit-or-miss decision would be frozen into the graph; a
        # frozen hit replays stale weights after the next optimizer step. Captured, w is quantized at
        # every replay, into the graph's own memory, and the cache is left alone (training/graphs.py)
        cache = False
    key = tuple(weight_key(t, mode) for t in ws)
    slot = "_fp8_cached" if len(ws) == 1 else "_fp8_cached_stacked"
    hit = getattr(ws[0], slot, None) if cache else None
    if hit is not None and hit.key == key and (hit.qt is not None or not transposed):
        return hit
    with torch.no_grad():
        if transposed:
            entry = QuantizedWeight(key, *quant_dual(w))
        else:  # one layout: each weight's blocks, stacked (a tuple's N are multiples of 128 but the last)
            qs = [quant(t) for t in stacked_rows(w, "quantized_weight")]
            entry = QuantizedWeight(key, *(torch.cat(parts, dim=-2) if len(ws) > 1 else parts[0]
                                           for parts in zip(*qs)))
    if cache:
        setattr(ws[0], slot, entry)
    return entry
