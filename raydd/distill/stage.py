"""``raydd distill``: initialise the synthetic set, match trajectories on Ray Train, write the set."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from raydd.core.images import DatasetSpec, to_model_space
from raydd.core.zca import ZCA
from raydd.data.registry import dataset_spec, open_split
from raydd.data.split import Split
from raydd.distill.guards import DivergedError
from raydd.distill.init import initial_set
from raydd.distill.sampling import interior_points
from raydd.distill.state import load_all_shards
from raydd.distill.window import with_difficulty_window
from raydd.distill.worker import train_fn
from raydd.errors import NotFoundError
from raydd.models.functional import FlatModel
from raydd.models.registry import build_model
from raydd.runtime import init_ray, jemalloc_env, require_gpus, require_jemalloc
from raydd.specs import FLOAT_EPOCH_FORMS, ConfigError, DistillSpec, LoaderSpec, last_start
from raydd.storage.distilled import DistilledSet, load_set, save_set
from raydd.storage.fs import Location, check_reachable, resolve
from raydd.storage.layout import experts_location, model_tag, root, run_name, set_location
from raydd.storage.trajectory import TrajectoryStore
from raydd.tracking import train_callbacks


def open_store(cfg: dict[str, Any], store_uri: str | None = None) -> TrajectoryStore:
    """The expert store at ``store_uri`` (default: the configured one), checked against the run's dataset and model."""
    loc = resolve(store_uri, cfg["storage"].get("endpoint_url")) if store_uri else experts_location(cfg)
    if not loc.join("manifest.json").exists():
        raise NotFoundError(f"no expert trajectories at {loc.uri}: run `raydd experts` with the same "
                            "dataset/model/experts settings first (or set experts.store)")
    store = TrajectoryStore.open(loc)
    store.check_openable()
    made_for = (store.meta["dataset"]["name"], model_tag(store.meta["model"]))
    if made_for != (cfg["dataset"]["name"], model_tag(cfg["model"])):
        raise ConfigError(f"the expert store {loc.uri} was made for {made_for[0]} with {made_for[1]}, not "
                          f"{cfg['dataset']['name']} with {model_tag(cfg['model'])}: choose its dataset/model or another experts.store")
    return store


def check_segments(cfg: dict[str, Any], store: TrajectoryStore) -> None:
    """The segments fit what ``store`` holds, before any data is read (``distill.window=difficulty`` fits by construction)."""
    d = DistillSpec.from_config(cfg["distill"])
    if d.window == "fixed" and last_start(d) + d.expert_epochs > store.epochs:
        raise ConfigError(f"distill's last start epoch + expert_epochs = {last_start(d) + d.expert_epochs:g} "
                          f"exceeds the {store.epochs:g} epochs stored at {store.loc.uri}")
    if d.continuous_start and store.form not in FLOAT_EPOCH_FORMS:
        raise ConfigError("distill.continuous_start needs an expert store read at float epochs: set experts.form="
                          + " or ".join(FLOAT_EPOCH_FORMS))
    if d.intermediate_weight and not interior_points(d):
        print(f"note: no intermediate matching: a segment of expert_epochs={d.expert_epochs} has no stored "
              "epoch strictly inside it")


class StoredParams(Sequence[torch.Tensor]):
    """Some experts' parameters at one epoch, read from the store only when indexed."""

    def __init__(self, store: TrajectoryStore, experts: list[int], epoch: float) -> None:
        self.store, self.experts, self.epoch = store, experts, epoch

    def __len__(self) -> int:
        return len(self.experts)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.store.params(self.experts[i], self.epoch)


