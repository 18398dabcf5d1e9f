"""The Ray Train worker function: distil this worker's shard of the synthetic set on its device."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.experimental.tqdm_ray import tqdm
from torch import Tensor

from raydd.core.train import TrainSpec, accuracy, channels_last, train_on_set
from raydd.core.images import DatasetSpec
from raydd.data.registry import dataset_spec
from raydd.distill.guards import DivergedError, Guard
from raydd.distill.sampling import sample_segment
from raydd.distill.sharding import ShardMap
from raydd.distill.state import ShardState, load_shard, make_optimizers, new_state, save_shard
from raydd.distill.step import (apply_step, compute_gradients, grads_finite, segment_targets, student_start,
                                unroll_spec)
from raydd.distill.unroll import local_sum
from raydd.models.functional import FlatModel
from raydd.models.registry import build_model
from raydd.runtime import allocator, reuse_heap
from raydd.specs import DistillSpec, RunSpec
from raydd.storage.fs import resolve
from raydd.storage.trajectory import TrajectoryStore


class AllReduce:
    """Sum a tensor over every worker (in place), counting the bytes this worker sends."""

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, t: Tensor) -> Tensor:
        dist.all_reduce(t)
        self.bytes += t.numel() * t.element_size()
        return t


def fresh_state(init: dict[str, Tensor | None], shards: ShardMap, d: DistillSpec, rank: int,
                device: torch.device) -> ShardState:
    idx = (shards.owner == rank).nonzero().squeeze(1)
    idx = idx[torch.argsort(shards.local[idx])]
    soft = init["soft"][idx].clone() if init["soft"] is not None else None
    return new_state(idx, init["images"][idx].clone(), init["labels"][idx], soft, d, device)


def gather_set(state: ShardState, world: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """The whole current set (EMA images when kept), in global order, on every worker (on the CPU)."""
    images = (state.ema if state.ema is not None else state.images).detach().cpu()
    mine = (state.index, images, state.labels.cpu(), None if state.soft is None else state.soft.detach().cpu())
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    order = torch.argsort(torch.cat([p[0] for p in parts]))
    soft = torch.cat([p[3] for p in parts])[order] if mine[3] is not None else None
    return torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order], soft


def fast_eval(run: RunSpec, spec: DatasetSpec, images, labels, soft, lr: float, test, device: torch.device) -> float:
    """Train one fresh network briefly on the current set; accuracy on a test subset."""
    torch.manual_seed(run.seed)
    model = build_model(run.model, spec).to(device)
    tspec = TrainSpec(epochs=run.distill.eval_epochs, lr=lr if run.evaluate.use_set_lr else run.evaluate.lr,
                      batch_size=run.evaluate.batch_size, dsa=run.distill.dsa, channels_last=run.channels_last)
    train_on_set(model, images, labels, tspec, run.seed, soft)
    return accuracy(model, *test)


def report_checkpoint(metrics: dict[str, Any], state: ShardState, opts, gen: torch.Generator, rank: int,
                      extra: dict[str, Any], keep_local: bool) -> None:
    """Report with this rank's shard checkpoint; Ray uploads it (and we drop the local copy) unless in local mode."""
    tmp = Path(tempfile.mkdtemp(prefix="raydd-ckpt-"))
    save_shard(tmp, rank, state, opts, gen, extra)
    previous = ray.train.get_checkpoint()
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
    if not keep_local:
        shutil.rmtree(tmp, ignore_errors=True)
    elif previous is not None and Path(previous.path).name.startswith("raydd-ckpt-"):
        shutil.rmtree(previous.path, ignore_errors=True)  # local mode keeps only the newest checkpoint on disk


