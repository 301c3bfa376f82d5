"""What the kernel tests share: the FP8 error bound and the relative error they measure."""

import torch

FP8_BOUND = 0.06  # relative Frobenius error allowed for one FP8 x FP8 product vs float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
