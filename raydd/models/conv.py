"""Convolution whose second derivative runs on PyTorch's forward and first-order kernels.

Forward and first-order backward are ``conv2d`` and ``convolution_backward``. The unroll differentiates
the first-order backward ``(gy, x, W) ↦ (gx, gW, gb)`` once per inner step; its vector-Jacobian product
with cotangents ``(u, p, q)`` is, written out,

    ∂gy = conv(u, W) + conv(x, p) + q,    ∂x = convolution_backward's input gradient of (gy, weight p),
    ∂W = convolution_backward's weight gradient of (gy, input u),

four calls to the tuned kernels. PyTorch's own double backward takes ∂W as a convolution of the batch-
transposed maps (``[C, N, H, W]`` by ``[C', N, H, W]``), which runs at two thirds of the forward's rate
on CPU, and, as a custom backward cannot see which outputs the graph needs, the first-order pass here
asks the engine whether the input's gradient will be used: the unroll's images need it only in its
second pass (``benchmarks/results/distill_speed.md``). Inside :func:`graph_only` the first-order pass
builds the same graph but leaves the weight and bias gradients' values zero, for the constant-memory
unroll's recomputed steps, which need a step's vector-Jacobian product and not its gradient again.
Second order only; NCHW-contiguous maps of a ``groups=1``, ``dilation=1`` convolution (other layouts and
kinds take ``nn.Conv2d``'s path).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_backward = torch.ops.aten.convolution_backward
_weight_values = ContextVar("raydd_conv_weight_values", default=True)


@contextmanager
def graph_only() -> Iterator[None]:
    """Convolutions run forward in here get a first-order backward that, where it builds a graph
    (``create_graph=True``), builds it (the tensors its vector-Jacobian product needs) but returns zeros for the
    weight and bias gradients instead of computing them; backward passes without a graph compute everything."""
    token = _weight_values.set(False)
    try:
        yield
    finally:
        _weight_values.reset(token)


def _input_grad(gy: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int]) -> Tensor:
    """The convolution's gradient with respect to its input ``x`` (of ``gy``, the output's gradient).

    A first layer on CPU (at most 4 input channels, 64 or more output channels) takes it as one batched GEMM and a
    ``fold``, where oneDNN's kernel is 1.5-3× slower (``benchmarks/results/distill_speed.md``); elsewhere, and on
    GPUs (not measured), ``convolution_backward``."""
    if x.is_cpu and x.shape[1] <= 4 and weight.shape[0] >= 64:
        cols = torch.bmm(weight.flatten(1).t().expand(gy.shape[0], -1, -1), gy.flatten(2))
        return F.fold(cols, x.shape[-2:], weight.shape[-2:], padding=padding, stride=stride)
    return _backward(gy, x, weight, None, stride, padding, [1, 1], False, [0, 0], 1, [True, False, False])[0]


def _input_grad_needed(node) -> bool:
    """Whether the running backward pass will use the gradient flowing into ``node`` (a leaf's always counts:
    the engine answers only for interior nodes during ``autograd.grad``)."""
    if node is None:
        return False
    return type(node).__name__ == "AccumulateGrad" or torch._C._will_engine_execute_node(node)


class _ConvGrad(torch.autograd.Function):
    """(gy, x, W) ↦ (gx, gW, gb) by ``convolution_backward``; its VJP by the kernels in the module docstring."""

    @staticmethod
    def forward(ctx, gy: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int], bias: bool,
                need_x: bool, values: bool) -> tuple[Tensor | None, Tensor, Tensor | None]:
        ctx.save_for_backward(gy, x, weight)
        ctx.stride, ctx.padding = stride, padding
        if values:
            _, gw, gb = _backward(gy, x, weight, [weight.shape[0]] if bias else None, stride, padding, [1, 1], False,
                                  [0, 0], 1, [False, True, bias])
        else:
            gw, gb = torch.zeros_like(weight), weight.new_zeros(weight.shape[0]) if bias else None
        gx = _input_grad(gy, x, weight, stride, padding) if need_x else None
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, u: Tensor | None, p: Tensor | None, q: Tensor | None):
        gy, x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        terms = [F.conv2d(u, weight, None, stride, padding)] if u is not None else []
        if p is not None:
            terms.append(F.conv2d(x, p, None, stride, padding))
        if q is not None:
            terms.append(q.view(1, -1, 1, 1).expand_as(gy))
        grad_gy = sum(terms[1:], terms[0]) if terms else None
        grad_x = grad_w = None
        if p is not None and ctx.needs_input_grad[1] and _input_grad_needed(ctx.next_functions[1][0]):
            grad_x = _input_grad(gy, x, p, stride, padding)
        if u is not None and ctx.needs_input_grad[2] and _input_grad_needed(ctx.next_functions[2][0]):
            grad_w = _backward(gy, u, weight, None, stride, padding, [1, 1], False, [0, 0], 1, [False, True, False])[1]
        return grad_gy, grad_x, grad_w, None, None, None, None, None


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.bias, ctx.values = stride, padding, bias is not None, _weight_values.get()
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, weight = ctx.saved_tensors
        need_x = _input_grad_needed(ctx.next_functions[0][0])
        values = ctx.values or not torch.is_grad_enabled()  # graph_only's zeros only where a graph is built
        grad_x, grad_w, grad_b = _ConvGrad.apply(gy.contiguous(), x, weight, ctx.stride, ctx.padding, ctx.bias, need_x,
                                                 values)
        return grad_x, grad_w, grad_b, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (the same parameters and state dict) with :class:`_ConvGrad`'s second derivative on
    NCHW-contiguous maps of a plain (``groups=1``, ``dilation=1``, zero-padded, numeric padding) convolution."""

    def forward(self, x: Tensor) -> Tensor:
        plain = (self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
                 and not isinstance(self.padding, str))
        if plain and x.dim() == 4 and x.is_contiguous():
            return _Conv.apply(x, self.weight, self.bias, list(self.stride), list(self.padding))
        return super().forward(x)