def gpu_memory_mb(device: torch.device) -> float:
    """Peak memory this worker has allocated on its GPU so far (0 on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def progress_text(m: dict[str, Any], total: int, eval_acc: float | None) -> str:
    acc = "" if eval_acc is None else f" acc {100 * eval_acc:.1f}%"
    return f"distill {m['iteration']}/{total} loss {m['loss']:.4f} lr {m['lr']:.3g} rejected {m['rejected']}{acc}"


def train_fn(config: dict[str, Any]) -> None:
    """Worker loop: sample a segment (the same on every worker), unroll, match, step (guarded); report.

    A divergence is reported as a metric and ends the loop normally, so Ray Train does not retry
    a deterministic failure; the driver turns it into an error. A lost worker is retried.
    """
    run = RunSpec.from_config(config["cfg"])
    d, spec = run.distill, dataset_spec(config["cfg"]["dataset"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(config["threads"])
    if d.reuse_heap:
        reuse_heap()
    malloc = allocator()
    store = TrajectoryStore.open(resolve(config["store"], run.storage.endpoint_url))
    net = FlatModel(build_model(run.model, spec).to(device), channels_last(run.channels_last, device))
    init = ray.get(config["init"])
    labels = init["labels"]
    shards = ShardMap.of(labels, world)
    guard = Guard(d.guard_max_lr, d.guard_patience)
    reduce = AllReduce() if world > 1 else local_sum
    checkpoint = ray.train.get_checkpoint()
    history: list[dict[str, Any]] = []
    if checkpoint:
        with checkpoint.as_directory() as path:
            state, opts, gen, info = load_shard(Path(path), rank, d, device)
        guard.total, guard.skipped, guard.skipped_in_a_row = (info.get(k, 0) for k in guard.counts())
        history = info.get("history", [])
    else:
        state = fresh_state(init, shards, d, rank, device)
        opts = make_optimizers(state, d)
        gen = torch.Generator().manual_seed(run.seed * 7919)  # one stream on every worker: one student trajectory
    inner = unroll_spec(d)
    test = ray.get(config["test"]) if rank == 0 and config["test"] else None
    bar = tqdm(total=d.iterations, desc="distill", position=0) if rank == 0 and config["progress"] else None
    if bar:
        bar.update(state.iteration)
    eval_acc = next((h["eval_acc"] for h in reversed(history) if "eval_acc" in h), None)
    while state.iteration < d.iterations:
        it, tic = state.iteration, time.perf_counter()
        sent = getattr(reduce, "bytes", 0)
        seg = sample_segment(it, store.experts, d, gen)
        expert_start = store.params(seg.expert, seg.start).to(device)
        start, norm_start = student_start(expert_start, net.layout, d, gen)
        loss = compute_gradients(state, shards, labels, rank, net, start, segment_targets(store, seg, norm_start), d,
                                 inner, gen, reduce, seg.inner_scale)
        bad = torch.tensor(0.0 if grads_finite(state) else 1.0, device=device)
        finite = bool(reduce(bad) == 0)
        try:
            step = apply_step(state, opts, loss, finite, guard, d, it)
        except DivergedError as e:  # metrics reach the driver only with a checkpoint
            report_checkpoint({"iteration": it + 1, "diverged": str(e), "rejected": guard.total}, state, opts, gen,
                              rank, {**guard.counts(), "world": world}, keep_local=config["local"])
            break
        state.iteration = it + 1
        metrics = {"iteration": state.iteration, "loss": loss, "applied": step.applied, "lr": float(state.lr),
                   "start_epoch": seg.start, "expert": seg.expert, "rejected": guard.total,
                   "skipped": guard.skipped, "allreduce_mb": (getattr(reduce, "bytes", 0) - sent) / 2**20,
                   "seconds": time.perf_counter() - tic, "device": str(device), "gpu_mem_mb": gpu_memory_mb(device),
                   "allocator": malloc}
        if step.reason:
            metrics["skip_reason"] = step.reason
        last = state.iteration == d.iterations
        if d.eval_every and (state.iteration % d.eval_every == 0 or last):
            images, set_labels, soft = gather_set(state, world)
            if rank == 0 and test is not None:
                eval_acc = metrics["eval_acc"] = fast_eval(run, spec, images, set_labels, soft, float(state.lr), test, device)
        history.append(metrics)
        if bar:
            bar.set_description(progress_text(metrics, d.iterations, eval_acc))
            bar.update(1)
        if state.iteration % d.checkpoint_every == 0 or last:
            report_checkpoint(metrics, state, opts, gen, rank,
                              {**guard.counts(), "world": world, **({"history": history} if rank == 0 else {})},
                              keep_local=config["local"])
        elif state.iteration % d.log_every == 0 or "eval_acc" in metrics:
            ray.train.report(metrics)
    if bar:
        bar.close()