def initial_set_for(cfg: dict[str, Any], store: TrajectoryStore, train: Split | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The synthetic set before distillation (deterministic in ``cfg.seed``), from the training split as
    ``open_split`` gives it (or ``train``, opened so): DATM's init reads every expert at its final epoch, raydd's
    ``correct_pool`` and ``soft_label_init=mean`` the first 5 at ``max_start_epoch``."""
    spec = dataset_spec(cfg["dataset"])
    if train is None:
        train = open_split(cfg["dataset"], LoaderSpec.from_config(cfg["loader"]), "train")
    d = DistillSpec.from_config(cfg["distill"])
    net = FlatModel(build_model(cfg["model"], spec))
    final = StoredParams(store, store.experts, store.epochs)
    early = StoredParams(store, store.experts[:5], float(d.max_start_epoch))
    return initial_set(d, train, spec, cfg["ipc"], cfg["seed"], store.zca(), net, final, early)


def fast_eval_test(cfg: dict[str, Any], spec: DatasetSpec, zca: ZCA | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast evaluation's test images (``size`` of the test split, a fixed seed-0 draw; only those are read),
    in model space, and their labels."""
    test = open_split(cfg["dataset"], LoaderSpec.from_config(cfg["loader"]), "test")
    picked = test.gather(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:size])
    return to_model_space(picked.images, spec, zca), picked.labels


