"""``raydd quantize method=ddoq|d4m``: k-means prototypes per class, one Ray task per group of classes.

1. survey: one task per CPU reads its share of classes, counts them (IPC check) and samples
   images for fitting the encoder;
2. the driver builds the encoder once (PCA fit, autoencoder training, VAE load) and puts its
   state in the object store;
3. quantize: tasks read only their classes, encode, run k-means (k = IPC) and decode the
   centroids (or pick the training image nearest each, ``quantize.prototype=medoid``);
4. the driver writes the set: DDOQ keeps the cluster masses as per-sample weights, D4M does not.
"""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from raydd.core.images import DatasetSpec, ImageData, TooFewImagesError, normalize
from raydd.core.kmeans import KMeansSettings
from raydd.data.registry import dataset_spec, load_split
from raydd.quantize.encoders import EncoderState, restore
from raydd.quantize.fit import autoencoder_location, build_encoder, needs_sample
from raydd.quantize.prototypes import Prototypes, quantize_class
from raydd.runtime import init_ray, require_gpus, reuse_heap, task_device
from raydd.specs import RunSpec
from raydd.storage.distilled import DistilledSet, load_set, save_set
from raydd.storage.fs import check_reachable
from raydd.storage.layout import root, set_location


def check_ipc(sizes: dict[int, int], ipc: int) -> None:
    for c, n in sorted(sizes.items()):
        if n < ipc:
            raise TooFewImagesError(f"class {c} has {n} training images, fewer than ipc={ipc}")


def class_groups(num_classes: int, per_task: int) -> list[list[int]]:
    return [list(range(s, min(s + per_task, num_classes))) for s in range(0, num_classes, per_task)]


@ray.remote
def survey(ds_cfg: dict[str, Any], classes: list[int], per_class: int, seed: int) -> tuple[dict[int, int], ImageData | None]:
    """Class sizes of ``classes`` and up to ``per_class`` random images of each (for fitting the encoder)."""
    data = load_split(ds_cfg, "train", classes=classes)
    sizes = {c: int((data.labels == c).sum()) for c in classes}
    if not per_class:
        return sizes, None
    gen = torch.Generator().manual_seed(seed)
    picks = [idx[torch.randperm(idx.numel(), generator=gen)[:per_class]]
             for c in classes for idx in [(data.labels == c).nonzero().flatten()]]
    return sizes, data.subset(torch.cat(picks))


@ray.remote
def quantize_classes(ds_cfg: dict[str, Any], spec: DatasetSpec, classes: list[int], state: EncoderState,
                     settings: KMeansSettings, ipc: int, seed: int, prototype: str) -> dict[int, Prototypes]:
    """Read only ``classes``, then quantize each with its own seeded generator, on the task's device."""
    reuse_heap()
    data = load_split(ds_cfg, "train", classes=classes)
    device = task_device()
    encoder = restore(state, spec, device)
    images = data.images.to(device)
    return {c: quantize_class(images[(data.labels == c).to(device)], spec, encoder, ipc, settings,
                              torch.Generator().manual_seed(seed * 1_000_003 + c), prototype)
            for c in classes}


def assemble(protos: dict[int, Prototypes], weighted: bool, meta: dict[str, Any]) -> DistilledSet:
    classes = sorted(protos)
    images = torch.cat([protos[c].images for c in classes])
    labels = torch.cat([torch.full((protos[c].images.shape[0],), c, dtype=torch.long) for c in classes])
    weights = torch.cat([protos[c].counts for c in classes]).float() if weighted else None
    return DistilledSet(images, labels, weights=weights, meta=meta)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Quantize every class into the method's set location; returns its URI as ``set`` with its metadata."""
    start = time.time()
    run_spec = RunSpec.from_config(cfg)
    q, method, ipc, seed = run_spec.quantize, run_spec.method.name, run_spec.ipc, run_spec.seed
    spec = dataset_spec(cfg["dataset"])
    loc = set_location(cfg)
    check_reachable(loc)
    if loc.join("set.parquet").exists():  # the same settings made it before: never overwrite it
        print(f"{method} set already at {loc.uri} (same settings): kept")
        return {"set": loc.uri, **load_set(loc).meta}
    init_ray(cfg)
    require_gpus(q.gpus_per_task, "quantize.gpus_per_task")
    autoencoder = autoencoder_location(root(cfg), spec.name, q)
    per_class = -(-q.fit_samples // spec.num_classes) if needs_sample(q, autoencoder) else 0
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    surveyed = ray.get([survey.remote(cfg["dataset"], g, per_class, seed)
                        for g in class_groups(spec.num_classes, -(-spec.num_classes // cpus))])
    sizes = {c: n for s, _ in surveyed for c, n in s.items()}
    check_ipc(sizes, ipc)
    sample = normalize(torch.cat([d.images for _, d in surveyed]), spec) if per_class else None
    t_survey = time.time()

    encoder = build_encoder(q, spec, sample, autoencoder, seed)
    state = ray.put(encoder.state())
    t_encoder = time.time()

    settings = KMeansSettings(q.max_iters, q.tol, q.batch_size, q.restarts)
    task = quantize_classes.options(num_cpus=q.resources.cpus, num_gpus=q.resources.gpus)
    refs = [task.remote(cfg["dataset"], spec, g, state, settings, ipc, seed, q.prototype)
            for g in class_groups(spec.num_classes, q.classes_per_task)]
    protos = {c: p for part in ray.get(refs) for c, p in part.items()}
    t_kmeans = time.time()

    meta = {"method": method, "ipc": ipc, "dataset": spec.name, "encoder": q.encoder, "prototype": q.prototype,
            "latent_dim": None if q.encoder == "pixel" else q.latent_dim, "model": run_spec.model.tag,
            "seed": seed, "class_sizes": {str(c): sizes[c] for c in sorted(sizes)},
            "objective": {str(c): protos[c].objective for c in sorted(protos)},
            "iterations": {str(c): protos[c].iterations for c in sorted(protos)},
            "minibatch_classes": [c for c in sorted(protos) if protos[c].minibatch]}
    ds = assemble(protos, weighted=method == "ddoq", meta=meta)
    ds.meta["wall_s"] = {"survey": round(t_survey - start, 2), "encoder": round(t_encoder - t_survey, 2),
                         "kmeans": round(t_kmeans - t_encoder, 2), "total": round(time.time() - start, 2)}
    save_set(ds, loc, spec)
    print(f"{method} ipc={ipc} encoder={q.encoder} on {spec.name}: {len(ds)} images → {loc.uri} "
          f"({ds.meta['wall_s']['total']:.1f} s)")
    return {"set": loc.uri, **ds.meta}
