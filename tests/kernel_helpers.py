"""What the kernel tests share: the FP8 error bound, the relative error they measure, and a counter of
the quantizations that only a backward needs."""

import dataclasses

import torch

FP8_BOUND = 0.06  # relative Frobenius error allowed for one FP8 x FP8 product vs float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def count_calls(monkeypatch, table: str, names: tuple[str, ...]) -> list[str]:
    """Patch kernels.fp8_linear's `table` ("EMULATED_OPS" or "GPU_OPS") so that each of its functions
    in `names` notes its name in the returned list when called."""
    import kernels.fp8_linear as fp8_linear

    calls: list[str] = []

    def counted(name, fn):
        def run(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return run

    ops = getattr(fp8_linear, table)
    monkeypatch.setattr(fp8_linear, table, dataclasses.replace(
        ops, **{name: counted(name, getattr(ops, name)) for name in names}))
    return calls


def count_backward_layouts(monkeypatch, table: str) -> list[str]:
    """count_calls of the quantizations made only for a backward: x in both layouts, the SwiGLU
    product's transposed tiles."""
    return count_calls(monkeypatch, table, ("act_dual", "swiglu_dual"))
