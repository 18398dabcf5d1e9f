"""Expert training (plain / smooth / ftd) and the `raydd experts` stage on Ray: commit, resume, retry, S3."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest
import ray
import torch
from s3_fixtures import BUCKET, ray_session, s3_endpoint  # noqa: F401  (fixtures)

from raydd.config import compose
from raydd.core.images import to_model_space
from raydd.data.registry import load_dataset
from raydd.data.split import Split
from raydd.experts.progress import PROGRESS_PREFIX
from raydd.experts.stage import run
from raydd.experts.train import (ExpertRun, clip_loss, clip_scale, epoch_lr, input_gradient_penalty, objective,
                                 param_gradient_penalty, train_expert)
from raydd.experts.worker import expert_seed
from raydd.models.functional import flatten_params
from raydd.models.registry import build_model
from raydd.specs import ConfigError, ExpertsSpec, LoaderSpec, check_experts
from raydd.storage.layout import experts_location
from raydd.storage.trajectory import StoreMismatchError, TrajectoryStore


def experts_spec(*overrides: str) -> ExpertsSpec:
    return ExpertsSpec.from_config(compose(list(overrides))["experts"])


def in_memory(data) -> Split:
    return Split.in_memory(data, LoaderSpec.from_config(compose([])["loader"]))


def small_cfg(tmp_path, *overrides: str) -> dict:
    return compose(["dataset=digits", f"storage.root={tmp_path}", "model.width=8", "experts.num=2", "experts.epochs=2",
                    "experts.batch_size=64", "experts.lr=0.05", *overrides])


def test_clip_loss_caps_value_and_scales_gradient():
    w = torch.tensor(3.0, requires_grad=True)
    clipped = clip_loss(w ** 2, 1.0)
    clipped.backward()
    assert clipped.item() == pytest.approx(1.0) and w.grad.item() == pytest.approx(6.0 / 9.0)
    w.grad = None
    unclipped = clip_loss(0.01 * w ** 2, 1.0)
    unclipped.backward()
    assert unclipped.item() == pytest.approx(0.09) and w.grad.item() == pytest.approx(0.06)


def test_param_gradient_penalty_is_the_squared_gradient_norm_and_differentiable():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = 1.5 * w.square().sum()  # ∇ = 3w, ‖∇‖² = 9‖w‖² = 45
    penalty = param_gradient_penalty(loss, [w])
    assert penalty.item() == pytest.approx(45.0)
    penalty.backward()
    torch.testing.assert_close(w.grad, 18 * w.detach())


def linear_net() -> torch.nn.Module:
    """logits = W·flatten(x) on 2-channel 1×2 images: ∂Σlogits/∂x is W's column sums, (3, 0 | 3, 1)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0], [2.0, 0.0, 1.0, 1.0]]))
    return net


def test_input_gradient_penalty_is_the_references_per_pixel_channel_norm():
    """AST's epoch_gp: ((‖∂Σlogits/∂x‖ over dim 1) − 1)², averaged; pixel 0 has norm √(3²+3²), pixel 1 √(0²+1²)."""
    net, x = linear_net(), torch.randn(3, 2, 1, 2)
    penalty = input_gradient_penalty(net, x)
    assert penalty.item() == pytest.approx((math.sqrt(18) - 1) ** 2 / 2)  # (19 − 6√2)/2
    penalty.backward()  # ∂/∂W[k, 0] = ∂/∂W[k, 2] = ½·2(√18 − 1)·3/√18 = 3 − 1/√2; W[k, 1], W[k, 3] at norm 1: 0
    g = 3 - 1 / math.sqrt(2)
    torch.testing.assert_close(net[1].weight.grad, torch.tensor([[g, 0.0, g, 0.0]] * 2))


def test_clip_schedule_is_the_references():
    assert [round(clip_scale(e, 10), 10) for e in range(10)] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_smooth_objective_scales_early_epochs_and_adds_the_input_penalty():
    spec = experts_spec("method=ast")
    assert (spec.clip_mode, spec.clip_epochs, spec.gradient_penalty, spec.gradient_penalty_on) == ("scale", 10, 2.0, "input")
    net, x = linear_net(), torch.randn(3, 2, 1, 2)
    loss = torch.tensor(4.0)
    gp = 2.0 * (math.sqrt(18) - 1) ** 2 / 2
    assert objective(loss, net, x, spec, epoch=3).item() == pytest.approx(4.0 * 0.65 + gp)
    assert objective(loss, net, x, spec, epoch=10).item() == pytest.approx(4.0 + gp)
    assert objective(loss, net, x, experts_spec(), epoch=0) is loss


