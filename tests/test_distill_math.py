"""Pure distillation math: unroll gradients, sampling windows, sharding, guards."""

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from raydd.config import compose
from raydd.core.train import per_sample_loss
from raydd.distill.guards import DivergedError, Guard
from raydd.distill.matching import matching_loss
from raydd.distill.sampling import balance_scale, interior_points, sample_segment, start_window
from raydd.distill.sharding import ShardMap, plan_steps, shard_indices
from raydd.distill.state import ShardState, make_optimizers
from raydd.distill.step import apply_step, unroll_spec
from raydd.distill.unroll import Targets, UnrollSpec, unroll
from raydd.models.convnet import ConvNet
from raydd.models.functional import FlatModel, flatten_params
from raydd.specs import ConfigError, DistillSpec, check_distill

D = replace(DistillSpec.from_config(compose([])["distill"]), min_start_epoch=0, max_start_epoch=10,
            max_start_epoch_init=2, window_grow_iters=100, syn_steps=12, expert_epochs=2, intermediate_points=1,
            intermediate_weight=0.5, continuous_start=False, lr_img=100.0, momentum_img=0.5, lr_lr=1e-5, lr_label=5.0,
            ema=0.0, loss_threshold=None, lr_param="plain", lr_init=0.01, lr_backoff=0.5)


