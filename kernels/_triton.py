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

try:  # host-side TMA descriptors (Triton >= 3.3); the interpreter emulates them on CPU
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the machine
    TensorDescriptor = None


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


def tma_ok(*tensors: torch.Tensor) -> bool:
    """True when every 2-D tensor can back a TMA descriptor: the GPU is a Hopper or newer (or the
    interpreter runs), the base is 16-byte aligned, the last dimension is contiguous and every
    other stride is a multiple of 16 bytes. Callers fall back to the pointer kernels otherwise."""
    if TensorDescriptor is None:
        return False
    for t in tensors:
        if not INTERPRET and not (t.is_cuda and _major(t.device) >= 9):
            return False
        if t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        if any(s * t.element_size() % 16 for s in t.stride()[:-1]):
            return False
    return True


_SMS: dict[int, int] = {}
_MAJOR: dict[int, int] = {}


def _major(device: torch.device) -> int:
    """Compute capability major of a CUDA device, cached (tma_ok runs on every GEMM launch: the
    uncached query cost a few microseconds of host time per tensor)."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _MAJOR:
        _MAJOR[idx] = torch.cuda.get_device_capability(idx)[0]
    return _MAJOR[idx]


def num_sms(device: torch.device) -> int:
    """Multiprocessors of the device (persistent kernels launch one program per SM); 4 when the
    interpreter runs on CPU, so that its programs still loop over several tiles each."""
    if INTERPRET or device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


def fixed_config(config, configs):
    """None -> autotune (the first config under the interpreter, which has no autotuner); an int
    indexes `configs`; a triton.Config is used as is."""
    if config is None:
        return configs[0] if INTERPRET else None
    return configs[config] if isinstance(config, int) else config


def launch_kwargs(cfg) -> dict:
    """A config's meta-parameters, plus warps and stages where a GPU compiles them."""
    kw = dict(cfg.kwargs)
    if not INTERPRET:
        kw.update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return kw


def _quick_bench(fn, quantiles):
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def autotuned(kernel, configs, key):
    """triton.autotune with a short benchmark per config (5 ms of warm-up, 25 ms of repeats instead
    of 25 and 100: configs are tried again for every new key, inside training runs too); the plain
    kernel under the interpreter, which has no autotuner (callers pass the first config there)."""
    if INTERPRET:
        return kernel
    return triton.autotune(configs=configs, key=key, do_bench=_quick_bench)(kernel)


def tma_block_shapes(nargs: dict) -> None:
    """Autotuner pre-hook of the TMA kernels (arguments a_desc, b_desc and, where the output goes
    through TMA too, c_desc): the host-side descriptors take the tile shape of the config tried."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk]
    if "c_desc" in nargs:  # stored in C_SPLIT column blocks where the kernel has that option
        nargs["c_desc"].block_shape = [bm, bn // nargs.get("C_SPLIT", 1)]


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
