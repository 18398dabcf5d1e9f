"""Distillation on Ray Train (real Ray, CPU, tiny): each method, sharding, resume after a killed worker."""

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch

from raydd.config import compose
from raydd.distill import stage as distill_stage
from raydd.experts import stage as experts_stage
from raydd.experts.convert import convert_store
from raydd.runtime import jemalloc_env
from raydd.storage.distilled import load_set
from raydd.storage.layout import experts_location, set_location

TINY = ["dataset=digits", "model.width=8", "model.depth=2", "experts.num=2", "experts.epochs=4", "experts.batch_size=64", "experts.lr=0.05",
        "distill.syn_steps=6", "distill.expert_epochs=1", "distill.max_start_epoch=2", "distill.lr_img=100",
        "distill.eval_every=0", "distill.checkpoint_every=10", "evaluate.num_models=1", "evaluate.epochs=20"]
CONVEX = ["method=mct", "experts.form=convex"]


@pytest.fixture(scope="module")
def ray_session():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def config(tmp: Path, *extra: str) -> dict:
    return compose([*TINY, f"storage.root={tmp}", *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("distill")
    for method in ("mtt", "ast", "mct", "datm"):  # plain, smooth, waypoints (MCT's own) and ftd (GSAM) stores
        experts_stage.run(config(tmp, f"method={method}"))
    # the convex form (raydd's MCT variant): the plain experts, compressed
    convert_store(experts_location(config(tmp, "method=mtt")), experts_location(config(tmp, *CONVEX)), "convex", 2)
    return tmp


def losses(cfg: dict) -> list[float]:
    return pd.read_csv(set_location(cfg).join("distill_metrics.csv").path)["loss"].tolist()


@pytest.mark.parametrize("method", ["mtt", "datm", "ast", "mct", "mct-convex"])
def test_matching_loss_goes_down(root, method):
    extra = {"datm": ["distill.window_grow_iters=20", "distill.loss_threshold=100", "distill.max_start_epoch=3"],
             "mct-convex": CONVEX[1:]}.get(method, [])
    cfg = config(root, f"method={method.split('-')[0]}", "ipc=2", "distill.iterations=40", "distill.lr_lr=1e-4",
                 "workers=1", *extra)
    form = distill_stage.open_store(cfg).form
    assert form == {"mct": "waypoints", "mct-convex": "convex"}.get(method, "full")
    distill_stage.run(cfg)
    curve = losses(cfg)
    assert len(curve) == 40
    assert sum(curve[-10:]) / 10 < 0.97 * sum(curve[:10]) / 10, curve
    ds = load_set(set_location(cfg))
    assert ds.images.shape == (20, 1, 8, 8) and torch.isfinite(ds.images).all()
    assert ds.lr is not None and ds.lr > 0
    assert (ds.soft_labels is not None) == (method == "datm")
    # datm's window is its rule's, not the configured [0, 3): ipc 2 of 143.7 digits per class, 4 epochs → upper
    # 0.445·4 → 2, lower 0.047·4 → 0; the others keep TINY's [0, 2)
    assert ds.meta["start_window"] == [0, 2]
    assert ds.meta["experts_test_acc"] == pytest.approx(distill_stage.open_store(cfg).final_test_accuracy())
    assert 0.1 < ds.meta["experts_test_acc"] <= 1.0  # the digits experts learn


def test_one_and_two_workers_distil_the_same_set(root):
    """The exact sharded objective: the set after K iterations does not depend on the worker count
    (3 workers, uneven shards, are checked at the math level in test_distill_math.py)."""
    sets = {}
    for workers in (1, 2):
        cfg = config(root, "method=mtt", "ipc=3", "distill.iterations=3", "distill.batch_syn=12", f"workers={workers}",
                     f"run_name=exact-w{workers}")
        distill_stage.run(cfg)
        sets[workers] = load_set(set_location(cfg))
    torch.testing.assert_close(sets[2].images, sets[1].images, rtol=1e-4, atol=1e-4)
    assert sets[2].lr == pytest.approx(sets[1].lr, rel=1e-4)
    assert sets[2].meta["workers"] == 2
    # distill.heap=auto: the Train workers start on Ray's jemalloc (LD_PRELOAD through their runtime env)
    assert sets[1].meta["allocator"] == sets[2].meta["allocator"] == ("jemalloc" if jemalloc_env() else "libc")


def test_two_workers_follow_sharding_and_update_every_image(root):
    cfg = config(root, "method=mtt", "ipc=3", "distill.iterations=4", "workers=2", "distill.heap=default")
    before, before_labels, _ = distill_stage.initial_set_for(cfg, distill_stage.open_store(cfg))
    distill_stage.run(cfg)
    after = load_set(set_location(cfg))
    assert torch.equal(before_labels, after.labels)
    changed = (after.images - before).flatten(1).abs().amax(1) > 0
    assert changed.all(), "every image is owned by some worker and updated"
    assert after.meta["workers"] == 2
    assert after.meta["allocator"] == "libc"  # distill.heap=default: glibc's malloc


def train_worker_pids() -> list[int]:
    """PIDs of this session's Ray Train workers (children of our raylet, named ray::RayTrainWorker)."""
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == raylet and cmd.startswith(b"ray::RayTrainWorker"):
            pids.append(int(stat.parent.name))
    return pids


def test_killed_worker_resumes_from_checkpoint_with_the_exact_objective(root):
    cfg = config(root, "method=mtt", "ipc=2", "distill.iterations=40", "distill.checkpoint_every=5", "workers=2",
                 "distill.max_failures=2", "run_name=killed")
    train_dir = Path(root) / "train"
    killed = []

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if list(train_dir.glob("killed-*/checkpoint_*")):
                for pid in train_worker_pids()[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    distill_stage.run(cfg)
    thread.join()
    assert killed, "the test killed a worker"
    curve = pd.read_csv(set_location(cfg).join("distill_metrics.csv").path)
    assert curve["iteration"].tolist() == list(range(1, 41)), "history continues from the checkpoint, no gaps"
    ds = load_set(set_location(cfg))
    assert ds.images.shape[0] == 20 and torch.isfinite(ds.images).all()
    clean = config(root, "method=mtt", "ipc=2", "distill.iterations=40", "distill.checkpoint_every=5", "workers=2",
                   "run_name=not-killed")
    distill_stage.run(clean)
    torch.testing.assert_close(ds.images, load_set(set_location(clean)).images, rtol=1e-4, atol=1e-4)


def test_the_digits_ipc1_example_gets_past_the_lr_on_one_and_two_workers(tmp_path, ray_session):
    """`raydd distill dataset=digits method=mtt ipc=1 distill.iterations=5` with the default settings."""
    for workers in (1, 2):
        cfg = compose(["dataset=digits", "method=mtt", "ipc=1", "distill.iterations=5", f"workers={workers}",
                       f"storage.root={tmp_path}", f"run_name=digits-w{workers}"])
        experts_stage.run(cfg)
        distill_stage.run(cfg)
        curve = pd.read_csv(set_location(cfg).join("distill_metrics.csv").path)
        assert curve["rejected"].iloc[-1] <= 0.1 * len(curve), curve
        assert (curve["lr"] > 0).all()


def test_divergence_is_an_error_that_ray_train_does_not_retry(root):
    """A deterministic failure ends the workers normally (no retry from the checkpoint) and the run says why."""
    from raydd.distill.guards import DivergedError

    cfg = config(root, "method=mtt", "ipc=2", "distill.iterations=20", "workers=2", "distill.lr_param=plain",
                 "distill.lr_lr=1e3", "distill.guard_patience=3", "distill.max_failures=2", "run_name=diverges")
    with pytest.raises(DivergedError, match="3 rejected steps in a row.*no set was written"):
        distill_stage.run(cfg)
    assert not set_location(cfg).join("set.parquet").exists()
    runs = list((Path(root) / "train").glob("diverges-*"))
    assert len(runs) == 1


def test_mostly_rejected_run_fails_instead_of_writing_a_set(root):
    from raydd.distill.guards import DivergedError

    cfg = config(root, "method=mtt", "ipc=2", "distill.iterations=6", "workers=1", "distill.lr_param=plain",
                 "distill.lr_lr=1e3", "distill.lr_backoff=1.0", "distill.guard_patience=100", "run_name=rejected")
    with pytest.raises(DivergedError, match=r"6 of 6 distillation steps were rejected \(learned lr left"):
        distill_stage.run(cfg)
    assert not set_location(cfg).join("set.parquet").exists()


def test_asking_for_gpus_without_any_fails_before_work(root, capsys):
    from raydd.cli import main

    code = main(["distill", *TINY, f"storage.root={root}", "method=mtt", "distill.gpus_per_worker=1"])
    err = [line for line in capsys.readouterr().err.splitlines() if "raydd" in line or "Traceback" in line]
    assert code == 2 and len(err) == 1  # (this module's Ray runs without a state API: its own log lines are not ours)
    assert err[0].startswith("raydd: error: distill.gpus_per_worker × workers asks for 1 GPUs but the Ray cluster has 0")


def test_thousand_class_stand_in_goes_through_experts_and_distill(tmp_path, ray_session):
    from raydd.data.parquet import write_split
    from raydd.core.images import ImageData
    from raydd.storage.fs import resolve

    gen = torch.Generator().manual_seed(0)
    n_cls = 1000
    for split, per in (("train", 3), ("test", 1)):
        labels = torch.arange(n_cls).repeat_interleave(per)
        images = (torch.rand(labels.numel(), 3, 4, 4, generator=gen) * 255).to(torch.uint8)
        write_split(ImageData(images, labels), resolve(str(tmp_path / "data")), split, n_cls, rows_per_shard=1000)
    cfg = compose([f"storage.root={tmp_path}", "dataset=parquet", f"dataset.uri={tmp_path / 'data'}",
                   "model.width=4", "model.depth=2", "experts.num=2", "experts.epochs=2", "experts.dsa=false",
                   "distill.syn_steps=2", "distill.expert_epochs=1", "distill.max_start_epoch=1", "distill.iterations=2",
                   "distill.eval_every=0", "distill.dsa=false", "ipc=1", "workers=2"])
    experts_stage.run(cfg)
    distill_stage.run(cfg)
    ds = load_set(set_location(cfg))
    assert ds.images.shape == (1000, 3, 4, 4)
    assert torch.equal(ds.labels, torch.arange(1000))


def test_streamed_split_gives_the_same_initial_set_and_fast_eval_images(root, tmp_path, capsys):
    """Each init reads the training split through open_split (the picks gathered, the per-class passes one class at a
    time): streamed from Parquet shards it gives the in-memory set bit for bit, and the same fast-eval test images."""
    from raydd.core.images import to_model_space
    from raydd.data.parquet import write_split
    from raydd.data.registry import dataset_spec, load_split
    from raydd.storage.fs import resolve

    for split in ("train", "test"):
        write_split(load_split({"name": "digits"}, split), resolve(str(tmp_path / "digits")), split, 10, rows_per_shard=400)
    store = distill_stage.open_store(config(root, "method=mtt"))
    parquet = [*(o for o in TINY if not o.startswith("dataset=")), "dataset=parquet", f"dataset.uri={tmp_path / 'digits'}",
               "dataset.mean=[0.3]", "dataset.std=[0.38]", f"storage.root={root}", "ipc=2"]
    inits = [("real",), ("correct", "method=datm"), ("correct_pool", "distill.soft_labels=true", "distill.soft_label_init=mean"),
             ("kmeans",), ("kmeans_medoid",), ("mean",)]
    for init, *extra in inits:
        made = [distill_stage.initial_set_for(compose([*parquet, *extra, f"distill.init={init}", f"loader.mode={mode}"]), store)
                for mode in ("memory", "stream")]
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(*made)), init
        assert (made[0][2] is not None) == bool(extra), init
        assert "streamed from 4 Parquet shards" in capsys.readouterr().out, init
    cfg = {mode: compose([*parquet, f"loader.mode={mode}"]) for mode in ("memory", "stream")}
    spec, test = dataset_spec(cfg["memory"]["dataset"]), load_split({"name": "digits"}, "test")
    sub = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:50]
    for mode in ("memory", "stream"):
        x, y = distill_stage.fast_eval_test(cfg[mode], spec, store.zca(), 50)
        assert torch.equal(x, to_model_space(test.images[sub], spec)) and torch.equal(y, test.labels[sub])
        assert ("streamed from 1 Parquet shards" in capsys.readouterr().out) == (mode == "stream")