def test_smooth_objective_clip_mode_and_params_penalty():
    spec = experts_spec("experts.variant=smooth", "experts.clip_epochs=2", "experts.clip_mode=clip",
                        "experts.clip_value=0.5", "experts.gradient_penalty=0.1", "experts.gradient_penalty_on=params")
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
    w = net.weight
    loss = w.square().sum()  # 5, ∇ = 2w
    early = objective(loss, net, torch.zeros(1, 2), spec, epoch=1)
    assert early.item() == pytest.approx(0.5 + 0.1 * (0.5 / 5) ** 2 * 4 * 5)
    late = objective(loss, net, torch.zeros(1, 2), spec, epoch=2)
    assert late.item() == pytest.approx(5 + 0.1 * 4 * 5)


def test_ast_expert_lr_decays_by_0_6_after_half_the_epochs():
    """buffer.py: lr_schedule = [epochs // 2 + 1], checked after that (0-based) epoch: 27 epochs at 0.003, 23 at 0.0018."""
    spec = experts_spec("method=ast", "experts.epochs=50")
    assert (spec.lr, spec.momentum, spec.weight_decay) == (0.003, 0.9, 0.001)
    lrs = [epoch_lr(spec, e) for e in range(50)]
    assert lrs[:27] == [0.003] * 27 and lrs[27:] == [pytest.approx(0.0018)] * 23
    assert {epoch_lr(experts_spec(), e) for e in range(6)} == {0.01}


def test_lr_decay_epoch_moves_the_decay_and_keeps_older_stores_where_they_were():
    """``experts.lr_decay_epoch=3``: epochs 0-2 at the lr, 3 on decayed; the key set changes the store's digest,
    unset it leaves the digest of a store trained before the key existed."""
    spec = experts_spec("experts.epochs=12", "experts.lr=0.1", "experts.lr_decay=0.1", "experts.lr_decay_epoch=3")
    assert [epoch_lr(spec, e) for e in range(12)] == [0.1] * 3 + [pytest.approx(0.01)] * 9
    base = compose(["experts.epochs=12", "experts.lr_decay=0.1"])
    older = {**base, "experts": {k: v for k, v in base["experts"].items() if k != "lr_decay_epoch"}}
    assert experts_location(base).uri == experts_location(older).uri
    assert experts_location(compose(["experts.epochs=12", "experts.lr_decay=0.1", "experts.lr_decay_epoch=3"])).uri \
        != experts_location(base).uri


@pytest.mark.parametrize("epoch", [0, 12])
def test_lr_decay_epoch_outside_the_run_is_one_error(epoch):
    with pytest.raises(ConfigError, match=r"experts.lr_decay_epoch must be in \[1, 11\]"):
        check_experts(experts_spec("experts.epochs=12", f"experts.lr_decay_epoch={epoch}"))


def digits_expert(espec: ExpertsSpec, times: int = 1) -> tuple[torch.Tensor, list[ExpertRun]]:
    """The initial parameters and ``times`` runs of one seeded expert on 512 digits (128 to test), on one thread."""
    cfg = compose(["dataset=digits", "model.width=8"])
    spec, train, test = load_dataset(cfg["dataset"])
    train, test = train.subset(torch.arange(512)), test.subset(torch.arange(128))

    def once():
        torch.manual_seed(7)
        model = build_model(cfg["model"], spec)
        return flatten_params(model), train_expert(model, in_memory(train), in_memory(test),
                                                   lambda x: to_model_space(x, spec), espec, seed=7)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [once() for _ in range(times)]
    finally:
        torch.set_num_threads(threads)
    return runs[0][0], [run for _, run in runs]


