"""Instance norm with a closed-form second derivative: GroupNorm(C, C)'s values, gradients and second derivatives."""

import pytest
import torch
from torch import nn

from raydd.models.norm import InstanceNorm


def pair(channels: int) -> tuple[InstanceNorm, nn.GroupNorm]:
    ours, theirs = InstanceNorm(channels).double(), nn.GroupNorm(channels, channels).double()
    with torch.no_grad():
        ours.weight.copy_(torch.randn(channels)); ours.bias.copy_(torch.randn(channels))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 1, 6)])
def test_values_and_first_and_second_derivatives_are_group_norms(shape):
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
