"""Pick the fastest of several implementations of one product, once per shape and layout.

What it does. `choose(key, candidates, error_of, cache)` runs every candidate once, drops those
that raise or whose result `error_of` finds too far from the reference, times the rest and keeps
the one with the smallest MEDIAN time; the answer is cached under `key` (the caller puts the
shapes, strides, dtypes and device in it), so the work is done once per layout for a whole run.

Why it exists. `fp8_gemm(backend="auto")` chooses between our Triton kernels and cuBLAS, and
`grouped_gemm(impl="auto")` between two Triton kernels, per shape. The first version timed 5 calls
once and picked Triton on 4096 x 2048 x 7168 where cuBLAS is 1.5x faster (BENCHMARKS.md,
2026-11-29). Now: warm-up calls first (the Triton autotuner compiles and benchmarks its configs on
a new shape's first call), then `iters` rounds that time every candidate once each, interleaved;
the median of each candidate's rounds decides (see cuda_timer for what a timed call includes).

Tie rule: candidates within `tie` (2%) of the fastest median count as equal, and the first of them
in the caller's order wins (callers list the vendor library first).
The timer is a parameter: tests on CPU pass a fake one to check the selection logic itself.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

AGREE = 2e-2  # relative Frobenius distance to the reference that a candidate must stay under
TIE = 0.02  # medians within 2% of the fastest are a tie: the earlier candidate wins


@dataclass
class Choice:
    name: str  # the winner, or "reference" when no candidate ran and agreed
    median_ms: dict[str, float] = field(default_factory=dict)  # candidates that ran and agreed
    rel_err: dict[str, float] = field(default_factory=dict)  # every candidate that ran
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it was dropped
    samples: int = 0  # timed calls per candidate


def cuda_timer(fns: dict[str, Callable[[], object]], warmup: int = 3, iters: int = 21) -> dict[str, list[float]]:
    """Milliseconds of each call of each candidate: `warmup` untimed rounds, then `iters` timed rounds,
    every candidate once per round (so clock ramps and other load hit all of them alike), each call
    between its own pair of CUDA events. NOTE: launched back to back, a call costs its GPU time when
    the GPU is the bottleneck, and its host launch time (plus a short kernel) when the host is: what
    a loop of such calls (an eager training step) pays. A first version queued a sleep kernel ahead
    to time the GPU alone; it chose the TMA kernel on 8192 x 512 x 512, whose Python launch
    (host-side TMA descriptors) costs ~45 us against a 13 us kernel (H200, 2026-11-30)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    events = {n: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)] for n in fns}
    for i in range(iters):
        for n, fn in fns.items():
            start, end = events[n][i]
            start.record()
            fn()
            end.record()
    torch.cuda.synchronize()
    return {n: [s.elapsed_time(e) for s, e in ev] for n, ev in events.items()}


def choose(key, candidates: dict[str, Callable[[], torch.Tensor]], error_of: Callable[[torch.Tensor], float],
           cache: dict, timer=cuda_timer, agree: float = AGREE, tie: float = TIE, what: str = "") -> Choice:
    """The cached Choice for `key`, measuring it on the first call (see the module docstring)."""
    if key in cache:
        return cache[key]
    choice = Choice("reference")
    ok = {}
    for name, fn in candidates.items():
        try:
            out = fn()
        except Exception as e:  # refused shape or layout, compile failure: record why, try the next
            choice.refused[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            continue
        err = float(error_of(out))
        choice.rel_err[name] = err
        if err < agree:  # NaN fails too
            ok[name] = fn
        else:
            choice.refused[name] = f"disagrees with the reference: relative error {err:.3g}"
    if ok:
        samples = timer(ok)
        choice.median_ms = {n: statistics.median(t) for n, t in samples.items()}
        choice.samples = min(len(t) for t in samples.values())
        best = min(choice.median_ms.values())
        choice.name = next(n for n in ok if choice.median_ms[n] <= best * (1 + tie))
    else:
        warnings.warn(f"{what or 'autoselect'}: no candidate ran and agreed with the reference for {key}: "
                      f"{choice.refused}; using the reference")
    cache[key] = choice
    return choice


def tensor_key(*tensors: torch.Tensor) -> tuple:
    """Shapes, strides, dtypes and device of tensors: the layout part of a cache key."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, t.device.type, t.device.index) for t in tensors)
