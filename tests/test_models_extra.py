import pytest
import torch
from torch.func import functional_call

from raydd.models.alexnet import AlexNet
from raydd.models.resnet import ResNet18
from raydd.models.vgg import VGG11

MODELS = [ResNet18, VGG11, AlexNet]


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_forward_backward_functional(cls, channels, size):
    torch.manual_seed(0)
    model = cls(channels, 10, size)
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    torch.testing.assert_close(functional_call(model, params, (x,)), out)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_output_depends_on_the_input(cls, channels, size):
    """No map reaches 1×1 before an instance norm (which zeroes it): VGG-11 on 28 px grayscale once output a
    constant, so every cross-architecture check of Fashion-MNIST sets read 10%."""
    torch.manual_seed(0)
    out = cls(channels, 10, size)(torch.randn(2, channels, size, size))
    assert (out[0] - out[1]).abs().max() > 1e-3


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_other_norms_and_64px(cls, norm):
    model = cls(3, 5, 64, norm=norm).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("cls", MODELS)
def test_unknown_norm_raises(cls):
    with pytest.raises(ValueError, match="layer"):
        cls(3, 10, 32, norm="layer")


@pytest.mark.parametrize("cls,published", [(ResNet18, 11_173_962), (VGG11, 9_231_114)])
def test_width_scales_every_stage(cls, published):
    """64 is the published network (ResNet-18's 11.17M parameters at 3×32×32, 10 classes); width w has w / 64 of
    every conv's channels, so about (w / 64)² of its parameters."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(cls(3, 10, 32)) == count(cls(3, 10, 32, width=64))
    narrow = cls(1, 10, 28, width=16)
    convs = [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    wide = [m.out_channels for m in cls(1, 10, 28).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c * 4 for c in convs] == wide and max(convs) == 128
    assert narrow(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert 0.05 < count(cls(3, 10, 32, width=16)) / published < 0.07
