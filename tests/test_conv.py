"""Convolution with a hand-written second derivative: nn.Conv2d's values, gradients and second derivatives."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from raydd.models.conv import Conv2d, graph_only


def pair(cin: int, cout: int, **kw) -> tuple[Conv2d, nn.Conv2d]:
    ours = Conv2d(cin, cout, 3, **kw).double()
    theirs = nn.Conv2d(cin, cout, 3, **kw).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("cout", [3, 64], ids=["narrow", "first_layer_gemm"])  # 64: the input gradient by GEMM + fold
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=1), dict(padding=0, bias=False)],
                         ids=["same", "stride2", "nobias"])
def test_values_and_first_and_second_derivatives_are_conv2ds(kw, cout):
    ours, theirs = pair(2, cout, **kw)
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x))
    names = [n for n, _ in ours.named_parameters()]
    f = lambda x, *ps: torch.func.functional_call(ours, dict(zip(names, ps)), (x,))
    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in ours.parameters()))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("width", [4, 64], ids=["narrow", "first_layer_gemm"])
@pytest.mark.parametrize("leaf", [False, True], ids=["interior_input", "leaf_input"])
def test_the_double_backward_of_a_network_matches_conv2ds(leaf, width):
    """The unroll's pattern: parameter gradients built with their graph, then their vector-Jacobian product
    with respect to the images and the parameters."""
    torch.manual_seed(0)
    first, first_ref = pair(3, width, padding=1)
    second, second_ref = pair(width, 4, padding=1)
    images = torch.randn(5, 3, 8, 8, dtype=torch.float64, requires_grad=True)

    def grads(c1, c2):
        x = images if leaf else images * 1.5
        loss = c2(c1(x).tanh()).relu().pow(2).mean()
        params = [*c1.parameters(), *c2.parameters()]
        gs = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * torch.cos(torch.arange(g.numel(), dtype=g.dtype)).view_as(g)).sum() for g in gs)
        return [*gs, *torch.autograd.grad(dot, [images, *params])]

    for a, b in zip(grads(first, second), grads(first_ref, second_ref)):
        torch.testing.assert_close(a, b)


def test_the_first_order_pass_skips_an_input_gradient_no_one_uses():
    """Weights' gradient of a first layer whose input needs a gradient only later: no input-gradient kernel."""
    conv = Conv2d(3, 8, 3, padding=1)
    x = torch.randn(4, 3, 16, 16, requires_grad=True) * 2.0
    forward = 2 * 4 * 8 * 3 * 9 * 16 * 16
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(conv(x).square().sum(), conv.weight, create_graph=True)
    assert counter.get_total_flops() == 2 * forward  # the forward and the weight gradient, no input gradient
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(conv(x).square().sum(), [conv.weight, x])
    assert counter.get_total_flops() == 3 * forward


def test_graph_only_builds_the_same_vector_jacobian_product_without_the_weight_gradients():
    """The constant-memory unroll's recomputed step: the same VJP, bit for bit, and fewer convolutions."""
    torch.manual_seed(0)
    first, second = Conv2d(3, 4, 3, padding=1), Conv2d(4, 4, 3, padding=1)
    params, images = [*first.parameters(), *second.parameters()], torch.randn(5, 3, 8, 8, requires_grad=True)
    cotangents = [torch.randn_like(p) for p in params]

    def vjp(only_graph: bool):
        with FlopCounterMode(display=False) as counter:
            with graph_only() if only_graph else torch.enable_grad():
                loss = second(first(images * 1.5).tanh()).relu().pow(2).mean()
            gs = torch.autograd.grad(loss, params, create_graph=True)
        return gs, torch.autograd.grad(gs, [images, *params], grad_outputs=cotangents), counter.get_total_flops()

    (values, full, flops), (zeros, fast, fewer) = vjp(False), vjp(True)
    assert all(torch.equal(a, b) for a, b in zip(full, fast))
    assert all(z.abs().sum() == 0 for z in zeros) and all(v.abs().sum() > 0 for v in values)
    assert flops - fewer == 2 * 5 * 8 * 8 * 9 * (3 * 4 + 4 * 4)  # the two weight gradients' convolutions


def test_channels_last_and_grouped_convolutions_take_nn_conv2ds_path():
    ours, theirs = pair(4, 4, padding=1, groups=2)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))
    plain, ref = pair(4, 4, padding=1)
    xl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = plain(xl)
    assert "ConvolutionBackward" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, ref(xl))


def test_it_keeps_conv2ds_state_dict():
    assert Conv2d(3, 8, 3).state_dict().keys() == nn.Conv2d(3, 8, 3).state_dict().keys()
    assert isinstance(Conv2d(3, 8, 3), nn.Conv2d)
