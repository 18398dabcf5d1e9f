"""``raydd distill``: initialise the synthetic set, match trajectories on Ray Train, write the set."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from raydd.data.registry import load_dataset
from raydd.data.types import DatasetSpec, ImageData
from raydd.distill.init import initial_set, to_model_space
from raydd.distill.sampling import interior_points
from raydd.distill.state import load_all_shards
from raydd.distill.worker import train_fn
from raydd.models.functional import FlatModel
from raydd.models.registry import build_model
from raydd.runtime import init_ray
from raydd.storage.distilled import DistilledSet, save_set
from raydd.storage.fs import check_reachable
from raydd.storage.layout import experts_location, root, run_name, set_location
from raydd.storage.trajectory import TrajectoryStore
from raydd.tracking import train_callbacks


def open_store(cfg: dict[str, Any]) -> TrajectoryStore:
    """The expert store this run matches, checked against the run's dataset, model and window."""
    loc = experts_location(cfg)
    if not loc.join("manifest.json").exists():
        raise FileNotFoundError(f"no expert trajectories at {loc.uri}: run `raydd experts` with the same "
                                "dataset/model/experts settings first (or set experts.store)")
    store = TrajectoryStore.open(loc)
    d = cfg["distill"]
    if d["max_start_epoch"] + d["expert_epochs"] > store.epochs:
        raise ValueError(f"distill.max_start_epoch + expert_epochs = {d['max_start_epoch'] + d['expert_epochs']} "
                         f"exceeds the {store.epochs:g} epochs stored at {loc.uri}")
    if d.get("continuous_start") and store.meta.get("form") != "convex":
        raise ValueError("distill.continuous_start needs a convex (MCT) expert store: set experts.form=convex")
    if d.get("intermediate_weight") and not interior_points(d):
        print(f"note: no intermediate matching: a segment of expert_epochs={d['expert_epochs']} has no stored "
              "epoch strictly inside it")
    return store


def initial_set_for(cfg: dict[str, Any], store: TrajectoryStore, spec: DatasetSpec | None = None,
                    train: ImageData | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The synthetic set before distillation (deterministic in ``cfg.seed``); soft labels from up to 5 experts."""
    if spec is None or train is None:
        spec, train, _ = load_dataset(cfg["dataset"])
    d = cfg["distill"]
    net = FlatModel(build_model(cfg["model"], spec))
    experts = [store.params(e, float(d["max_start_epoch"])) for e in store.experts[:5]]
    return initial_set(d, train, spec, cfg["ipc"], cfg["seed"], store.zca(), net, experts)


def trainer_for(cfg: dict[str, Any], store_uri: str, init_ref, test_ref, callbacks: list | None = None,
                name: str | None = None) -> TorchTrainer:
    """The run's trainer; a fixed ``name`` resumes that run's checkpoints (Tune trials), else a unique one."""
    d, workers = cfg["distill"], cfg["workers"]
    storage = root(cfg).join("train")
    use_gpu = d["gpus_per_worker"] > 0
    return TorchTrainer(
        train_fn,
        train_loop_config={"cfg": cfg, "store": store_uri, "init": init_ref, "test": test_ref,
                           "threads": max(1, int(d["cpus_per_worker"])), "local": workers == 0},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": d["cpus_per_worker"],
                                                           **({"GPU": d["gpus_per_worker"]} if use_gpu else {})}),
        run_config=RunConfig(name=name or f"{run_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
                             storage_path=storage.path,
                             storage_filesystem=None if isinstance(storage.fs, pafs.LocalFileSystem) else storage.fs,
                             failure_config=FailureConfig(max_failures=d["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[*(callbacks or []), *train_callbacks(cfg)]),
    )


def assemble(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float, list[dict]]:
    """The whole set from every rank's checkpointed shard, in global order, and rank 0's metrics history."""
    shards = load_all_shards(path)
    history = json.loads((path / "rank0.json").read_text()).get("history", [])
    order = torch.argsort(torch.cat([s["index"] for s in shards]))
    images = torch.cat([s.get("ema", s["images"]) for s in shards])[order]
    labels = torch.cat([s["labels"] for s in shards])[order]
    soft = torch.cat([s["soft"] for s in shards])[order] if "soft" in shards[0] else None
    return images, labels, soft, float(shards[0]["lr"][0]), history


def run(cfg: dict[str, Any], callbacks: list | None = None, train_name: str | None = None) -> dict[str, Any]:
    """Distil; ``callbacks`` go to the trainer's RunConfig and ``train_name`` fixes its run name (``raydd tune``)."""
    check_reachable(root(cfg))
    store = open_store(cfg)
    init_ray(cfg)
    spec, train, test = load_dataset(cfg["dataset"])
    zca = store.zca()
    d = cfg["distill"]
    images, labels, soft = initial_set_for(cfg, store, spec, train)
    sub = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:d["eval_test_size"]]
    test_small = ImageData(test.images[sub], test.labels[sub])
    test_ref = ray.put((to_model_space(test_small.images, spec, zca), test_small.labels)) if d["eval_every"] else None
    init_ref = ray.put({"images": images, "labels": labels, "soft": soft})
    tic = time.time()
    result = trainer_for(cfg, store_uri=experts_location(cfg).uri, init_ref=init_ref, test_ref=test_ref,
                         callbacks=callbacks, name=train_name).fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as path:
        images, labels, soft, lr, history = assemble(Path(path))
    meta = {"method": cfg["method"]["name"], "ipc": cfg["ipc"], "dataset": spec.name, "model": cfg["model"],
            "workers": cfg["workers"], "iterations": d["iterations"], "syn_steps": d["syn_steps"],
            "expert_epochs": d["expert_epochs"], "intermediate_targets": len(interior_points(d)),
            "experts": experts_location(cfg).uri,
            "rejected_steps": int(history[-1]["rejected"]) if history else 0, "wall_s": round(time.time() - tic, 1),
            "final_loss": history[-1]["loss"] if history else None}
    ds = DistilledSet(images, labels, soft, None, lr, zca, meta)
    loc = set_location(cfg)
    save_set(ds, loc, spec)
    if history:
        loc.join("distill_metrics.csv").write_bytes_atomic(pd.DataFrame(history).to_csv(index=False).encode())
    print(f"distilled {cfg['method']['name']} ipc={cfg['ipc']} ({len(ds)} images, lr={lr:.4g}) → {loc.uri} "
          f"in {meta['wall_s']} s; final loss {meta['final_loss']}")
    return {"set": loc.uri, "lr": lr, **meta}
