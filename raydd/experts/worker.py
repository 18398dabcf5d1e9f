"""One expert, as the body of a Ray task: train on (whitened) real data, then commit its shard."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import torch
from torch import Tensor

from raydd.core.convex import convexify, knot_rows
from raydd.core.images import DatasetSpec, to_model_space
from raydd.core.waypoints import compress
from raydd.core.zca import ZCA
from raydd.data.split import Split
from raydd.experts.train import ExpertRun, train_expert
from raydd.models.functional import ParamLayout
from raydd.models.registry import build_model
from raydd.runtime import reuse_heap, task_device
from raydd.specs import ExpertsSpec
from raydd.storage.fs import resolve
from raydd.storage.trajectory import ShardRows, write_shard


def expert_seed(seed: int, expert_id: int) -> int:
    return seed * 100003 + expert_id


def shard_rows(expert_id: int, run: ExpertRun, form: str, points: int, layout: ParamLayout) -> ShardRows:
    """The rows of an expert's shard in ``form``, ``points`` its size (``ExpertsSpec.points``).

    full: every snapshot. waypoints: one row per saved epoch with its per-layer α, the (smoothed) waypoint
    vector on waypoint epochs, metrics on all. convex: θ_start, the α knots, θ_end.
    """
    epochs = [float(e) for e in range(run.snapshots.shape[0])]
    if form == "full":
        return ShardRows(expert_id, epochs, list(run.snapshots), [None] * len(epochs), run.train_loss, run.test_acc)
    if form == "waypoints":
        traj = compress(run.snapshots, layout.sizes, points)
        vectors: list[Tensor | None] = [None] * len(epochs)
        for i, w in zip(traj.epochs, traj.waypoints):
            vectors[i] = w
        return ShardRows(expert_id, epochs, vectors, [None] * len(epochs), run.train_loss, run.test_acc,
                         list(traj.alphas))
    traj = convexify(run.snapshots, epochs, points)
    index = [0, *knot_rows(len(epochs), points), len(epochs) - 1]
    return ShardRows(expert_id, [epochs[i] for i in index], [traj.start, *[None] * points, traj.end],
                     [0.0, *traj.knot_alphas, 1.0], [run.train_loss[i] for i in index], [run.test_acc[i] for i in index])


def train_and_commit(expert_id: int, cfg: dict[str, Any], store_uri: str, endpoint_url: str | None,
                     spec: DatasetSpec, train: Split, test: Split, zca: ZCA | None,
                     meta: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    """Train expert ``expert_id`` with its own seed, write its shard; returns the manifest entry and stats
    (``peak_rss_mb``: this worker process's peak resident memory so far; ``bytes_read``: Parquet bytes streamed)."""
    reuse_heap()
    e = ExpertsSpec.from_config(cfg["experts"])
    seed = expert_seed(cfg["seed"], expert_id)
    torch.set_num_threads(max(1, int(e.cpus_per_expert)))
    device = task_device()
    started, cpu = time.time(), time.process_time()
    torch.manual_seed(seed)
    model = build_model(cfg["model"], spec).to(device)  # NCHW: an expert's trajectory is reproducible bit for bit
    pid = os.getpid()
    report = None if progress is None else (lambda epoch, loss, acc: progress.report.remote(expert_id, epoch, pid))
    if progress is not None:
        progress.report.remote(expert_id, 0, pid)
    zca = None if zca is None else zca.to(device)
    run = train_expert(model, train, test, lambda x: to_model_space(x.to(device), spec, zca), e, seed, report)
    rows = shard_rows(expert_id, run, e.form, e.points, ParamLayout.of(model))
    entry = write_shard(resolve(store_uri, endpoint_url), rows, {**meta, "seed": seed}, e.dtype)
    return {"entry": entry, "test_acc": run.test_acc[-1], "seconds": time.time() - started,
            "cpu_seconds": time.process_time() - cpu, "bytes_read": train.bytes_read + test.bytes_read,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
