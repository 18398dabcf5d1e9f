"""Pure distillation math: unroll gradients, sampling windows, sharding, guards."""

import pytest
import torch

from raydd.distill.guards import DivergedError, Guard
from raydd.distill.matching import matching_loss
from raydd.distill.sampling import interior_points, sample_segment, start_window
from raydd.distill.sharding import shard_indices
from raydd.distill.state import ShardState, make_optimizers
from raydd.distill.step import apply_step
from raydd.distill.unroll import Targets, UnrollSpec, plan_steps, unroll_constant_memory, unroll_plain
from raydd.models.convnet import ConvNet
from raydd.models.functional import FlatModel, flatten_params

D = {"min_start_epoch": 0, "max_start_epoch": 10, "max_start_epoch_init": 2, "window_grow_iters": 100,
     "syn_steps": 12, "expert_epochs": 2, "intermediate_points": 1, "intermediate_weight": 0.5,
     "continuous_start": False, "lr_img": 100.0, "momentum_img": 0.5, "lr_lr": 1e-5, "lr_label": 5.0, "ema": 0.0,
     "loss_threshold": None}


def _case(momentum: float, balanced: bool, soft: bool, dsa: bool = True):
    torch.manual_seed(0)
    net = ConvNet(1, 4, 8, width=8, depth=2)
    start = flatten_params(net)
    images = torch.randn(12, 1, 8, 8, requires_grad=True)
    labels = torch.arange(4).repeat(3)
    logits = torch.randn(12, 4, requires_grad=True) if soft else None
    lr = torch.tensor(0.02, requires_grad=True)
    plan = plan_steps(12, 5, 6, torch.Generator().manual_seed(1))
    targets = Targets(start, [2, 5], [start + 0.01 * torch.randn_like(start), start + 0.03 * torch.randn_like(start)], [0.5, 1.0])
    leaves = [images, lr] + ([logits] if soft else [])
    return (FlatModel(net), images, labels, logits, lr, start, plan, targets, UnrollSpec(momentum, balanced, dsa)), leaves


