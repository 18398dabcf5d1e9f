"""The flat-parameter view: same function and gradients as the module; snapshots; layouts."""

import pytest
import torch

from raydd.core.images import DatasetSpec
from raydd.models.functional import FlatModel, ParamLayout, flatten_params, load_flat
from raydd.models.registry import build_model
from raydd.specs import ModelSpec

CASES = {
    "convnet": (ModelSpec("convnet", "instance", depth=3, width=16), DatasetSpec("t", 10, 3, 32, (0.5,) * 3, (0.5,) * 3)),
    "convnet_mnist_batchnorm": (ModelSpec("convnet", "batch", depth=3, width=8),
                                DatasetSpec("t", 10, 1, 28, (0.5,), (0.5,))),
    "resnet18": (ModelSpec("resnet18", "instance"), DatasetSpec("t", 5, 3, 16, (0.5,) * 3, (0.5,) * 3)),
    "vgg11": (ModelSpec("vgg11", "instance"), DatasetSpec("t", 5, 3, 16, (0.5,) * 3, (0.5,) * 3)),
    "alexnet": (ModelSpec("alexnet", "instance"), DatasetSpec("t", 5, 3, 16, (0.5,) * 3, (0.5,) * 3)),
}


def _model(name):
    torch.manual_seed(0)
    cfg, spec = CASES[name]
    return build_model(cfg, spec).eval(), torch.randn(3, spec.channels, spec.image_size, spec.image_size)


@pytest.mark.parametrize("name", CASES)
def test_flat_view_matches_module(name):
    model, x = _model(name)
    x_module = x.clone().requires_grad_()
    out = model(x_module)
    out.square().sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    flat = flatten_params(model).requires_grad_()
    x_flat = x.clone().requires_grad_()
    out_flat = FlatModel(model)(flat, x_flat)
    out_flat.square().sum().backward()

    torch.testing.assert_close(out_flat, out)
    torch.testing.assert_close(flat.grad, grads)
    torch.testing.assert_close(x_flat.grad, x_module.grad)


def test_flat_view_uses_the_given_vector_not_the_module():
    model, x = _model("convnet")
    flat = flatten_params(model)
    expected = model(x)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    torch.testing.assert_close(FlatModel(model)(flat, x), expected)


def test_flatten_is_a_snapshot():
    model, x = _model("convnet")
    before = flatten_params(model)
    kept = before.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().sum().backward()
    opt.step()
    assert torch.equal(before, kept)
    assert not torch.equal(flatten_params(model), before)
    assert before.dtype == torch.float32 and before.numel() == ParamLayout.of(model).numel


def test_load_flat_round_trip():
    model, x = _model("convnet")
    other, _ = _model("convnet")
    torch.manual_seed(1)
    target = torch.randn(ParamLayout.of(model).numel)
    load_flat(model, target)
    assert torch.equal(flatten_params(model), target)
    load_flat(other, flatten_params(model))
    torch.testing.assert_close(other(x), model(x))
    with pytest.raises(ValueError, match="needs"):
        load_flat(model, target[:-1])


def test_layout_json_round_trip():
    import json

    model, _ = _model("resnet18")
    layout = ParamLayout.of(model)
    again = ParamLayout.from_json(json.loads(json.dumps(layout.to_json())))
    assert again == layout
    assert again.numel == sum(p.numel() for p in model.parameters())
    flat = flatten_params(model)
    views = again.unflatten(flat)
    assert list(views) == [n for n, _ in model.named_parameters()]
    for (name, p) in model.named_parameters():
        assert torch.equal(views[name], p.detach())
