"""Evaluate stage: K fresh networks per architecture on a set, as parallel Ray tasks."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import time
from typing import Any

import ray
import torch

from raydd.data.types import DatasetSpec, ImageData, normalize
from raydd.evaluate.train import TrainSpec, accuracy, train_on_set
from raydd.models.registry import build_model
from raydd.storage.distilled import DistilledSet
from raydd.storage.fs import Location


def train_spec(cfg: dict[str, Any], ds: DistilledSet) -> TrainSpec:
    ev = cfg["evaluate"]
    lr = ds.lr if ds.lr is not None and ev.get("use_set_lr", True) else ev["lr"]
    return TrainSpec(epochs=ev["epochs"], lr=float(lr), batch_size=ev["batch_size"], dsa=ev["dsa"],
                     dsa_strategy=ev.get("dsa_strategy") or TrainSpec.dsa_strategy, soft_label_temperature=ds.temperature)


def recipe(cfg: dict[str, Any], ds: DistilledSet) -> dict[str, Any]:
    """How ``evaluate_set`` measures the set: the training protocol (SGD with momentum, lr ×0.1 at epochs // 2),
    the architectures, one seed per model, and the test split."""
    ev = cfg["evaluate"]
    return {**dataclasses.asdict(train_spec(cfg, ds)), "lr_decay_epoch": max(1, ev["epochs"] // 2),
            "models": [model_config(cfg, arch) for arch in ev["models"]],
            "seeds": [cfg["seed"] + k for k in range(ev["num_models"])],
            "test": f"{cfg['dataset']['name']} test split, normalised (and whitened) like the set"}


def model_config(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """The model group's config for its own architecture; other architectures keep only its norm."""
    return dict(cfg["model"]) if arch == cfg["model"]["name"] else {"name": arch, "norm": cfg["model"].get("norm", "instance")}


def train_and_test(model_cfg: dict[str, Any], spec: DatasetSpec, ds: DistilledSet, test_x: torch.Tensor,
                   test_y: torch.Tensor, tspec: TrainSpec, seed: int, progress: bool = True) -> float:
    """One evaluation model: seed, build, train on the set, return final test accuracy."""
    torch.manual_seed(seed)
    model = build_model(model_cfg, spec)
    bar = None
    if progress:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=tspec.epochs, desc=f"eval {model_cfg['name']} seed {seed}")
    train_on_set(model, ds.images, ds.labels, tspec, seed, ds.soft_labels, ds.weights,
                 on_epoch=(lambda _: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    return accuracy(model, test_x, test_y)


_train_and_test_task = ray.remote(train_and_test)


def test_tensors(test: ImageData, spec: DatasetSpec, ds: DistilledSet) -> tuple[torch.Tensor, torch.Tensor]:
    x = normalize(test.images, spec)
    return (ds.zca.transform(x) if ds.zca is not None else x), test.labels


def evaluate_set(ds: DistilledSet, cfg: dict[str, Any], spec: DatasetSpec, test: ImageData,
                 archs: list[str] | None = None, num_models: int | None = None) -> list[dict[str, Any]]:
    """Train ``num_models`` networks per architecture in parallel Ray tasks; one row per model."""
    ev = cfg["evaluate"]
    archs = archs or list(ev["models"])
    num_models = num_models or ev["num_models"]
    tspec = train_spec(cfg, ds)
    ds_ref, x_ref, y_ref = ray.put(ds), *map(ray.put, test_tensors(test, spec, ds))
    task = _train_and_test_task.options(num_cpus=ev.get("cpus_per_model", 1), num_gpus=ev.get("gpus_per_model", 0))
    jobs = [(arch, k, task.remote(model_config(cfg, arch), spec, ds_ref, x_ref, y_ref, tspec, cfg["seed"] + k))
            for arch in archs for k in range(num_models)]
    start = time.time()
    accs = ray.get([j for *_, j in jobs])
    seconds = time.time() - start
    return [{"model": arch, "seed": cfg["seed"] + k, "accuracy": acc, "epochs": tspec.epochs, "lr": tspec.lr,
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