@pytest.mark.parametrize("variant", ["plain", "smooth", "ftd"])
def test_train_expert_snapshots_and_is_deterministic(variant):
    espec = experts_spec(f"experts.variant={variant}", "experts.epochs=4", "experts.lr=0.05", "experts.batch_size=64",
                         f"experts.momentum={0.9 if variant == 'smooth' else 0.0}", "experts.clip_epochs=1",
                         "experts.gradient_penalty=0.01", "experts.lr_decay=0.6",  # decays for the last (0-based 3)
                         "experts.gsam_rho_max=0.05", "experts.gsam_rho_min=0.02")  # ftd: ρ 0.05, then 0.02
    init, (run1, run2) = digits_expert(espec, times=2)
    assert run1.snapshots.shape == (5, init.numel()) and torch.equal(run1.snapshots[0], init)
    assert torch.equal(run1.snapshots, run2.snapshots)
    assert not torch.equal(run1.snapshots[1], run1.snapshots[2])
    assert run1.train_loss[0] is None and all(loss > 0 for loss in run1.train_loss[1:]) and len(run1.test_acc) == 5


def test_ftd_expert_descends_and_is_sgd_when_the_radius_is_zero():
    """GSAM at ρ = 0 steps along the plain gradient (to rounding); at DATM's ρ 0.01 (adaptive) it moves elsewhere."""
    common = ["experts.epochs=3", "experts.lr=0.05", "experts.batch_size=64"]
    _, (plain,) = digits_expert(experts_spec(*common))
    _, (flat,) = digits_expert(experts_spec(*common, "experts.variant=ftd", "experts.gsam_rho_max=0", "experts.gsam_rho_min=0"))
    _, (ftd,) = digits_expert(experts_spec(*common, "method=datm"))
    torch.testing.assert_close(flat.snapshots, plain.snapshots, rtol=0, atol=1e-5)
    moved = (ftd.snapshots[-1] - ftd.snapshots[0]).norm()
    assert (ftd.snapshots[-1] - plain.snapshots[-1]).norm() > 0.1 * moved
    assert ftd.train_loss[1] > ftd.train_loss[2] > ftd.train_loss[3]


@pytest.fixture(scope="module")
def cluster(s3_endpoint, ray_session):  # noqa: F811  (S3 env first, so Ray workers inherit it)
    return s3_endpoint


