"""Evaluate stage: K fresh networks per architecture on a set, as parallel Ray tasks."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray
import torch

from raydd.core.images import DatasetSpec, decoded
from raydd.core.train import Batch, TrainSpec, batches_accuracy, train_on_batches, train_on_set
from raydd.data.split import Split
from raydd.evaluate.baselines import FullSet
from raydd.models.registry import build_model
from raydd.runtime import reuse_heap, task_device
from raydd.specs import EvaluateSpec, ModelSpec, RunSpec
from raydd.storage.distilled import DistilledSet
from raydd.storage.fs import Location


TEST_BATCH = 1024  # images per test-pass batch


def train_spec(ev: EvaluateSpec, ds: DistilledSet | FullSet, channels_last: bool | str) -> TrainSpec:
    """The train-on-set protocol of ``evaluate``: the set's learned lr unless ``use_set_lr`` is off."""
    lr = ds.lr if ds.lr is not None and ev.use_set_lr else ev.lr
    return TrainSpec(epochs=ev.epochs, lr=float(lr), batch_size=ev.batch_size, dsa=ev.dsa,
                     dsa_strategy=ev.dsa_strategy or TrainSpec.dsa_strategy, soft_label_temperature=ds.temperature,
                     amp=ev.amp, channels_last=channels_last)


def recipe(run: RunSpec, ds: DistilledSet) -> dict[str, Any]:
    """How ``evaluate_set`` measures the set: the training protocol (SGD with momentum, lr ×0.1 at epochs // 2),
    the architectures, one seed per model, and the test split."""
    ev = run.evaluate
    return {**dataclasses.asdict(train_spec(ev, ds, run.channels_last)), "compile": list(ev.compile),
            "lr_decay_epoch": max(1, ev.epochs // 2),
            "models": [dataclasses.asdict(model_spec(run.model, arch, ev.width)) for arch in ev.models],
            "seeds": [run.seed + k for k in range(ev.num_models)],
            "test": f"{run.dataset.name} test split, normalised (and whitened) like the set"}


def model_spec(model: ModelSpec, arch: str, width: int | None = None) -> ModelSpec:
    """The model group's spec for its own architecture; other architectures keep its norm, at ``width``
    (``evaluate.width``; None: their published width)."""
    return model if arch == model.name else ModelSpec(name=arch, norm=model.norm, width=width)


def fit(model: torch.nn.Module, ds: DistilledSet | FullSet, spec: DatasetSpec, tspec: TrainSpec, seed: int,
        on_epoch: Callable[[int], None] | None = None) -> None:
    """Train ``model`` on a set in memory, or (the full baseline) on its split's seeded epochs, decoded per batch."""
    if isinstance(ds, DistilledSet):
        train_on_set(model, ds.images, ds.labels, tspec, seed, ds.soft_labels, ds.weights, on_epoch=on_epoch)
        return
    device = next(model.parameters()).device

    def epoch(gen: torch.Generator) -> Iterator[Batch]:
        return ((x, y, None, None) for x, y in decoded(ds.split.epoch(gen, tspec.batch_size), spec, None, device))

    train_on_batches(model, epoch, tspec, seed, on_epoch)


def train_and_test(arch: ModelSpec, spec: DatasetSpec, ds: DistilledSet | FullSet, test: Split, tspec: TrainSpec,
                   seed: int, progress: bool = True) -> float:
    """One evaluation model: seed, build, train on the set (on the task's GPU if it has one), return its accuracy on
    the test split, streamed in batches decoded (normalised, whitened like the set) on that device."""
    reuse_heap()
    torch.manual_seed(seed)
    device = task_device()
    model = build_model(arch, spec).to(device)
    bar = None
    if progress:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=tspec.epochs, desc=f"eval {arch.name} seed {seed}")
    fit(model, ds, spec, tspec, seed, on_epoch=(lambda _: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    return batches_accuracy(model, decoded(test.batches(TEST_BATCH), spec, ds.zca, device))


_train_and_test_task = ray.remote(train_and_test)


def evaluate_set(ds: DistilledSet | FullSet, run: RunSpec, spec: DatasetSpec, test: Split,
                 archs: list[str] | None = None, num_models: int | None = None) -> list[dict[str, Any]]:
    """Train ``num_models`` networks per architecture in parallel Ray tasks; one row per model. The tasks get the
    test split as it is (labels and uint8 images, or where its shards are), never as float."""
    ev = run.evaluate
    archs = archs or list(ev.models)
    num_models = num_models or ev.num_models
    tspec = train_spec(ev, ds, run.channels_last)
    ds_ref, test_ref = ray.put(ds), ray.put(test)
    task = _train_and_test_task.options(num_cpus=ev.resources.cpus, num_gpus=ev.resources.gpus)
    jobs = [(arch, k, task.remote(model_spec(run.model, arch, ev.width), spec, ds_ref, test_ref,
                                  dataclasses.replace(tspec, compile=arch in ev.compile), run.seed + k))
            for arch in archs for k in range(num_models)]
    start = time.time()
    accs = ray.get([j for *_, j in jobs])
    seconds = time.time() - start
    return [{"model": arch, "seed": run.seed + k, "accuracy": acc, "epochs": tspec.epochs, "lr": tspec.lr,
             "wall_s": round(seconds, 1)} for (arch, k, _), acc in zip(jobs, accs)]


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± std (population std over models) of final accuracy, per architecture, in percent."""
    out: dict[str, dict[str, float]] = {}
    for arch in dict.fromkeys(r["model"] for r in rows):
        accs = [100 * r["accuracy"] for r in rows if r["model"] == arch]
        out[arch] = {"mean": statistics.fmean(accs), "std": statistics.pstdev(accs), "n": len(accs)}
    return out


def write_results(loc: Location, rows: list[dict[str, Any]], summary: dict, meta: dict[str, Any]) -> None:
    """``eval.json`` and ``eval.csv`` beside the evaluated set."""
    loc.join("eval.json").write_bytes_atomic(json.dumps({"meta": meta, "summary": summary, "models": rows}, indent=2).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    loc.join("eval.csv").write_bytes_atomic(buf.getvalue().encode())


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    return "\n".join(f"{arch}: {s['mean']:.2f} ± {s['std']:.2f} % ({s['n']} models)" for arch, s in summary.items())