@pytest.mark.parametrize("momentum,balanced,soft", [(0.0, False, False), (0.5, True, True), (0.9, False, True)])
def test_constant_memory_gradient_equals_plain(momentum, balanced, soft):
    args, leaves = _case(momentum, balanced, soft)
    loss = unroll_plain(*args)
    loss.backward()
    plain = [leaf.grad.clone() for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    loss_cm = unroll_constant_memory(*args, leaves=leaves)
    assert torch.allclose(loss.detach(), loss_cm, rtol=1e-5)
    for a, b in zip(plain, [leaf.grad for leaf in leaves]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_matching_loss_is_normalised():
    start, target = torch.zeros(5), torch.ones(5)
    assert matching_loss(start, target, start) == pytest.approx(1.0)
    assert matching_loss(target, target, start) == pytest.approx(0.0)
    assert matching_loss(0.5 * target, target, start) == pytest.approx(0.25)


def test_datm_window_grows_then_stays():
    assert start_window(0, D) == (0.0, 2.0)
    assert start_window(50, D) == (0.0, 6.0)
    assert start_window(500, D) == (0.0, 10.0)
    assert start_window(0, {**D, "window_grow_iters": 0}) == (0.0, 10.0)


def test_segments_respect_window_and_intermediate_points():
    gen = torch.Generator().manual_seed(0)
    for it in range(0, 200, 7):
        seg = sample_segment(it, [3, 4], D, gen)
        lo, hi = start_window(it, D)
        assert lo <= seg.start <= hi and seg.start == int(seg.start)
        assert seg.expert in (3, 4)
        assert seg.target_epochs == [seg.start + 1, seg.start + 2] and seg.target_steps == [6, 12]
        assert seg.weights == [0.5, 1.0]
    seg = sample_segment(0, [0], {**D, "expert_epochs": 1}, gen)  # no integer epoch strictly inside: final target only
    assert seg.target_epochs == [seg.start + 1] and seg.target_steps == [12]
    seg = sample_segment(0, [0], {**D, "continuous_start": True, "window_grow_iters": 0}, gen)
    assert seg.start != int(seg.start) and seg.target_epochs[-1] == pytest.approx(seg.start + 2)
    assert interior_points(D) == [(1.0, 6)] and interior_points({**D, "expert_epochs": 1}) == []
    assert interior_points({**D, "expert_epochs": 1, "continuous_start": True}) == [(0.5, 6)]
    assert interior_points({**D, "intermediate_weight": 0.0}) == []


@pytest.mark.parametrize("ipc,world", [(1, 2), (10, 2), (7, 3), (50, 4)])
def test_sharding_owns_each_image_once_and_stratifies(ipc, world):
    labels = torch.arange(10).repeat_interleave(ipc)[torch.randperm(10 * ipc)]
    shards = shard_indices(labels, world)
    everything = torch.cat(shards).sort().values
    assert torch.equal(everything, torch.arange(10 * ipc))
    if ipc >= world:
        for s in shards:
            counts = torch.bincount(labels[s], minlength=10)
            assert counts.min() >= ipc // world and counts.max() <= -(-ipc // world)


def _state():
    images = torch.zeros(4, 1, 2, 2, requires_grad=True)
    s = ShardState(torch.arange(4), images, torch.arange(4), None, torch.tensor(0.01, requires_grad=True), None)
    return s, make_optimizers(s, D)


def test_bad_lr_step_is_rolled_back_and_repeated_failures_stop():
    state, opts = _state()
    guard = Guard(max_lr=1.0, patience=3)
    state.images.grad = torch.ones_like(state.images)
    state.lr.grad = torch.tensor(1e4)  # lr_lr·grad pushes lr negative
    res = apply_step(state, opts, 0.5, True, guard, D, 0)
    assert not res.applied and "lr" in res.reason
    assert torch.equal(state.images.detach(), torch.zeros(4, 1, 2, 2)) and float(state.lr) == pytest.approx(0.01)
    state.lr.grad = torch.tensor(-1e-3)
    assert apply_step(state, opts, 0.5, True, guard, D, 1).applied
    assert not torch.equal(state.images.detach(), torch.zeros(4, 1, 2, 2))
    with pytest.raises(DivergedError, match="diverged at iteration"):
        for it in range(3):
            apply_step(state, opts, float("nan"), True, guard, D, 2 + it)


def test_loss_threshold_skips_without_counting_as_failure():
    state, opts = _state()
    guard = Guard(max_lr=1.0, patience=1)
    state.images.grad, state.lr.grad = torch.ones_like(state.images), torch.tensor(0.0)
    res = apply_step(state, opts, 5.0, True, guard, {**D, "loss_threshold": 1.0}, 0)
    assert not res.applied and "threshold" in res.reason and guard.total == 0


def test_representative_init_medoids_are_real_images_of_their_class():
    from raydd.distill.init import representatives

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 4, 4, generator=gen)
    labels = torch.arange(3).repeat_interleave(20)
    images, ys = representatives(x, labels, 4, "kmeans_medoid", seed=0)
    centres, _ = representatives(x, labels, 4, "kmeans", seed=0)
    assert images.shape == (12, 1, 4, 4) and ys.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for img, y in zip(images, ys):
        assert (x[labels == y] == img).flatten(1).all(1).any()  # a real image of its own class
    assert len({tuple(img.flatten().tolist()) for img in images}) == 12  # one per cluster
    assert not torch.equal(images, centres)  # plain k-means keeps the averages


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("unroll", [unroll_plain, unroll_constant_memory])
def test_unroll_on_cuda_matches_cpu(unroll):
    grads = []
    for device in ("cpu", "cuda"):
        (fm, images, labels, logits, lr, start, plan, targets, spec), _ = _case(0.5, True, True)
        fm = FlatModel(fm.module.to(device))
        leaves = [t.detach().to(device).requires_grad_() for t in (images, lr, logits)]
        args = (fm, leaves[0], labels.to(device), leaves[2], leaves[1], start.to(device), plan,
                Targets(start.to(device), targets.steps, [t.to(device) for t in targets.points], targets.weights), spec)
        if unroll is unroll_plain:
            unroll(*args).backward()
        else:
            unroll(*args, leaves=leaves)
        grads.append([leaf.grad.cpu() for leaf in leaves])
    for cpu, cuda in zip(*grads):
        torch.testing.assert_close(cuda, cpu, rtol=1e-3, atol=1e-3 * cpu.abs().max().item())