def test_stage_commits_resumes_and_reproduces(tmp_path, cluster):
    cfg = small_cfg(tmp_path)
    first = run(cfg)
    assert (first["trained"], first["skipped"], first["experts"]) == (2, 0, 2)
    store_dir = experts_location(cfg).path
    assert sorted(os.listdir(store_dir)) == ["expert-00000.arrow", "expert-00001.arrow", "manifest.json"]
    mtimes = {f: os.stat(os.path.join(store_dir, f)).st_mtime_ns for f in os.listdir(store_dir) if f.endswith(".arrow")}

    again = run(cfg)
    assert (again["trained"], again["skipped"], again["experts"]) == (2 - 2, 2, 2)
    assert mtimes == {f: os.stat(os.path.join(store_dir, f)).st_mtime_ns for f in mtimes}

    # the Ray task's expert 1 is bit-identical to training it here with the same seed and thread count
    store = TrajectoryStore.open(experts_location(cfg))
    spec, train, test = load_dataset(cfg["dataset"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(expert_seed(cfg["seed"], 1))
        model = build_model(cfg["model"], spec)
        local = train_expert(model, in_memory(train), in_memory(test), lambda x: to_model_space(x, spec),
                             ExpertsSpec.from_config(cfg["experts"]), expert_seed(cfg["seed"], 1))
    finally:
        torch.set_num_threads(threads)
    for epoch in range(3):
        assert torch.equal(store.params(1, epoch), local.snapshots[epoch])
    assert store.metrics(1)["test_acc"] == pytest.approx(local.test_acc)
    assert store.shard_meta(1)["seed"] == expert_seed(cfg["seed"], 1)

    with pytest.raises(StoreMismatchError, match=r"experts\.lr"):
        run(small_cfg(tmp_path, "experts.lr=0.02", f"experts.store={experts_location(cfg).uri}"))


def test_killed_worker_is_retried_and_leaves_no_partial_file(tmp_path, cluster):
    cfg = small_cfg(tmp_path, "experts.epochs=6", "experts.batch_size=16")
    outcome: dict = {}

    def drive():
        try:
            outcome["summary"] = run(cfg)
        except Exception as e:  # surfaced by the assertions below
            outcome["error"] = e

    driver = threading.Thread(target=drive)
    driver.start()
    killed, deadline = None, time.time() + 120
    while killed is None and driver.is_alive() and time.time() < deadline:
        names = [n for n in ray.util.list_named_actors() if n.startswith(PROGRESS_PREFIX)]
        if names:
            for expert_id, (epoch, pid) in ray.get(ray.get_actor(names[0]).state.remote()).items():
                if 1 <= epoch < 6 and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed = expert_id
                    break
        time.sleep(0.05)
    driver.join(timeout=300)
    assert killed is not None, "no worker was caught mid-run"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["trained"] == 2
    store = TrajectoryStore.open(experts_location(cfg))
    assert store.experts == [0, 1] and store.verify() == 2
    assert sorted(os.listdir(experts_location(cfg).path)) == ["expert-00000.arrow", "expert-00001.arrow", "manifest.json"]
    assert store.metrics(killed)["epoch"] == [float(e) for e in range(7)]


def test_stage_on_s3_convex_float16_with_zca(tmp_path, cluster):
    uri = f"s3://{BUCKET}/{tmp_path.name}/experts"
    cfg = small_cfg(tmp_path, f"experts.store={uri}", "experts.form=convex", "experts.dtype=float16",
                    "experts.convex_points=1", "experts.epochs=3", "experts.variant=smooth", "experts.clip_epochs=1",
                    "experts.gradient_penalty=0.01", "experts.momentum=0.9", "zca=true")
    summary = run(cfg)
    assert summary["trained"] == 2 and summary["form"] == "convex"
    store = TrajectoryStore.open(uri)
    assert store.form == "convex" and store.meta["dtype"] == "float16" and store.verify() == 2
    assert store.zca() is not None and store.zca().whiten.shape == (64, 64)
    rows = store.read(0)
    assert rows.epoch == [0.0, 2.0, 3.0] and rows.params[1] is None
    assert torch.equal(store.params(0, 0.0), rows.params[0]) and torch.equal(store.params(0, 3.0), rows.params[2])
    mid = store.params(0, 2.5)
    torch.testing.assert_close(mid, torch.lerp(rows.params[0], rows.params[2], (rows.alpha[1] + 1) / 2), atol=1e-6, rtol=0)


def digits_parquet(tmp_path) -> str:
    """digits as raydd Parquet shards of 300 rows (5 train shards)."""
    from raydd.cli import main

    out = str(tmp_path / "digits-parquet")
    assert main(["data", "dataset=digits", f"data.out={out}", "data.rows_per_shard=300", f"storage.root={tmp_path}"]) == 0
    return out


def test_streamed_experts_equal_in_memory_ones_and_reruns(tmp_path, cluster):
    """The same seed gives the same trajectory read in memory or streamed through Ray Data, and again on a re-run."""
    data = digits_parquet(tmp_path)
    stores = []
    for i, mode in enumerate(["memory", "stream", "stream"]):
        cfg = small_cfg(tmp_path / f"run{i}", "dataset=parquet", f"dataset.uri={data}", f"loader.mode={mode}")
        summary = run(cfg)
        assert summary["trained"] == 2
        stores.append(TrajectoryStore.open(experts_location(cfg)))
    for store in stores[1:]:
        for expert in (0, 1):
            assert torch.equal(store.read(expert).params[-1], stores[0].read(expert).params[-1])
            assert all(torch.equal(a, b) for a, b in zip(store.read(expert).params, stores[0].read(expert).params))


def test_corrupt_shard_met_mid_stream_fails_the_expert_and_writes_no_shard(tmp_path, cluster):
    data = digits_parquet(tmp_path)
    bad = tmp_path / "digits-parquet" / "train" / "part-00002.parquet"
    raw = bytearray(bad.read_bytes())
    raw[4:64] = b"\xff" * 60  # the first page header: the labels (read at open) still read, the images do not
    bad.write_bytes(bytes(raw))
    cfg = small_cfg(tmp_path, "dataset=parquet", f"dataset.uri={data}", "loader.mode=stream", "experts.num=1")
    from raydd.errors import CorruptError

    with pytest.raises(CorruptError, match=r"^expert 0: corrupt Parquet shard .*part-00002\.parquet: .*no shard was written"):
        run(cfg)
    store_dir = experts_location(cfg).path
    assert not [f for f in os.listdir(store_dir) if f.endswith(".arrow") or f.startswith(".tmp")]
