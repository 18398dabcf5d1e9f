"""The Ray Train worker function: distil this worker's shard of the synthetic set."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist

from raydd.data.registry import dataset_spec, load_split
from raydd.distill.guards import Guard
from raydd.distill.sampling import sample_segment
from raydd.distill.sharding import shard_indices
from raydd.distill.state import ShardState, load_shard, make_optimizers, save_shard
from raydd.distill.step import apply_step, compute_gradients, grads_finite, perturb, segment_targets
from raydd.distill.unroll import UnrollSpec
from raydd.core.train import TrainSpec, accuracy, train_on_set
from raydd.models.functional import FlatModel
from raydd.models.registry import build_model
from raydd.storage.fs import resolve
from raydd.storage.trajectory import TrajectoryStore


def fresh_state(init: dict[str, torch.Tensor | None], d: dict[str, Any], rank: int, world: int) -> ShardState:
    idx = shard_indices(init["labels"], world)[rank]
    images = init["images"][idx].clone()
    soft = init["soft"][idx].clone().requires_grad_(True) if init["soft"] is not None else None
    return ShardState(idx, images.requires_grad_(True), init["labels"][idx], soft,
                      torch.tensor(float(d["lr_init"]), requires_grad=True),
                      images.detach().clone() if d.get("ema") else None)


def all_reduce_step(loss: float, finite: bool, state: ShardState, world: int) -> tuple[float, bool]:
    """Average the loss and the shared lr's gradient over workers; a non-finite step anywhere is non-finite everywhere."""
    if world == 1:
        return loss, finite
    lr_grad = state.lr.grad if state.lr.grad is not None else torch.zeros(())
    packed = torch.stack([torch.tensor(loss), torch.tensor(0.0 if finite else 1.0), lr_grad.detach().cpu()])
    dist.all_reduce(packed)
    state.lr.grad = (packed[2] / world).to(state.lr.device)
    return float(packed[0]) / world, bool(packed[1] == 0)


def gather_set(state: ShardState, world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The whole current set (EMA images when kept), in global order, on every worker."""
    images = (state.ema if state.ema is not None else state.images).detach().cpu()
    mine = (state.index, images, state.labels.cpu(), None if state.soft is None else state.soft.detach().cpu())
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    order = torch.argsort(torch.cat([p[0] for p in parts]))
    soft = torch.cat([p[3] for p in parts])[order] if mine[3] is not None else None
    return torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order], soft


def fast_eval(cfg: dict[str, Any], images, labels, soft, lr: float, test) -> float:
    """Train one fresh network briefly on the current set; accuracy on a test subset."""
    d = cfg["distill"]
    spec = dataset_spec(cfg["dataset"])
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], spec)
    tspec = TrainSpec(epochs=d["eval_epochs"], lr=lr if cfg["evaluate"].get("use_set_lr", True) else cfg["evaluate"]["lr"],
                      batch_size=cfg["evaluate"]["batch_size"], dsa=d["dsa"])
    train_on_set(model, images, labels, tspec, cfg["seed"], soft)
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


def train_fn(config: dict[str, Any]) -> None:
    """Worker loop: sample a segment, unroll, match, step (guarded); report metrics and checkpoints."""
    cfg, d = config["cfg"], config["cfg"]["distill"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    store = TrajectoryStore.open(resolve(config["store"], cfg["storage"].get("endpoint_url")))
    net = FlatModel(build_model(cfg["model"], dataset_spec(cfg["dataset"])))
    guard = Guard(d["guard_max_lr"], d["guard_patience"])
    checkpoint = ray.train.get_checkpoint()
    history: list[dict[str, Any]] = []
    if checkpoint:
        with checkpoint.as_directory() as path:
            state, opts, gen, info = load_shard(Path(path), rank, d)
        guard.total, history = info.get("rejected", 0), info.get("history", [])
    else:
        state = fresh_state(ray.get(config["init"]), d, rank, world)
        opts = make_optimizers(state, d)
        gen = torch.Generator().manual_seed(cfg["seed"] * 7919 + rank)
    spec = UnrollSpec(momentum=d["student_momentum"], balanced=d["balanced_inner_loss"], dsa=d["dsa"])
    test = config["test"] and ray.get(config["test"]) if rank == 0 else None
    while state.iteration < d["iterations"]:
        it, tic = state.iteration, time.perf_counter()
        seg = sample_segment(it, store.experts, d, gen)
        expert_start = store.params(seg.expert, seg.start)
        student_start = perturb(expert_start, net.layout, d["perturb"], gen)
        loss = compute_gradients(state, net, student_start, segment_targets(store, seg, expert_start), d, spec, gen)
        loss, finite = all_reduce_step(loss, grads_finite(state), state, world)
        step = apply_step(state, opts, loss, finite, guard, d, it)
        state.iteration = it + 1
        metrics = {"iteration": state.iteration, "loss": loss, "applied": step.applied, "lr": float(state.lr.detach()),
                   "start_epoch": seg.start, "expert": seg.expert, "rejected": guard.total,
                   "seconds": time.perf_counter() - tic}
        if step.reason:
            metrics["skip_reason"] = step.reason
        last = state.iteration == d["iterations"]
        if d["eval_every"] and (state.iteration % d["eval_every"] == 0 or last):
            images, labels, soft = gather_set(state, world)
            if rank == 0 and test is not None:
                metrics["eval_acc"] = fast_eval(cfg, images, labels, soft, float(state.lr.detach()), test)
        history.append(metrics)
        if state.iteration % d["checkpoint_every"] == 0 or last:
            report_checkpoint(metrics, state, opts, gen, rank,
                              {"rejected": guard.total, "world": world, **({"history": history} if rank == 0 else {})},
                              keep_local=config["local"])
        elif state.iteration % d["log_every"] == 0 or "eval_acc" in metrics:
            ray.train.report(metrics)
