"""Pick the fastest of several implementations of one product, once per shape and layout.

What it does. `choose(key, candidates, error_of, cache)` runs every candidate once, drops those
that raise or whose result `error_of` finds too far from the reference, times the rest and keeps
the one with the smallest MEDIAN time; the answer is cached under `key` (the caller puts the
shapes, strides, dtypes and device in it), so the work is done once per layout for a whole run.

Why it exists. `fp8_gemm(backend="auto")` chooses between our kernels (Triton and Gluon) and
cuBLAS, and `grouped_gemm(impl="auto")` between our kernels (two in Triton, one in Gluon), per
shape. The first version timed 5 calls once and picked Triton on 4096 x 2048 x 7168 where cuBLAS
is 1.5x faster (BENCHMARKS.md, 2026-11-29). Now: warm-up calls first (the Triton autotuner compiles
and benchmarks its configs on a new shape's first call), then `iters` rounds that time every
candidate once each, interleaved; the median of each candidate's rounds decides (see cuda_timer
for what a timed call includes: launch or device time).

Tie rule: candidates within `tie` (2%) of the fastest median count as equal, and the first of them
in the caller's order wins (callers list the vendor library first).
The timer is a parameter: tests on CPU pass a fake one to check the selection logic itself.

Stable choices. A timed choice is not reproducible: on the `small` profile's shapes the medians
of cuBLAS and our kernels lie within a few percent of each other, and three runs of the same model
on the H200 chose different backends for 15 of its 36 FP8 GEMM layouts (BENCHMARKS.md, 2026-11-30
third session). cuBLAS and Triton sum in different orders, so two runs of the same seed and data
then differ from the first step on. Two ways to pin the choice:
  - `SEEKFLOW_KERNEL_CHOICES=FILE` (JSON): a layout found there takes the recorded candidate (still
    checked against the reference once, never timed); a layout not found is measured and added.
    One section per machine signature (GPU name, torch and Triton versions), so a file carried to
    another GPU or software stack is not trusted there. Several processes may share the file.
  - `torch.use_deterministic_algorithms(True)`: the first candidate in the caller's order that runs
    and agrees, with no timing at all.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

AGREE = 2e-2  # relative Frobenius distance to the reference that a candidate must stay under
TIE = 0.02  # medians within 2% of the fastest are a tie: the earlier candidate wins
CHOICES_ENV = "SEEKFLOW_KERNEL_CHOICES"  # path of the JSON file of recorded choices (see above)


@dataclass
class Choice:
    name: str  # the winner, or "reference" when no candidate ran and agreed
    median_ms: dict[str, float] = field(default_factory=dict)  # candidates that ran and agreed
    rel_err: dict[str, float] = field(default_factory=dict)  # every candidate that ran
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it was dropped
    samples: int = 0  # timed calls per candidate
    how: str = "measured"  # "measured", "recorded" (from the choices file) or "deterministic" (first agreeing)


_TIMING = {"mode": "launch"}
_SLEEP_CYCLES = 2_000_000  # ~1 ms of GPU clock: longer than one round's host launches


def set_timing(mode: str) -> None:
    """What cuda_timer measures. "launch" (the default): a call's cost in a loop of eager calls, its
    host launch included. "gpu": its device time alone, what a CUDA-graph replay pays, where no
    launch happens (`pretrain.cuda_graphs` sets it before its blocks are captured). Choices
    recorded in the choices file are kept apart per mode (see _section)."""
    if mode not in ("launch", "gpu"):
        raise ValueError(f"autoselect timing must be 'launch' or 'gpu', got {mode!r}")
    _TIMING["mode"] = mode


def cuda_timer(fns: dict[str, Callable[[], object]], warmup: int = 3, iters: int = 21) -> dict[str, list[float]]:
    """Milliseconds of each call of each candidate: `warmup` untimed rounds, then `iters` timed rounds,
    every candidate once per round (so clock ramps and other load hit all of them alike), each call
    between its own pair of CUDA events. NOTE: launched back to back, a call costs its GPU time when
    the GPU is the bottleneck, and its host launch time (plus a short kernel) when the host is: what
    a loop of such calls (an eager training step) pays; the TMA kernel on 8192 x 512 x 512 has a
    Python launch (host-side TMA descriptors) of ~45 us against a 13 us kernel (H200, 2026-11-30).
    With set_timing("gpu") a sleep kernel queued ahead of each round keeps the GPU behind the host,
    so each call is timed from when the GPU reaches it: its device time alone."""
    gpu_only = _TIMING["mode"] == "gpu"
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    events = {n: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)] for n in fns}
    for i in range(iters):
        if gpu_only:
            torch.cuda._sleep(_SLEEP_CYCLES)
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
    recorded = recorded_choice(key)
    if recorded in candidates:  # checked once against the reference, not timed
        choice = _first_agreeing({recorded: candidates[recorded]}, error_of, agree, "recorded")
        if choice.name == recorded:
            cache[key] = choice
            return choice
        warnings.warn(f"{what or 'autoselect'}: the recorded choice {recorded!r} for {key} does not agree with "
                      f"the reference now ({choice.refused}); measuring again")
    if torch.are_deterministic_algorithms_enabled():
        choice = _first_agreeing(candidates, error_of, agree, "deterministic")
    else:
        choice = _measured(candidates, error_of, timer, agree, tie)
    if choice.name == "reference":
        warnings.warn(f"{what or 'autoselect'}: no candidate ran and agreed with the reference for {key}: "
                      f"{choice.refused}; using the reference")
    elif choice.how == "measured":
        record_choice(key, choice.name)
    cache[key] = choice
    return choice


def _agrees(choice: Choice, name: str, fn, error_of, agree: float) -> bool:
    """Run `fn` once; note its error (or why it was refused) in `choice`; True when it agrees."""
    try:
        out = fn()
    except Exception as e:  # refused shape or layout, compile failure: record why, try the next
        choice.refused[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        return False
    err = float(error_of(out))
    choice.rel_err[name] = err
    if err < agree:  # NaN fails too
        return True
    choice.refused[name] = f"disagrees with the reference: relative error {err:.3g}"
    return False


def _measured(candidates, error_of, timer, agree: float, tie: float) -> Choice:
    choice = Choice("reference")
    ok = {n: fn for n, fn in candidates.items() if _agrees(choice, n, fn, error_of, agree)}
    if ok:
        samples = timer(ok)
        choice.median_ms = {n: statistics.median(t) for n, t in samples.items()}
        choice.samples = min(len(t) for t in samples.values())
        best = min(choice.median_ms.values())
        choice.name = next(n for n in ok if choice.median_ms[n] <= best * (1 + tie))
    return choice


def _first_agreeing(candidates, error_of, agree: float, how: str) -> Choice:
    choice = Choice("reference", how=how)
    choice.name = next((n for n, fn in candidates.items() if _agrees(choice, n, fn, error_of, agree)), "reference")
    return choice


# ---------------------------------------------------------------------------------------------
# the choices file (SEEKFLOW_KERNEL_CHOICES)


@functools.cache
def machine_signature() -> str:
    """What a recorded choice is valid for: the GPU model and the torch / Triton versions (asked once
    per process: every layout's first GEMM looks it up)."""
    try:
        import triton
        tv = triton.__version__
    except ImportError:  # pragma: no cover - depends on the machine
        tv = "none"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{gpu} | torch {torch.__version__} | triton {tv}"


def _section() -> str:
    """The choices file's section for this process: the machine signature, and the timing mode when it
    is not the default (a choice timed with launches is not the graph replay's choice)."""
    return machine_signature() + (" | gpu timing" if _TIMING["mode"] == "gpu" else "")


def _choices_path() -> Path | None:
    path = os.environ.get(CHOICES_ENV)
    return Path(path) if path else None


def _read_choices(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{CHOICES_ENV}={path}: not a readable JSON file of kernel choices ({e}); "
                           "delete it or point the variable elsewhere") from e


_PARSED: dict[Path, tuple[tuple[int, int], dict]] = {}  # path -> ((mtime_ns, size), its parsed choices)


def _current_choices(path: Path) -> dict:
    """The file's choices, parsed again only when it changed (other processes add to it as they measure)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    if path not in _PARSED or _PARSED[path][0] != stamp:
        _PARSED[path] = (stamp, _read_choices(path))
    return _PARSED[path][1]


def recorded_choice(key) -> str | None:
    """The candidate recorded for `key` on this machine signature, or None (no file, or not in it)."""
    path = _choices_path()
    if path is None:
        return None
    return _current_choices(path).get(_section(), {}).get(str(key))


def record_choice(key, name: str) -> None:
    """Add `key -> name` to the choices file, if one is set (a lock file serialises processes)."""
    path = _choices_path()
    if path is None:
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _read_choices(path)
        data.setdefault(_section(), {})[str(key)] = name
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)


def tensor_key(*tensors: torch.Tensor) -> tuple:
    """Shapes, strides, dtypes and device of tensors: the layout part of a cache key."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, t.device.type, t.device.index) for t in tensors)
