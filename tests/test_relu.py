"""ReLU whose backward has no derivative in the saved output: nn.ReLU's values and derivatives, to the unroll's order."""

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from raydd.models.convnet import ConvNet
from raydd.models.relu import ReLU


class _Ops(TorchDispatchMode):
    """Records the ATen operators run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_values_and_first_and_second_derivatives_are_relus():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    x[x.abs() < 1e-3] = 0.5  # no value within gradcheck's step of the kink
    x.requires_grad_(True)
    torch.testing.assert_close(ReLU()(x), F.relu(x))
    assert torch.autograd.gradcheck(ReLU(), (x,))
    assert torch.autograd.gradgradcheck(ReLU(), (x,))


def test_the_unrolls_vector_jacobian_product_is_relus_without_its_zero_map():
    """A parameter gradient built with its graph, then its VJP: torch's ReLU's numbers, without the all-zero
    map (and its add) that torch's double backward builds for the saved output."""
    torch.manual_seed(0)
    w = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    x, v = torch.randn(8, 5, dtype=torch.float64, requires_grad=True), torch.randn(6, 5, dtype=torch.float64)

    def vjp(act):
        (g,) = torch.autograd.grad((act(x @ w.t()) ** 2).sum(), w, create_graph=True)
        with _Ops() as ops:
            second = torch.autograd.grad((g * v).sum(), [x, w])
        return [g, *second], ops.names

    (ours, our_ops), (theirs, their_ops) = vjp(ReLU()), vjp(F.relu)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert "aten.zeros_like.default" in their_ops and "aten.zeros_like.default" not in our_ops
    assert our_ops.count("aten.add.Tensor") == their_ops.count("aten.add.Tensor") - 1


def test_the_convnet_uses_it():
    assert sum(isinstance(m, ReLU) for m in ConvNet(3, 10, 32, width=8).modules()) == 3
