"""CUDA graphs for the pretraining step (`pretrain.cuda_graphs`): every transformer block's forward and
backward captured once, then replayed each micro-step.

Why. On narrow models the step is host-bound: Python queues each small kernel slower than the GPU runs
it, most of all in FP8, whose linears add quantization launches. A replay queues a whole block in one
call. Measured (BENCHMARKS.md, 2026-12-05): the `small` blocks alone FP8 2.07x, BF16 1.18x (H100);
the whole `small` trainer step FP8 1.23x, BF16 1.02x (H200; embedding, heads, losses, optimizer eager).

How. `torch.cuda.make_graphed_callables` over the blocks in call order (the main stack, then each MTP
depth's block), one memory pool, the way Megatron-LM and Transformer Engine graph their layers. The
embedding, the heads, the losses and the optimizer stay eager. Each block's input shapes are read from
one forward pass of a real batch (forward pre-hooks); the MTP blocks see shorter sequences than the stack.
With `pretrain.compile` the blocks' forwards are compiled first (training/engine.py), so the capture
records inductor's kernels and the FP8 custom ops; validation (eval mode) runs the compiled forward.

What stays right:
- The optimizer writes the weights in place (DeepSpeed's flat buffers), so a replay reads the current
  weights. Capture therefore happens after the engine is built and a checkpoint is loaded; it first
  releases the gradient accumulators ZeRO's links keep alive from the default stream
  (training/engine.py: the backward capture would sync with that stale stream, and fail).
- FP8 weights are quantized inside the graph at every replay: kernels/weight_cache.py does not reuse a
  cached copy while a capture is running (the cache's hit-or-miss decision is taken on the host, and
  a captured hit would replay stale weights after the next optimizer step).
- Routed-token counters (the aux-loss-free bias update) are zeroed after capture: the shape probe and
  the warm-up iterations ran forward passes that are not training.
- A block in eval mode runs its eager forward (validation, any other shape): make_graphed_callables
  replays only in the training state it captured.
"""

from __future__ import annotations

import functools

import torch

from training.engine import release_gradient_accumulators
from training.model.model import Block, Transformer


def capture_blocks(model: Transformer, input_ids: torch.Tensor, labels: torch.Tensor) -> int:
    """Capture every `Block` of `model` (a training/model Transformer, on a CUDA device, in training
    mode) for micro-batches shaped like `input_ids`; returns the number of blocks captured."""
    if not input_ids.is_cuda:
        raise ValueError(f"pretrain.cuda_graphs needs a CUDA device; this run is on {input_ids.device}: "
                         "set it to false")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    calls: list[tuple[Block, tuple]] = []

    def record(module, args):
        calls.append((module, args))

    hooks = [b.register_forward_pre_hook(record) for b in blocks]
    try:
        with torch.no_grad():
            model(input_ids, labels)
    finally:
        for h in hooks:
            h.remove()
    if sorted(id(b) for b, _ in calls) != sorted(id(b) for b in blocks):
        raise RuntimeError(f"pretrain.cuda_graphs: {len(calls)} block calls in one forward for {len(blocks)} "
                           "blocks; each block must run exactly once per forward to be captured")
    for _, args in calls:
        if len(args) != 3 or not all(isinstance(a, torch.Tensor) for a in args):
            # (x, cos, sin): a mask or a cache is not a tensor of fixed shape
            raise RuntimeError(f"pretrain.cuda_graphs: a block was called with {len(args)} arguments; "
                               "only (x, cos, sin) can be captured")
    # x needs its gradient (it carries the backward into the block below); the rotary tables do not
    samples = tuple((x.detach().clone().requires_grad_(True), cos.detach().clone(), sin.detach().clone())
                    for _, (x, cos, sin) in calls)
    release_gradient_accumulators(model)  # after the engine and any checkpoint load: both make links anew
    torch.cuda.make_graphed_callables(tuple(b for b, _ in calls), samples)
    # NOTE: a replay returns the parameter gradients in the graph's static buffers, and autograd makes
    # an unreferenced gradient the parameter's .grad itself (it "steals" it) when .grad is None. Under
    # accumulation the next micro-step's replay would then overwrite the .grad it adds to (the first
    # micro-step's gradient lost, the second's doubled). A clone gives .grad memory of its own; it is
    # needed only while .grad is None: a later micro-step's gradient is added into .grad in place
    # (DeepSpeed's ZeRO-1 keeps .grad until the accumulation boundary). With a clone on every
    # micro-step, the graphed FP8 `small` step made 976 more device-to-device copies per two steps
    # than the BF16 one (7.6 ms, H100): about one per block parameter and micro-step.
    for block, _ in calls:
        for p in block.parameters():
            if p.requires_grad:
                p.register_hook(functools.partial(_own_memory_if_stolen, p))
    for moe in model.moe_layers().values():  # the probe and the warm-up were not training
        moe.gate.tokens_per_expert.zero_()
    return len(calls)


def _own_memory_if_stolen(p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A replay's gradient for p, cloned if autograd would make it p.grad itself (see capture_blocks)."""
    return grad.clone() if p.grad is None else grad
