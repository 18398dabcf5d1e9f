"""2×2 average pooling by row sums and a GEMM: nn.AvgPool2d's values and derivatives, to every order the unroll takes."""

import pytest
import torch
import torch.nn.functional as F

from raydd.models.convnet import ConvNet
from raydd.models.pool import AvgPool2x2, avg_pool2x2


@pytest.mark.parametrize("shape", [(3, 4, 8, 6), (2, 5, 32, 32), (2, 3, 7, 7), (1, 2, 6, 5)])
def test_values_and_first_and_second_derivatives_are_avg_pool2d(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(avg_pool2x2(x), F.avg_pool2d(x, 2))
    assert torch.autograd.gradcheck(avg_pool2x2, (x,))
    assert torch.autograd.gradgradcheck(avg_pool2x2, (x,))


def test_a_hessian_vector_product_through_a_nonlinearity_matches_avg_pool2d():
    x, v = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True), torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def hvp(pool):
        (g,) = torch.autograd.grad((pool(x.tanh()) ** 2).sum(), x, create_graph=True)
        return g, torch.autograd.grad((g * v).sum(), x)[0]

    for ours, theirs in zip(hvp(avg_pool2x2), hvp(lambda t: F.avg_pool2d(t, 2))):
        torch.testing.assert_close(ours, theirs)


def test_channels_last_input_keeps_its_layout():
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    out = avg_pool2x2(x)
    torch.testing.assert_close(out, F.avg_pool2d(x, 2))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_convnet_pools_with_it():
    pools = [m for m in ConvNet(3, 10, 32, width=8).modules() if isinstance(m, AvgPool2x2)]
    assert len(pools) == 3
