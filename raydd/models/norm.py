"""Instance norm (affine; the MTT code's ``GroupNorm(C, C)``) with a hand-written second derivative.

Forward and first-order backward are PyTorch's own group-norm kernels. Their derivative, which the
unroll's double backward takes once per inner step, is written out here in closed form instead of
autograd's composite for any group count: per (image, channel), with x̂ = (x − μ)·s, M = H·W, cotangents
u, p, q of (∂x, ∂γ, ∂β) and m₁ = mean(g), m₂ = mean(g·x̂) of the incoming gradient g:

    ∂g = γs·(u − mean(u) − x̂·mean(u·x̂)) + p·x̂ + q
    ∂γ = Σₙ s·T,   T = Σ u·g − m₁·Σ u − m₂·Σ u·x̂
    ∂x = s·(G − mean(G) − x̂·mean(G·x̂)) − γ·T·s²·x̂ / M,   G = −γs·(m₂·u + mean(u·x̂)·g) + p·g

in two passes over x, g and u (the sums, then ∂g and ∂x), about a dozen operations over the maps where
autograd's composite takes twice that. Maps larger than the last-level cache (on CPU) are walked by blocks of
rows that stay in cache, each block's products summed there: layer 1's derivative at width 128 in about half
the time (``benchmarks/results/distill_speed.md``); smaller maps take one block, and the same values to the
bit as the formulas one operation at a time. Second order only (the unroll's and AST's gradient penalty's need).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_BLOCK = 1 << 19  # values per operand in one block of rows: a block's operands stay in the last-level cache
_CACHED = 1 << 21  # maps of at most this many values (8 MB in float32) are taken in one block


def _rows_per_block(rows: int, m: int, device: torch.device) -> int:
    """Whole (image, channel) rows of ``m`` values per block: all of them for a map of at most ``_CACHED`` values
    or on a GPU, else ~``_BLOCK`` values' worth."""
    return rows if device.type != "cpu" or rows * m <= _CACHED else max(1, _BLOCK // m)


def _row_dot(a: Tensor, b: Tensor, blocked: bool) -> Tensor:
    """Σ a·b along each row: a product summed in cache for a block, a batched dot product otherwise."""
    return (a * b).sum(1) if blocked else torch.einsum("im,im->i", a, b)


class _NormGrad(torch.autograd.Function):
    """(x, γ, g) ↦ (∂x, ∂γ, ∂β) of instance norm by ``native_group_norm_backward``; its VJP in closed form."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, c = x.shape[:2]
        ctx.save_for_backward(x, weight, mean, rstd, g)
        return torch.ops.aten.native_group_norm_backward(g, x, mean, rstd, weight, n, c, x[0, 0].numel(), c,
                                                         [True, True, True])

    @staticmethod
    @once_differentiable
    def backward(ctx, u: Tensor | None, p: Tensor | None, q: Tensor | None):
        x, weight, mean, rstd, g = ctx.saved_tensors
        n, c = x.shape[:2]
        rows, m = n * c, x[0, 0].numel()
        step = _rows_per_block(rows, m, x.device)
        blocked = step < rows
        u = torch.zeros_like(x) if u is None else u
        xs, gs, us = (v.reshape(rows, m).split(step) for v in (x, g, u))  # the same blocks of rows of each
        mu, s = mean.reshape(rows, 1), rstd.reshape(rows, 1)
        per_row = lambda v: v.repeat(n).view(rows, 1)  # noqa: E731  (a per-channel vector, one entry per row)
        xhat = x.new_empty(step, m)

        def normalised(xb: Tensor, mub: Tensor, sb: Tensor) -> Tensor:
            return torch.sub(xb, mub, out=xhat[: len(xb)]).mul_(sb)

        sums = x.new_empty(5, rows)  # per row: Σg, Σg·x̂, Σu, Σu·x̂, Σu·g
        for xb, gb, ub, mub, sb, out in zip(xs, gs, us, mu.split(step), s.split(step), sums.split(step, 1)):
            xh = normalised(xb, mub, sb)
            for i, (a, b) in enumerate([(gb, None), (gb, xh), (ub, None), (ub, xh), (ub, gb)]):
                out[i] = a.sum(1) if b is None else _row_dot(a, b, blocked)
        sg, sgx, su, sux, sug = sums.unsqueeze(-1)
        m1, m2 = sg / m, sgx / m
        gamma = per_row(weight)
        a = gamma * s
        alpha, beta = -a * m2, (0.0 if p is None else per_row(p)) - a * sux / m
        t = sug - m1 * su - m2 * sux
        grad_w = (s * t).view(n, c).sum(0)
        mean_g, mean_gx = alpha * su / m + beta * m1, alpha * sux / m + beta * m2
        g0 = (0.0 if q is None else per_row(q)) - a * su / m
        x0, x1 = -s * mean_g, -s * mean_gx - gamma * t * s * s / m
        grad_g, grad_x = torch.empty_like(x), torch.empty_like(x)
        coefficients = (v.split(step) for v in (mu, s, g0, beta, a, x0, x1, s * alpha, s * beta))
        outs = (v.view(rows, m).split(step) for v in (grad_g, grad_x))
        for xb, gb, ub, (mub, sb, g0b, bb, ab, x0b, x1b, uxb, gxb), (ggb, gxo) in zip(
                xs, gs, us, zip(*coefficients), zip(*outs)):
            xh = normalised(xb, mub, sb)
            torch.addcmul(g0b, xh, bb, out=ggb).addcmul_(ub, ab)
            torch.addcmul(x0b, xh, x1b, out=gxo).addcmul_(ub, uxb).addcmul_(gb, gxb)
        return grad_x, grad_w, None, None, grad_g


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        n, c = x.shape[:2]
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, x[0, 0].numel(), c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = _NormGrad.apply(x, weight, mean, rstd, g.contiguous())
        return grad_x, grad_w, grad_b, None


class InstanceNorm(nn.GroupNorm):
    """``nn.GroupNorm(channels, channels)`` (the same parameters and state dict) with :class:`_NormGrad`'s
    closed-form second derivative on NCHW-contiguous maps; other layouts take ``nn.GroupNorm``'s path."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, channels, eps=eps, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.is_contiguous():
            return _Norm.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)  # channels-last: PyTorch's own (its kernels there favour the composite)
