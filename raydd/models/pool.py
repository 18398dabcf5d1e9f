"""2×2 average pooling (stride 2) as a row sum and one matrix product, differentiable to any order.

The same values as ``nn.AvgPool2d(2)`` (to float rounding). On CPU, PyTorch's NCHW pooling kernels
walk the window element by element; here the forward pass is one add of each pair of rows and one
GEMM that averages the column pairs, and its backward one GEMM and one broadcast copy, about half the
time at width 128 (``benchmarks/results/distill_speed.md``). Each pass is the other's adjoint, so the
unroll's double backward runs the same two fast kernels. Tensors that are not NCHW-contiguous with even
sides (channels-last, odd maps) take ``F.avg_pool2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _columns(width: int, like: Tensor) -> Tensor:
    """The ``width × width/2`` matrix that averages each pair of columns of a row pair's sum (entries 1/4)."""
    m = torch.zeros(width, width // 2, dtype=like.dtype, device=like.device)
    m[torch.arange(width), torch.arange(width) // 2] = 0.25
    return m


def _pool(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    rows = x.view(n, c, h // 2, 2 * w)
    return ((rows[..., :w] + rows[..., w:]).view(-1, w) @ _columns(w, x)).view(n, c, h // 2, w // 2)


def _unpool(g: Tensor) -> Tensor:
    n, c, h, w = g.shape
    row = (g.reshape(-1, w) @ _columns(2 * w, g).t()).view(n, c, h, 1, 2 * w)
    return row.expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)


class _Resample(torch.autograd.Function):
    """``up=False``: :func:`_pool`; ``up=True``: :func:`_unpool`, its adjoint (and so its backward)."""

    @staticmethod
    def forward(x: Tensor, up: bool) -> Tensor:
        return _unpool(x) if up else _pool(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.up = inputs[1]

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        return _Resample.apply(g.contiguous(), not ctx.up), None


def avg_pool2x2(x: Tensor) -> Tensor:
    """``F.avg_pool2d(x, 2)``: by row sums and a GEMM where ``x`` is NCHW-contiguous with even sides."""
    if x.dim() == 4 and x.is_contiguous() and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
        return _Resample.apply(x, False)
    return F.avg_pool2d(x, 2)


class AvgPool2x2(nn.Module):
    """``nn.AvgPool2d(2)`` by :func:`avg_pool2x2`."""

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool2x2(x)
