"""Instance norm (affine; the MTT code's ``GroupNorm(C, C)``) with a hand-written second derivative.

Forward and first-order backward are PyTorch's own group-norm kernels. Their derivative, which the
unroll's double backward takes once per inner step, is written out here in closed form instead of
autograd's composite for any group count: per (image, channel), with x̂ = (x − μ)·s, M = H·W, cotangents
u, p, q of (∂x, ∂γ, ∂β) and m₁ = mean(g), m₂ = mean(g·x̂) of the incoming gradient g:

    ∂g = γs·(u − mean(u) − x̂·mean(u·x̂)) + p·x̂ + q
    ∂γ = Σₙ s·T,   T = Σ u·g − m₁·Σ u − m₂·Σ u·x̂
    ∂x = s·(G − mean(G) − x̂·mean(G·x̂)) − γ·T·s²·x̂ / M,   G = −γs·(m₂·u + mean(u·x̂)·g) + p·g

about a dozen passes over the activations where the composite takes twice that
(``benchmarks/results/distill_speed.md``). Second order only (the unroll's and AST's gradient penalty's need).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _sums(a: Tensor, b: Tensor) -> Tensor:
    """Σ over each (image, channel)'s map of a·b, shaped (N, C, 1, 1)."""
    n, c = a.shape[:2]
    return torch.einsum("im,im->i", a.reshape(n * c, -1), b.reshape(n * c, -1)).view(n, c, 1, 1)


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
        m = x[0, 0].numel()
        s, gamma = rstd.view(n, c, 1, 1), weight.view(1, c, 1, 1)
        xhat = (x - mean.view(n, c, 1, 1)) * s
        u = torch.zeros_like(x) if u is None else u
        p = torch.zeros(c, dtype=x.dtype, device=x.device) if p is None else p
        q = torch.zeros(c, dtype=x.dtype, device=x.device) if q is None else q
        su, sux, sug = u.sum((2, 3), keepdim=True), _sums(u, xhat), _sums(u, g)
        m1, m2 = g.sum((2, 3), keepdim=True) / m, _sums(g, xhat) / m
        a = gamma * s
        alpha, beta = -a * m2, p.view(1, c, 1, 1) - a * sux / m
        grad_g = torch.addcmul((q.view(1, c, 1, 1) - a * su / m), xhat, beta).addcmul_(u, a)
        t = sug - m1 * su - m2 * sux
        grad_w = (s * t).sum((0, 2, 3)).view(c)
        mean_g, mean_gx = alpha * su / m + beta * m1, alpha * sux / m + beta * m2
        grad_x = torch.addcmul(-s * mean_g, xhat, -s * mean_gx - gamma * t * s * s / m)
        grad_x.addcmul_(u, s * alpha).addcmul_(g, s * beta)
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
