"""Guarded Triton import: the kernels package must import on a machine with no Triton (CPU CI).

Every kernel module does `from kernels._triton import HAS_TRITON, triton, tl` and defines its
`@triton.jit` functions under `if HAS_TRITON:`; callers pick the Triton path only through
`use_triton(tensor)`, which is False on CPU tensors and when Triton is absent.
"""

from __future__ import annotations

import os

import torch

# TRITON_INTERPRET=1 runs @triton.jit functions on CPU tensors through Triton's interpreter: slow,
# but it checks a kernel's indexing and masking without a GPU (tests/test_kernels_interpret.py)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:  # NOTE: triton imports fine without a GPU; it is simply not installed in the CPU venv
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    HAS_TRITON = False


grouped_tile = None  # a @triton.jit helper where Triton exists
if HAS_TRITON:

    @triton.jit
    def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
        """(row tile, column tile) of program `pid` in grouped launch order: GROUP_M row tiles share
        each column tile while it sits in L2, instead of sweeping a whole row of tiles first."""
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        return first_m + (pid % group) % size_m, (pid % group) // size_m


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every tensor is on a CUDA device and Triton is importable."""
    return HAS_TRITON and all(t.is_cuda for t in tensors)


def require_cuda(*tensors: torch.Tensor, what: str) -> None:
    """Fail loudly when a Triton-only entry point is called on CPU or without Triton."""
    if not HAS_TRITON:
        raise RuntimeError(f"{what}: Triton is not installed; use the *_ref function on CPU")
    if INTERPRET:
        return
    for t in tensors:
        if not t.is_cuda:
            raise RuntimeError(f"{what}: expected CUDA tensors, got one on {t.device}; "
                               "use the *_ref function on CPU")