def case(momentum: float, balanced: bool, soft: bool, n: int = 12, batch: int = 6, steps: int = 5):
    """A tiny unroll problem: the whole set, a plan over it, targets at steps 2 and ``steps``."""
    torch.manual_seed(0)
    net = ConvNet(1, 4, 8, width=8, depth=2)
    start = flatten_params(net)
    images = torch.randn(n, 1, 8, 8)
    labels = torch.arange(4).repeat(n // 4)
    logits = torch.randn(n, 4) if soft else None
    targets = Targets(start, [2, steps], [start + 0.01 * torch.randn_like(start), start + 0.03 * torch.randn_like(start)],
                      [0.5, 1.0])
    return net, images, labels, logits, start, targets, UnrollSpec(momentum), dict(syn_steps=steps, batch=batch, balanced=balanced)


def autograd_oracle(net, images, labels, soft, lr, start, targets, spec, steps):
    """The textbook unroll: one differentiable graph through every step, then ``backward`` (the reference's way)."""
    from raydd.core.dsa import dsa
    from raydd.distill.matching import matching_loss

    fm, theta, vel, matched = FlatModel(net), start.clone().requires_grad_(True), torch.zeros_like(start), {}
    for i, st in enumerate(steps):
        x = dsa(images[st.rows], st.seed, rows=st.positions, total=st.size)
        per = per_sample_loss(fm(theta, x), labels[st.rows], None if soft is None else soft[st.rows])
        (g,) = torch.autograd.grad((per * st.weights).sum(), theta, create_graph=True)
        vel = spec.momentum * vel + g
        theta = theta - lr * vel
        matched[i + 1] = theta
    loss = sum(w * matching_loss(matched[s], p, targets.start) for s, p, w in zip(targets.steps, targets.points, targets.weights))
    loss.backward()
    return loss.detach()


def sharded_grads(world: int, rank: int, problem, kept: int | None, reduce=None, device: str = "cpu",
                  channels_last: bool = False):
    """This rank's image/soft-label gradients (scattered into whole-set tensors), lr gradient and loss."""
    net, images, labels, soft, start, targets, spec, plan_args = problem
    shards = ShardMap.of(labels, world)
    mine = (shards.owner == rank).nonzero().squeeze(1)
    mine = mine[torch.argsort(shards.local[mine])]
    x = images[mine].clone().to(device).requires_grad_(True)
    s = soft[mine].clone().to(device).requires_grad_(True) if soft is not None else None
    plan = plan_steps(labels, shards, rank, plan_args["syn_steps"], plan_args["batch"], plan_args["balanced"],
                      torch.Generator().manual_seed(1))
    spec = UnrollSpec(spec.momentum, kept_graphs=kept)
    targets = Targets(targets.start.to(device), targets.steps, [p.to(device) for p in targets.points], targets.weights)
    out = unroll(FlatModel(net.to(device), channels_last), x, labels[mine].to(device), s, torch.tensor(0.02, device=device),
                 start.to(device), plan, targets, spec, **({"reduce": reduce} if reduce else {}))
    gx = torch.zeros_like(images)
    gx[mine] = x.grad.cpu()
    gs = None
    if soft is not None:
        gs = torch.zeros_like(soft)
        gs[mine] = s.grad.cpu()
    return gx, gs, out.lr_grad.cpu(), out.loss.cpu()


@pytest.mark.parametrize("momentum,balanced,soft", [(0.0, False, False), (0.5, True, True), (0.9, False, True)])
@pytest.mark.parametrize("kept", [None, 0, 2], ids=["plain", "constant_memory", "constant_memory-kept2"])
def test_unroll_gradient_equals_autograd_through_the_whole_loop(momentum, balanced, soft, kept):
    problem = case(momentum, balanced, soft)
    net, images, labels, logits, start, targets, spec, plan_args = problem
    gx, gs, lr_grad, loss = sharded_grads(1, 0, problem, kept)
    order = torch.argsort(labels, stable=True)  # one worker's shard: the set in class order
    x = images[order].clone().requires_grad_(True)
    s = logits[order].clone().requires_grad_(True) if soft else None
    lr = torch.tensor(0.02, requires_grad=True)
    plan = plan_steps(labels, ShardMap.of(labels, 1), 0, plan_args["syn_steps"], plan_args["batch"], balanced,
                      torch.Generator().manual_seed(1))
    ref_loss = autograd_oracle(net, x, labels[order], s, lr, start, targets, spec, plan)
    gx, gs = gx[order], (gs[order] if soft else None)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    for ours, ref in [(gx, x.grad), (lr_grad, lr.grad), *([(gs, s.grad)] if soft else [])]:
        assert ref.abs().sum() > 0
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("kept", [0, 2], ids=["constant_memory", "constant_memory-kept2"])
def test_recomputed_steps_give_the_plain_unroll_gradient_bit_for_bit(kept, channels_last):
    """The forward pass and the recomputation take the same kernels, so recomputing changes no bit."""
    problem = case(0.5, True, True)
    for ours, plain in zip(sharded_grads(1, 0, problem, kept, channels_last=channels_last),
                           sharded_grads(1, 0, problem, None, channels_last=channels_last)):
        assert torch.equal(ours, plain)


def _sharded_worker(rank: int, world: int, port: int, kept: int | None, backend: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def reduce(t):
        dist.all_reduce(t)
        return t

    problem = case(0.5, True, True, n=12, batch=8, steps=4)
    gx, gs, lr_grad, loss = (t.to(device) for t in sharded_grads(world, rank, problem, kept, reduce, device))
    dist.all_reduce(gx)
    dist.all_reduce(gs)
    if rank == 0:
        torch.save({k: v.cpu() for k, v in {"images": gx, "soft": gs, "lr": lr_grad, "loss": loss}.items()}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("world,kept,backend", [
    (2, None, "gloo"), (3, 0, "gloo"), (2, 1, "gloo"),
    pytest.param(2, None, "nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="NCCL needs a GPU per process: 2 GPUs")]),
])
def test_sharded_unroll_gives_the_one_worker_gradients(tmp_path, world, kept, backend):
    """Real all-reduces across processes (gloo on CPU, NCCL on GPUs): N workers compute the 1-worker image,
    soft-label and lr gradients."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "grads.pt")
    mp.spawn(_sharded_worker, args=(world, port, kept, backend, out), nprocs=world, join=True)
    sharded = torch.load(out, weights_only=True)
    gx, gs, lr_grad, loss = sharded_grads(1, 0, case(0.5, True, True, n=12, batch=8, steps=4), kept)
    assert float(sharded["loss"]) == pytest.approx(float(loss), rel=1e-5)
    for name, ref in [("images", gx), ("soft", gs), ("lr", lr_grad)]:
        assert ref.abs().sum() > 0
        torch.testing.assert_close(sharded[name], ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_every_worker_holds_its_share_of_each_mini_batch():
    labels = torch.arange(10).repeat_interleave(3)
    for world in (1, 2, 4):
        shards = ShardMap.of(labels, world)
        plans = [plan_steps(labels, shards, r, 7, 8, True, torch.Generator().manual_seed(5)) for r in range(world)]
        for parts in zip(*plans):
            assert len({p.seed for p in parts}) == 1 and {p.size for p in parts} == {8}
            positions = torch.cat([p.positions for p in parts]).sort().values
            assert torch.equal(positions, torch.arange(8))
            assert sum(float(p.weights.sum()) for p in parts) == pytest.approx(1.0)


def test_matching_loss_is_normalised():
    start, target = torch.zeros(5), torch.ones(5)
    assert matching_loss(start, target, start) == pytest.approx(1.0)
    assert matching_loss(target, target, start) == pytest.approx(0.0)
    assert matching_loss(0.5 * target, target, start) == pytest.approx(0.25)


def test_datm_window_grows_then_stays():
    assert start_window(0, D) == (0.0, 2.0)
    assert start_window(50, D) == (0.0, 6.0)
    assert start_window(500, D) == (0.0, 10.0)
    assert start_window(0, replace(D, window_grow_iters=0)) == (0.0, 10.0)


def test_segments_respect_window_and_intermediate_points():
    gen = torch.Generator().manual_seed(0)
    for it in range(0, 200, 7):
        seg = sample_segment(it, [3, 4], D, gen)
        lo, hi = start_window(it, D)
        assert lo <= seg.start < hi and seg.start == int(seg.start)
        assert seg.expert in (3, 4)
        assert seg.target_epochs == [seg.start + 1, seg.start + 2] and seg.target_steps == [6, 12]
        assert seg.weights == [0.5, 1.0] and seg.inner_scale == 1.0
    seg = sample_segment(0, [0], replace(D, expert_epochs=1), gen)  # no integer epoch strictly inside: final target only
    assert seg.target_epochs == [seg.start + 1] and seg.target_steps == [12]
    seg = sample_segment(0, [0], replace(D, continuous_start=True, window_grow_iters=0), gen)
    assert seg.start != int(seg.start) and seg.target_epochs[-1] == pytest.approx(seg.start + 2)
    assert interior_points(D) == [(1.0, 6)] and interior_points(replace(D, expert_epochs=1)) == []
    assert interior_points(replace(D, expert_epochs=1, continuous_start=True)) == [(0.5, 6)]
    assert interior_points(replace(D, intermediate_weight=0.0)) == []


def test_intermediate_targets_pair_epoch_e_with_step_n_over_m_times_e_as_the_reference():
    """AST's distill.py: epoch t + e is matched after (syn_steps // expert_epochs)·e steps, e = 1..M − 1."""
    ast = replace(D, syn_steps=20, expert_epochs=3, intermediate_weight=1.0)
    assert interior_points(replace(ast, intermediate_points=None)) == [(1.0, 6), (2.0, 12)]
    assert interior_points(replace(ast, intermediate_points=2)) == [(1.0, 6), (2.0, 12)]
    assert interior_points(replace(ast, intermediate_points=1)) == [(1.0, 6)]  # not epoch 2 at step 10
    assert interior_points(replace(ast, expert_epochs=4, intermediate_points=1)) == [(2.0, 10)]
    seg = sample_segment(0, [0], replace(ast, intermediate_points=None), torch.Generator().manual_seed(0))
    assert seg.target_epochs == [seg.start + 1, seg.start + 2, seg.start + 3] and seg.target_steps == [6, 12, 20]
    assert seg.weights == [1.0, 1.0, 1.0]


def test_temperature_and_dsa_strategy_reach_the_inner_loop():
    d = DistillSpec.from_config(compose(["distill.temperature=2.5", "distill.dsa_strategy=crop_flip",
                                         "distill.student_momentum=0.9", "distill.unroll=constant_memory",
                                         "distill.kept_graphs=3"])["distill"])
    assert unroll_spec(d) == UnrollSpec(momentum=0.9, dsa=True, dsa_strategy="crop_flip", temperature=2.5, kept_graphs=3)
    assert unroll_spec(replace(d, unroll="plain", kept_graphs=0)).kept_graphs is None


def starts(d: DistillSpec, iteration: int = 0, draws: int = 400) -> set[float]:
    gen = torch.Generator().manual_seed(1)
    return {sample_segment(iteration, [0], d, gen).start for _ in range(draws)}


def test_start_window_upper_end_is_exclusive_as_the_references_randint():
    """MTT/AST: np.random.randint(0, max_start_epoch); DATM: randint(min_start, init + int((max − init)·it/grow))."""
    assert starts(replace(D, max_start_epoch=3, window_grow_iters=0)) == {0.0, 1.0, 2.0}
    assert starts(D) == {0.0, 1.0}                                   # DATM, iteration 0: [0, 2)
    assert starts(D, iteration=30) == {0.0, 1.0, 2.0, 3.0}           # 2 + int(8·30/100) = 4
    grown = replace(D, max_start_epoch=55, max_start_epoch_init=0, window_grow_iters=11)
    assert start_window(3, grown) == (0.0, 15.0)  # 55·3/11, not (3/11)·55 = 14.999…
    with pytest.raises(ConfigError, match="non-empty"):
        check_distill(replace(D, min_start_epoch=3, max_start_epoch=3, max_start_epoch_init=None), 10, window=True)
    check_distill(replace(D, max_start_epoch=9, max_start_epoch_init=None, expert_epochs=1), 9, window=True)  # last start 8
    with pytest.raises(ConfigError, match="max_start_epoch_init"):
        check_distill(replace(D, max_start_epoch_init=0), 20, window=True)


def test_balanced_inner_loss_scales_by_the_start_epoch_as_the_reference():
    """distill.py --balance_loss, h = max_start_epoch // 2 = 10: t ≥ h: ×log₅(t − h + 8), else ÷log₅(h − t + 8)."""
    assert balance_scale(0, 20) == pytest.approx(1 / 1.7958889)   # ÷ log₅ 18
    assert balance_scale(9, 20) == pytest.approx(1 / 1.3652124)   # ÷ log₅ 9
    assert balance_scale(10, 20) == pytest.approx(1.2920297)      # × log₅ 8
    assert balance_scale(19, 20) == pytest.approx(1.7603744)      # × log₅ 17
    d = replace(D, balanced_inner_loss="epoch", max_start_epoch=20, window_grow_iters=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        seg = sample_segment(0, [0], d, gen)
        assert seg.inner_scale == balance_scale(seg.start, 20)
    labels = torch.arange(4).repeat(3)
    plan = plan_steps(labels, ShardMap.of(labels, 1), 0, 3, None, False, gen, scale=0.75)
    assert all(float(st.weights.sum()) == pytest.approx(0.75) for st in plan)


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
    state.lr_param.grad = torch.tensor(1e4)  # lr_lr·grad pushes lr negative
    res = apply_step(state, opts, 0.5, True, guard, D, 0)
    assert not res.applied and "lr" in res.reason
    assert torch.equal(state.images.detach(), torch.zeros(4, 1, 2, 2)) and float(state.lr) == pytest.approx(0.01)
    assert opts["lr"].param_groups[0]["lr"] == pytest.approx(0.5 * D.lr_lr), "the lr's own step backs off"
    state.lr_param.grad = torch.tensor(-1e-3)
    assert apply_step(state, opts, 0.5, True, guard, D, 1).applied
    assert not torch.equal(state.images.detach(), torch.zeros(4, 1, 2, 2))
    with pytest.raises(DivergedError, match="diverged at iteration"):
        for it in range(3):
            apply_step(state, opts, float("nan"), True, guard, D, 2 + it)


def test_log_lr_stays_positive_and_first_step_matches_plain():
    from raydd.distill.state import new_state

    grads = {}
    for param in ("plain", "log"):
        d = replace(D, lr_param=param)
        state = new_state(torch.arange(4), torch.zeros(4, 1, 2, 2), torch.arange(4), None, d, torch.device("cpu"))
        opts = make_optimizers(state, d)
        state.images.grad = torch.zeros_like(state.images)
        state.set_lr_grad(torch.tensor(300.0))  # plain SGD: lr 0.01 - 1e-5·300 = 0.007
        apply_step(state, opts, 0.5, True, Guard(1.0, 3), d, 0)
        grads[param] = float(state.lr)
        for it in range(1, 4):  # a gradient that would push a plain lr far below zero
            state.set_lr_grad(torch.tensor(1e4))
            res = apply_step(state, opts, 0.5, True, Guard(1.0, 3), d, it)
            assert res.applied == (param == "log") and float(state.lr) > 0
    assert grads["plain"] == pytest.approx(0.007)
    assert grads["log"] == pytest.approx(0.01 * math.exp(-0.3), rel=1e-4)  # the same first move, to first order


def test_loss_threshold_skips_without_counting_as_failure():
    state, opts = _state()
    guard = Guard(max_lr=1.0, patience=1)
    state.images.grad, state.lr_param.grad = torch.ones_like(state.images), torch.tensor(0.0)
    res = apply_step(state, opts, 5.0, True, guard, replace(D, loss_threshold=1.0), 0)
    assert not res.applied and "threshold" in res.reason and guard.total == 0


@pytest.mark.parametrize("param", ["plain", "log"])
def test_threshold_patience_backs_the_lr_off_after_skips_in_a_row(param):
    from raydd.distill.state import new_state

    for patience in (3, None):
        d = replace(D, lr_param=param, loss_threshold=1.0, threshold_patience=patience, lr_backoff=0.5)
        state = new_state(torch.arange(4), torch.zeros(4, 1, 2, 2), torch.arange(4), None, d, torch.device("cpu"))
        opts = make_optimizers(state, d)
        lr_of_lr, guard = opts["lr"].param_groups[0]["lr"], Guard(1.0, 5)
        state.images.grad, state.lr_param.grad = torch.zeros_like(state.images), torch.tensor(0.0)
        apply_step(state, opts, 5.0, True, guard, d, 0)
        apply_step(state, opts, 0.5, True, guard, d, 1)  # applied: the streak starts again
        reasons = [apply_step(state, opts, 5.0, True, guard, d, it).reason for it in range(2, 5)]
        assert guard.skipped == 4 and guard.total == 0
        if patience is None:  # DATM's code: skip on, the lr untouched
            assert float(state.lr) == pytest.approx(0.01) and opts["lr"].param_groups[0]["lr"] == lr_of_lr
            continue
        assert reasons[-1] == "loss 5.000 above threshold 1.0; 3 in a row: lr backed off to 0.005"
        assert "backed off" not in reasons[0] and guard.skipped_in_a_row == 0
        assert float(state.lr) == pytest.approx(0.005) and opts["lr"].param_groups[0]["lr"] == pytest.approx(lr_of_lr / 2)
        assert not opts["lr"].state  # the momentum that carried the lr up is dropped


def test_threshold_stall_warns_when_most_steps_were_skipped():
    from raydd.distill.stage import threshold_stall

    d = replace(D, loss_threshold=1.0, threshold_patience=None, max_rejected_fraction=0.5)
    stuck = [{"iteration": i + 1, "applied": i < 61, "lr": 0.333, "skipped": max(0, i - 60)} for i in range(200)]
    note = threshold_stall(stuck, d)  # the large-IPC DATM run: stuck at lr 0.333 from iteration 62
    assert note.startswith("139 of 200 steps were skipped above distill.loss_threshold=1 (the last applied at iteration 61")
    assert "distill.threshold_patience" in note
    assert "threshold_patience" not in threshold_stall(stuck, replace(d, threshold_patience=5))
    assert threshold_stall(stuck[:100], d) is None and threshold_stall([], d) is None


def test_representative_init_medoids_are_real_images_of_their_class():
    from raydd.distill.init import representatives

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 4, 4, generator=gen)
    labels = torch.arange(3).repeat_interleave(20)
    images, ys = representatives(labels, lambda i: x[i], 4, "kmeans_medoid", seed=0)
    centres, _ = representatives(labels, lambda i: x[i], 4, "kmeans", seed=0)
    assert images.shape == (12, 1, 4, 4) and ys.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for img, y in zip(images, ys):
        assert (x[labels == y] == img).flatten(1).all(1).any()  # a real image of its own class
    assert len({tuple(img.flatten().tolist()) for img in images}) == 12  # one per cluster
    assert not torch.equal(images, centres)  # plain k-means keeps the averages


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kept", [None, 0])
def test_unroll_on_cuda_matches_cpu(kept):
    cpu = sharded_grads(1, 0, case(0.5, True, True), kept)
    cuda = sharded_grads(1, 0, case(0.5, True, True), kept, device="cuda")
    for ours, ref in zip(cuda, cpu):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


def test_filter_perturbation_is_the_references_formula():
    from raydd.distill.step import filter_perturbation, rms_perturbation

    w = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    d = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 1, 2, 2)  # ‖d‖_F = 5
    assert filter_perturbation(w, d, 1.0).flatten().tolist() == pytest.approx([1.6, 3.6, 3.0, 4.0])  # w + d/5·w
    assert filter_perturbation(w, d, 0.5).flatten().tolist() == pytest.approx([1.3, 2.8, 3.0, 4.0])
    t = torch.tensor([1.0, -1.0, 1.0, -1.0])  # RMS 1
    assert rms_perturbation(t, torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.1).tolist() == pytest.approx([1.1, -0.8, 1.3, -0.6])


def test_filter_mode_perturbs_only_conv_weights_and_normalises_by_the_perturbed_start():
    from raydd.distill.step import student_start

    net = FlatModel(ConvNet(1, 4, 8, width=4, depth=2))
    theta = flatten_params(net.module)
    ast = replace(D, perturb=1.0, perturb_mode="filter")
    start, norm = student_start(theta, net.layout, ast, torch.Generator().manual_seed(0))
    assert norm is start
    for (name, old), new in zip(net.layout.unflatten(theta).items(), net.layout.unflatten(start).values()):
        if old.dim() == 4:  # ‖(w' − w)/w‖_F = α: the relative change is the normalised noise
            assert float(((new - old) / old).norm()) == pytest.approx(1.0, rel=1e-4), name
        else:
            assert torch.equal(new, old), name
    rms = replace(D, perturb=0.01, perturb_mode="rms")
    start, norm = student_start(theta, net.layout, rms, torch.Generator().manual_seed(0))
    moved = [t.dim() for t, old in zip(net.layout.unflatten(start).values(), net.layout.unflatten(theta).values())
             if not torch.equal(t, old)]
    assert norm is theta and 4 in moved and 2 in moved  # raydd's: every parameter (a zero one stays zero)
    assert student_start(theta, net.layout, replace(ast, perturb=0.0), torch.Generator())[0] is theta


def affine_net(theta: Tensor, x: Tensor) -> Tensor:
    """A stand-in network: logits = x + θ (one bias per class)."""
    return x + theta


def test_soft_labels_average_the_correct_experts_as_the_reference():
    from raydd.distill.init import correct_mean_logits, expert_logits

    experts = [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0]), torch.tensor([1.0, 0.0])]
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    # image 0: experts 0 and 2 say 0 → ([2, 0] + [1, 0]) / 2; image 1: only expert 1 says 1;
    # image 2: none says 1 → the mean over all three (raydd's fallback)
    torch.testing.assert_close(correct_mean_logits(affine_net, experts, x, labels),
                               torch.tensor([[1.5, 0.0], [0.0, 4.0], [6.0, 4 / 3]]))
    torch.testing.assert_close(expert_logits(affine_net, experts, x), torch.tensor([[1.0, 4 / 3], [1.0, 4 / 3], [6.0, 4 / 3]]))


def flag_net(theta: Tensor, x: Tensor) -> Tensor:
    """A stand-in network on 2-feature images: class 0 iff the image's flag for this expert (x·θ) is set."""
    return torch.stack([x @ theta, torch.full((x.shape[0],), 0.5)], 1)


def test_correct_init_takes_expert_zeros_correct_images_then_the_next_experts_as_the_reference():
    from raydd.distill.init import correct_in_order, correct_indices

    # columns: is image i correct for expert A, for expert B
    flags = torch.tensor([[0, 1], [1, 1], [0, 0], [0, 0], [1, 0], [0, 1]], dtype=torch.float32)
    experts = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    order = torch.arange(6)

    def pick(ipc: int, order: Tensor = order) -> list[int]:
        return correct_in_order(order, 0, lambda idx: flags[idx], flag_net, experts, ipc, batch=2).tolist()

    assert pick(1) == [1]               # expert A's first correct image in the order
    assert pick(2) == [1, 4]            # expert A alone has two
    assert pick(3) == [0, 1, 4]         # A's two, then B's first new one (in order)
    assert pick(4) == [0, 1, 4, 5]
    assert pick(5) == [0, 1, 4, 5, 2]   # every expert's correct ones, then misclassified (raydd's fallback)
    assert pick(2, torch.tensor([5, 4, 3, 2, 1, 0])) == [4, 1]  # the order decides which of A's come first

    class FirstOnly(list):
        def __getitem__(self, k):
            assert k == 0, "expert 1 read although expert 0 had enough"
            return super().__getitem__(k)

    assert correct_in_order(order, 0, lambda idx: flags[idx], flag_net, FirstOnly(experts), 2).tolist() == [1, 4]
    labels = torch.tensor([0] * 6 + [1] * 2)
    images = torch.cat([flags, torch.zeros(2, 2)])
    idx = correct_indices(labels, lambda i: images[i], flag_net, experts, 2, seed=0)
    assert sorted(idx[:2].tolist()) == [1, 4] and sorted(idx[2:].tolist()) == [6, 7]  # class 1: 0.5 > 0 always
    with pytest.raises(ValueError, match="fewer than ipc=3"):
        correct_indices(labels, lambda i: images[i], flag_net, experts, 3, seed=0)


def test_lr_collapse_says_when_the_student_moved_away_from_the_expert():
    from raydd.distill.stage import lr_collapse

    ast = DistillSpec.from_config(compose(["method=ast", "distill.expert_epochs=2", "distill.syn_steps=20"])["distill"])
    assert len(interior_points(ast)) == 1 and ast.intermediate_weight == 1.0  # a still student scores 1 + 1
    history = [{"loss": 2.482, "lr": 0.00926}, {"loss": 2.0, "lr": 0.00034}]  # the fidelity run's AST at IPC 1
    note = lr_collapse(history, ast)
    assert note.startswith("the learned lr fell from 0.01 to 0.00034; the first matching loss 2.482 was above 2,")
    assert "distill.student_momentum" in note
    assert "above" not in lr_collapse([{"loss": 1.9, "lr": 0.009}, {"loss": 1.9, "lr": 0.0009}], ast)
    assert lr_collapse([{"loss": 2.5, "lr": 0.009}, {"loss": 2.0, "lr": 0.0011}], ast) is None  # above a tenth: fine
    assert lr_collapse([], ast) is None


@pytest.mark.parametrize("param", ["plain", "log"])
def test_an_applied_step_moves_the_lr_by_at_most_lr_max_step(param):
    from raydd.distill.state import new_state

    for bound, expected in ((2.0, 0.02), (None, None)):
        d = replace(D, lr_param=param, lr_max_step=bound, lr_lr=1e-5)
        state = new_state(torch.arange(4), torch.zeros(4, 1, 2, 2), torch.arange(4), None, d, torch.device("cpu"))
        opts = make_optimizers(state, d)
        state.images.grad = torch.zeros_like(state.images)
        state.set_lr_grad(torch.tensor(-2000.0))  # plain SGD: 0.01 + 1e-5·2000 = 0.03, 3x in one step
        assert apply_step(state, opts, 0.5, True, Guard(1.0, 3), d, 0).applied
        if expected is not None:
            assert float(state.lr) == pytest.approx(expected, rel=1e-6)
        else:
            assert float(state.lr) > 0.025  # unbounded: plain 0.03, log 0.01·e^2
        state.set_lr_grad(torch.tensor(1.0))  # the lr optimiser's momentum still pushes: bounded again
        before = float(state.lr)
        apply_step(state, opts, 0.5, True, Guard(1.0, 3), d, 1)
        assert bound is None or before / 2 * (1 - 1e-6) <= float(state.lr) <= before * 2 * (1 + 1e-6)
