"""ReLU whose backward's own derivative has no term for the saved output.

PyTorch differentiates ``relu``'s backward, ``threshold_backward(g, y)``, with respect to ``y`` as an
all-zero map that it allocates and adds into the output's gradient at every inner step of the unroll's
double backward. Here that derivative is ``None``: the same values, two fewer passes over each map.
NCHW or any layout; any order of differentiation (the derivative in ``g`` is the same kernel again).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_threshold_backward = torch.ops.aten.threshold_backward


class _ReluGrad(torch.autograd.Function):
    """(g, y) ↦ g·[y > 0]; linear in g, and constant in y almost everywhere."""

    @staticmethod
    def forward(ctx, g: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(y)
        return _threshold_backward(g, y, 0)

    @staticmethod
    def backward(ctx, u: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return _ReluGrad.apply(u, y), None


class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clamp_min(0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _ReluGrad.apply(g, y)


class ReLU(nn.ReLU):
    """``nn.ReLU`` (no parameters) whose double backward skips the saved output's zero gradient."""

    def forward(self, x: Tensor) -> Tensor:
        return _Relu.apply(x)
