"""Metrics to TensorBoard event files through Ray's integrations, when ``tracking: tensorboard``.

``<storage.root>/tracking/`` gets ``distill/<train run>/`` (a Ray Train ``UserCallback``: rank 0's
reports at their iteration), ``tune/<sweep>/<trial>/`` (Ray Tune's ``TBXLoggerCallback``, pointed
there) and ``experts/<store>/expert-<id>/`` (per-epoch test accuracy and training loss, written as
each run of ``raydd experts`` finishes). ``tensorboard --logdir <storage.root>/tracking`` shows them
all. With ``tracking: null`` (the default) nothing is written.
"""

from __future__ import annotations

import posixpath
import time
from typing import Any

import ray.train
from ray.tune.logger import TBXLoggerCallback

from raydd.storage.fs import Location
from raydd.storage.layout import root
from raydd.storage.trajectory import TrajectoryStore


def tracking_dir(cfg: dict[str, Any], kind: str) -> str | None:
    """Where ``kind`` (distill, experts, tune) writes its event files; None when tracking is off."""
    if cfg.get("tracking") != "tensorboard":
        return None
    loc = root(cfg).join("tracking", kind)
    return loc.uri if loc.uri.startswith("s3://") else loc.path


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics (booleans as 0/1), without strings or NaN."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}


class EventFile:
    """A TensorBoard event file written synchronously: tensorboardX's ``SummaryWriter`` writes from a thread, and
    events still queued when a Ray Train controller exits would be lost."""

    def __init__(self, logdir: str) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.record_writer import directory_check

        directory_check(logdir)
        self.events = EventsWriter(posixpath.join(logdir, "events"))

    def write(self, values: dict[str, float], step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        for tag, value in values.items():
            self.events.write_event(Event(wall_time=time.time(), step=step, summary=scalar(tag, value)))
        self.events.flush()


class TrainTensorBoard(ray.train.UserCallback):
    """Ray Train V2 callback (runs in the Train controller): rank 0's reported metrics, stepped by ``iteration``."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.file: EventFile | None = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if self.file is None:
            self.file = EventFile(posixpath.join(self.logdir, run_context.get_run_config().name))
        values = scalars(metrics[0])
        step = int(values.pop("iteration", 0))
        self.file.write({f"distill/{k}": v for k, v in values.items()}, step)


class TuneTensorBoard(TBXLoggerCallback):
    """Ray Tune's TensorBoard logger, writing each trial to ``<logdir>/<trial id>`` instead of its trial directory."""

    def __init__(self, logdir: str) -> None:
        super().__init__()
        self.logdir = logdir

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        self._trial_writer[trial] = self._summary_writer_cls(posixpath.join(self.logdir, trial.trial_id), flush_secs=30)
        self._trial_result[trial] = {}


def train_callbacks(cfg: dict[str, Any]) -> list[ray.train.UserCallback]:
    logdir = tracking_dir(cfg, "distill")
    return [TrainTensorBoard(logdir)] if logdir else []


def tune_callbacks(cfg: dict[str, Any]) -> list[TBXLoggerCallback]:
    logdir = tracking_dir(cfg, "tune")
    return [TuneTensorBoard(posixpath.join(logdir, cfg["tune"]["name"]))] if logdir else []


def log_experts(cfg: dict[str, Any], store: Location, experts: list[int]) -> None:
    """Each of ``experts``' per-epoch test accuracy and training loss, read back from the store."""
    logdir = tracking_dir(cfg, "experts")
    if not logdir or not experts:
        return
    reader = TrajectoryStore.open(store)
    for expert in experts:
        m = reader.metrics(expert)
        file = EventFile(posixpath.join(logdir, posixpath.basename(store.path), f"expert-{expert}"))
        for epoch, acc, loss in zip(m["epoch"], m["test_acc"], m["train_loss"]):
            file.write({f"experts/{k}": v for k, v in (("test_acc", acc), ("train_loss", loss)) if v is not None}, int(epoch))
