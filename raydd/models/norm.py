"""Instance norm (affine; the MTT code's ``GroupNorm(C, C)``) with a hand-written second derivative.

Forward and first-order backward are PyTorch's own group-norm kernels. Their derivative, which the
unroll's double backward takes once per inner step, is written out here in closed form instead of
autograd's composite for any group count: per (image, channel), with x̂ = (x − μ)·s, M = H·W, cotangents
u, p, q of (∂x, ∂γ, ∂β) and m₁ = mean(g), m₂ = mean(g·x̂) of the incoming gradient g:

    ∂g = γs·(u − mean(u) − x̂·mean(u·x̂)) + p·x̂ + q
    ∂γ = Σₙ s·T,   T = Σ u·g − m₁·Σ u − m₂·Σ u·x̂
    ∂x = s·(G − mean(G) − x̂·mean(G·x̂)) − γ·T·s²·x̂ / M,   G = −γs·(m₂·u + mean(u·x̂)·g) + p·g

in two passes over x, g and u by blocks of rows that stay in cache (the sums, then ∂g and ∂x), where
autograd's composite takes about two dozen passes over the activations and the formulas above, one
operation at a time, a dozen (``benchmarks/results/distill_speed.md``). Second order only (the unroll's
and AST's gradient penalty's need).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_BLOCK = 1 << 19  # values per operand in one block of rows: a block's operands stay in the last-level cache


def _row_blocks(rows: int, m: int, device: torch.device) -> list[slice]:
    """Blocks of whole (image, channel) rows of ``m`` values: ~``_BLOCK`` values each on CPU, one block on GPUs."""
    step = rows if device.type != "cpu" else max(1, _BLOCK // m)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


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
        xs, gs, us = x.view(rows, m), g.view(rows, m), None if u is None else u.reshape(rows, m)
        mu, s = mean.reshape(rows, 1), rstd.reshape(rows, 1)
        per_row = lambda v: v.repeat(n).view(rows, 1)  # noqa: E731  (a per-channel vector, one entry per row)
        blocks = _row_blocks(rows, m, x.device)
        xhat = x.new_empty(blocks[0].stop, m)
        sums = x.new_zeros(5, rows, 1)  # per row: Σg, Σg·x̂, Σu, Σu·x̂, Σu·g

        def normalised(r: slice) -> Tensor:
            return torch.sub(xs[r], mu[r], out=xhat[: r.stop - r.start]).mul_(s[r])

        for r in blocks:  # one pass over x, g, u: each block's products are summed while in cache
            xh = normalised(r)
            torch.sum(gs[r], 1, keepdim=True, out=sums[0, r])
            torch.sum(gs[r] * xh, 1, keepdim=True, out=sums[1, r])
            if us is not None:
                torch.sum(us[r], 1, keepdim=True, out=sums[2, r])
                torch.sum(us[r] * xh, 1, keepdim=True, out=sums[3, r])
                torch.sum(us[r] * gs[r], 1, keepdim=True, out=sums[4, r])
        sg, sgx, su, sux, sug = sums
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
        ggs, gxs = grad_g.view(rows, m), grad_x.view(rows, m)
        for r in blocks:  # a second pass writes both results block by block
            xh = normalised(r)
            torch.addcmul(g0[r], xh, beta[r], out=ggs[r])
            torch.addcmul(x0[r], xh, x1[r], out=gxs[r]).addcmul_(gs[r], s[r] * beta[r])
            if us is not None:
                ggs[r].addcmul_(us[r], a[r])
                gxs[r].addcmul_(us[r], s[r] * alpha[r])
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
