"""Instance norm with a closed-form second derivative: GroupNorm(C, C)'s values, gradients and second derivatives."""

import pytest
import torch
from torch import nn

from raydd.models import norm
from raydd.models.norm import InstanceNorm


def pair(channels: int) -> tuple[InstanceNorm, nn.GroupNorm]:
    ours, theirs = InstanceNorm(channels).double(), nn.GroupNorm(channels, channels).double()
    with torch.no_grad():
        ours.weight.copy_(torch.randn(channels)); ours.bias.copy_(torch.randn(channels))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("blocks", [False, True], ids=["one_block", "blocks_of_rows"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 1, 6)])
def test_values_and_first_and_second_derivatives_are_group_norms(shape, blocks, monkeypatch):
    if blocks:  # maps "larger than the cache", in blocks of a few rows, the last one ragged
        monkeypatch.setattr(norm, "_CACHED", 8)
        monkeypatch.setattr(norm, "_BLOCK", 45)
    ours, theirs = pair(shape[1])
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x))
    f = lambda x, w, b: torch.func.functional_call(ours, {"weight": w, "bias": b}, (x,))
    inputs = (x, ours.weight.detach().clone().requires_grad_(True), ours.bias.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_the_double_backward_of_a_network_matches_group_norms(channels_last):
    """The unroll's pattern: a parameter gradient built with its graph, then its vector-Jacobian product."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours, theirs = pair(4)
    conv = nn.Conv2d(3, 4, 3, padding=1).double().to(memory_format=fmt)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    v = torch.randn(4, 3, 3, 3, dtype=torch.float64)

    def grads(norm):
        loss = norm(conv(x)).relu().pow(2).mean()
        (gw,) = torch.autograd.grad(loss, conv.weight, create_graph=True)
        return [gw, *torch.autograd.grad((gw * v).sum(), [x, conv.weight, norm.weight, norm.bias])]

    for a, b in zip(grads(ours), grads(theirs)):
        torch.testing.assert_close(a, b)


def test_it_keeps_group_norms_state_dict():
    assert InstanceNorm(8).state_dict().keys() == nn.GroupNorm(8, 8).state_dict().keys()
    assert isinstance(InstanceNorm(8), nn.GroupNorm)


def _formulas(x, weight, mean, rstd, g, u, p, q):
    """The module docstring's formulas, one operation at a time over whole maps."""
    n, c, m = x.shape[0], x.shape[1], x[0, 0].numel()
    s, gamma = rstd.view(n, c, 1, 1), weight.view(1, c, 1, 1)
    xhat = (x - mean.view(n, c, 1, 1)) * s
    dot = lambda a, b: torch.einsum("im,im->i", a.reshape(n * c, -1), b.reshape(n * c, -1)).view(n, c, 1, 1)  # noqa: E731
    su, sux, sug = u.sum((2, 3), keepdim=True), dot(u, xhat), dot(u, g)
    m1, m2 = g.sum((2, 3), keepdim=True) / m, dot(g, xhat) / m
    a = gamma * s
    alpha, beta = -a * m2, p.view(1, c, 1, 1) - a * sux / m
    grad_g = torch.addcmul((q.view(1, c, 1, 1) - a * su / m), xhat, beta).addcmul_(u, a)
    t = sug - m1 * su - m2 * sux
    mean_g, mean_gx = alpha * su / m + beta * m1, alpha * sux / m + beta * m2
    grad_x = torch.addcmul(-s * mean_g, xhat, -s * mean_gx - gamma * t * s * s / m)
    grad_x.addcmul_(u, s * alpha).addcmul_(g, s * beta)
    return grad_x, (s * t).sum((0, 2, 3)).view(c), grad_g


@pytest.mark.parametrize("shape", [(50, 16, 28, 28), (6, 128, 16, 16)])
def test_maps_within_the_cache_get_the_formulas_values_to_the_bit(shape):
    """Float32, one block: what the unroll's steps on such maps (the demo's) computed before blocks existed."""
    torch.manual_seed(0)
    n, c = shape[:2]
    x, g, u = torch.randn(shape) * 2 + 0.5, torch.randn(shape), torch.randn(shape)
    weight, p, q = torch.randn(c), torch.randn(c), torch.randn(c)
    _, mean, rstd = torch.ops.aten.native_group_norm(x, weight, torch.randn(c), n, c, x[0, 0].numel(), c, 1e-5)
    ctx = type("Ctx", (), {"saved_tensors": (x, weight, mean, rstd, g)})()
    grad_x, grad_w, _, _, grad_g = norm._NormGrad.backward(ctx, u, p, q)
    for ours, theirs in zip((grad_x, grad_w, grad_g), _formulas(x, weight, mean, rstd, g, u, p, q)):
        assert torch.equal(ours, theirs)