def trainer_for(cfg: dict[str, Any], store_uri: str, init_ref, test_ref, callbacks: list | None = None,
                name: str | None = None) -> TorchTrainer:
    """The run's trainer; a fixed ``name`` resumes that run's checkpoints (Tune trials), else a unique one."""
    d, workers = DistillSpec.from_config(cfg["distill"]), cfg["workers"]
    storage = root(cfg).join("train")
    use_gpu = d.gpus_per_worker > 0
    return TorchTrainer(
        train_fn,
        train_loop_config={"cfg": cfg, "store": store_uri, "init": init_ref, "test": test_ref,
                           "threads": max(1, int(d.cpus_per_worker)), "local": workers == 0,
                           "progress": callbacks is None},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": d.cpus_per_worker,
                                                           **({"GPU": d.gpus_per_worker} if use_gpu else {})}),
        run_config=RunConfig(name=name or f"{run_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
                             storage_path=storage.path,
                             storage_filesystem=None if isinstance(storage.fs, pafs.LocalFileSystem) else storage.fs,
                             failure_config=FailureConfig(max_failures=d.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[*(callbacks or []), *train_callbacks(cfg)],
                             worker_runtime_env={"env_vars": jemalloc_env()} if d.jemalloc else None),
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


def check_rejections(history: list[dict[str, Any]], d: DistillSpec) -> None:
    """A run whose steps were mostly rolled back has not distilled anything: say so instead of writing a set."""
    rejected = int(history[-1]["rejected"]) if history else 0
    if history and rejected > d.max_rejected_fraction * len(history):
        reasons = {h["skip_reason"].split(":")[0] for h in history if h.get("skip_reason") and not h["applied"]}
        raise DivergedError(f"{rejected} of {len(history)} distillation steps were rejected ({'; '.join(sorted(reasons))}); "
                            "no set was written: lower distill.lr_lr or distill.lr_img, or use distill.lr_param=log")


def lr_collapse(history: list[dict[str, Any]], d: DistillSpec) -> str | None:
    """What to tell the user when the learned lr ended below a tenth of its start: the set then barely moved. If the
    first matching loss was above that of a student that does not move (1 per matched target, by its weight), the
    inner steps took the student away from the expert, and shrinking the lr is what lowered the loss."""
    if not history or history[-1]["lr"] >= d.lr_init / 10:
        return None
    still = 1 + d.intermediate_weight * len(interior_points(d))
    first = history[0]["loss"]
    why = (f"; the first matching loss {first:.3f} was above {still:g}, a student that does not move: the inner steps took "
           "the student away from the expert (lower distill.lr_init, and distill.lr_lr by its square under lr_param=log, "
           "or distill.student_momentum)" if first > still else "")
    return f"the learned lr fell from {d.lr_init:g} to {history[-1]['lr']:.3g}{why}; the set is barely distilled"


def threshold_stall(history: list[dict[str, Any]], d: DistillSpec) -> str | None:
    """What to tell the user when DATM's loss threshold skipped more than ``max_rejected_fraction`` of the steps."""
    skipped = int(history[-1].get("skipped", 0)) if history else 0
    if not history or skipped <= d.max_rejected_fraction * len(history):
        return None
    last = max((h["iteration"] for h in history if h["applied"]), default=0)
    return (f"{skipped} of {len(history)} steps were skipped above distill.loss_threshold={d.loss_threshold:g} (the last "
            f"applied at iteration {last}, lr {history[-1]['lr']:.3g})"
            + ("" if d.threshold_patience else "; distill.threshold_patience backs the lr off after that many in a row"))


def run(cfg: dict[str, Any], store_uri: str | None = None, out: Location | None = None,
        callbacks: list | None = None, train_name: str | None = None) -> dict[str, Any]:
    """Distil from the expert store at ``store_uri`` (default: the configured one) into ``out`` (default: the
    method's set location); returns the set's URI as ``set`` with its metadata. ``callbacks`` go to the
    trainer's RunConfig and ``train_name`` fixes its run name (``raydd tune``)."""
    check_reachable(root(cfg))
    loc = out or set_location(cfg)
    if loc.join("set.parquet").exists():  # the same settings made it before: never overwrite it
        ds = load_set(loc)
        print(f"distilled set already at {loc.uri} (same settings): kept")
        return {"set": loc.uri, "lr": ds.lr, **ds.meta}
    store = open_store(cfg, store_uri)
    check_segments(cfg, store)
    init_ray(cfg)
    spec = dataset_spec(cfg["dataset"])
    train = open_split(cfg["dataset"], LoaderSpec.from_config(cfg["loader"]), "train")
    cfg = with_difficulty_window(cfg, int(store.epochs), len(train) / spec.num_classes)
    d = DistillSpec.from_config(cfg["distill"])
    require_gpus(max(1, cfg["workers"]) * d.gpus_per_worker, "distill.gpus_per_worker × workers")
    if d.heap == "jemalloc":
        require_jemalloc("distill.heap")
    zca = store.zca()
    images, labels, soft = initial_set_for(cfg, store, train)
    test_ref = ray.put(fast_eval_test(cfg, spec, zca, d.eval_test_size)) if d.eval_every else None
    init_ref = ray.put({"images": images, "labels": labels, "soft": soft})
    tic = time.time()
    result = trainer_for(cfg, store_uri=store.loc.uri, init_ref=init_ref, test_ref=test_ref,
                         callbacks=callbacks, name=train_name).fit()
    if result.error:
        raise result.error
    if result.metrics and "diverged" in result.metrics:
        raise DivergedError(f"{result.metrics['diverged']}; no set was written")
    with result.checkpoint.as_directory() as path:
        images, labels, soft, lr, history = assemble(Path(path))
    check_rejections(history, d)
    meta = {"method": cfg["method"]["name"], "ipc": cfg["ipc"], "dataset": spec.name, "model": cfg["model"],
            "workers": cfg["workers"], "iterations": d.iterations, "syn_steps": d.syn_steps,
            "expert_epochs": d.expert_epochs, "start_window": [d.min_start_epoch, d.max_start_epoch],
            "intermediate_targets": len(interior_points(d)),
            "experts": store.loc.uri, "experts_test_acc": store.final_test_accuracy(),
            "rejected_steps": int(history[-1]["rejected"]) if history else 0,
            "allocator": history[-1]["allocator"] if history else None, "wall_s": round(time.time() - tic, 1),
            "final_loss": history[-1]["loss"] if history else None}
    warnings = [w for w in (lr_collapse(history, d), threshold_stall(history, d)) if w]
    if warnings:
        meta["warning"] = "; ".join(warnings)
        for w in warnings:
            print(f"warning: {w}")
    ds = DistilledSet(images, labels, soft, None, lr, zca, meta)
    save_set(ds, loc, spec)
    if history:
        loc.join("distill_metrics.csv").write_bytes_atomic(pd.DataFrame(history).to_csv(index=False).encode())
    print(f"distilled {cfg['method']['name']} ipc={cfg['ipc']} ({len(ds)} images, lr={lr:.4g}) → {loc.uri} "
          f"in {meta['wall_s']} s; final loss {meta['final_loss']}"
          + (f"; the experts end at {100 * meta['experts_test_acc']:.2f}% test accuracy (a set seldom gets past "
             "its experts)" if meta["experts_test_acc"] is not None else ""))
    return {"set": loc.uri, "lr": lr, **meta}
