import pytest
import torch

from raydd.core.dsa import DEFAULT_STRATEGY, DSAParams, dsa, parse_strategy

GEOMETRIC = ["flip", "crop", "scale", "rotate", "cutout"]


def _images(n: int = 8, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_gradient_reaches_images():
    x = _images().requires_grad_()
    (dsa(x, seed=3) * _images(seed=1)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy", ["crop", "flip", "scale", "rotate", "cutout", "color"])
def test_gradcheck(strategy):
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dsa(t, seed=5, strategy=strategy), (x,))


def test_same_seed_is_deterministic():
    x = _images()
    assert torch.equal(dsa(x, seed=7), dsa(x.clone(), seed=7))


@pytest.mark.parametrize("strategy", GEOMETRIC)
def test_same_transform_for_different_batches(strategy):
    # Geometric ops are linear in x, so shared per-sample transforms imply additivity.
    a, b = _images(seed=1), _images(seed=2)
    torch.testing.assert_close(dsa(a + b, 11, strategy), dsa(a, 11, strategy) + dsa(b, 11, strategy))


def test_flip_pattern_shared_across_batches():
    a, b = _images(n=32, seed=1), _images(n=32, seed=2)
    flipped_a = (dsa(a, 4, "flip") == a.flip(3)).flatten(1).all(1)
    flipped_b = (dsa(b, 4, "flip") == b.flip(3)).flatten(1).all(1)
    assert torch.equal(flipped_a, flipped_b) and 0 < flipped_a.sum() < 32


def test_different_seeds_differ():
    x = _images()
    assert not torch.allclose(dsa(x, seed=1), dsa(x, seed=2))


def test_batch_mode_transforms_every_sample_alike():
    x = _images(n=1).expand(6, -1, -1, -1).contiguous()
    out = dsa(x, seed=9, batch_mode=True)
    assert torch.allclose(out, out[:1].expand_as(out))
    per_sample = dsa(x, seed=9)
    assert not torch.allclose(per_sample, per_sample[:1].expand_as(per_sample))


def test_one_of_applies_a_single_group():
    x = _images(n=16)
    for seed in range(6):
        out = dsa(x, seed, "brightness_flip", DSAParams(one_of=True))
        shifted = torch.allclose((out - x).amin((1, 2, 3)), (out - x).amax((1, 2, 3)), atol=1e-5)
        flipped = all(torch.equal(o, xi) or torch.equal(o, xi.flip(2)) for o, xi in zip(out, x))
        assert shifted != flipped


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [7, 16])
def test_shape_preserved(channels, size):
    x = _images(n=4, c=channels, size=size)
    assert dsa(x, seed=0).shape == x.shape


def test_saturation_is_identity_on_one_channel():
    x = _images(c=1)
    torch.testing.assert_close(dsa(x, 0, "saturation"), x)


def test_unknown_transform_raises():
    with pytest.raises(ValueError, match="blur"):
        parse_strategy("color_blur")
    with pytest.raises(ValueError, match="blur"):
        dsa(_images(), 0, "flip_blur")


@pytest.mark.parametrize("strategy", ["", "none", "None"])
def test_none_is_identity(strategy):
    x = _images()
    assert dsa(x, 0, strategy) is x


def test_parse_default():
    assert parse_strategy(DEFAULT_STRATEGY) == ["color", "crop", "cutout", "flip", "scale", "rotate"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _images()
    torch.testing.assert_close(dsa(x.cuda(), seed=3).cpu(), dsa(x, seed=3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["color_crop_cutout_flip_scale_rotate", "crop", "cutout", "scale"])
def test_part_of_a_batch_gets_the_transforms_of_the_whole(strategy):
    """Sharded distillation: a worker holding rows [1, 4, 5] of a batch of 7 sees exactly those rows' augmentation."""
    x = torch.randn(7, 3, 8, 8)
    rows = torch.tensor([1, 4, 5])
    for seed in range(6):
        whole = dsa(x, seed, strategy)
        part = dsa(x[rows], seed, strategy, rows=rows, total=7)
        torch.testing.assert_close(part, whole[rows])
