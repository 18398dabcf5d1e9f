"""``raydd quantize method=ddoq|d4m``: k-means prototypes per class, one Ray task per group of classes.

Real images come through ``open_split`` (``loader`` group: in memory, or streamed from Parquet shards by Ray Data).

1. survey: one task per CPU opens its share of classes, counts them from the labels (IPC check)
   and gathers only a sample of about ``quantize.fit_samples`` images (evenly over the classes)
   for fitting the encoder;
2. the driver builds the encoder once (PCA fit, autoencoder training, VAE load) on that sample
   and puts its state in the object store;
3. quantize: each task takes ``quantize.classes_per_task`` classes in groups whose uint8 + float32
   images fit a quarter of ``loader.memory_limit_gb`` (at least one class a group), reads each
   group through a class-filtered split, and per class encodes, runs k-means (k = IPC) and decodes
   the centroids (or picks the training image nearest each, ``quantize.prototype=medoid``);
4. the driver writes the set: DDOQ keeps the cluster masses as per-sample weights, D4M does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
import torch
from torch import Tensor

from raydd.core.images import DatasetSpec, ImageData, TooFewImagesError, normalize
from raydd.core.kmeans import KMeansSettings
from raydd.data.registry import dataset_spec, open_split
from raydd.quantize.encoders import EncoderState, restore
from raydd.quantize.fit import autoencoder_location, build_encoder, needs_sample
from raydd.quantize.prototypes import Prototypes, quantize_class
from raydd.runtime import init_ray, require_gpus, reuse_heap, task_device
from raydd.specs import LoaderSpec, RunSpec
from raydd.storage.distilled import DistilledSet, load_set, save_set
from raydd.storage.fs import check_reachable
from raydd.storage.layout import root, set_location

GROUP_SHARE = 0.25  # of loader.memory_limit_gb: what one group of a task's classes may hold as uint8 + float32


def check_ipc(sizes: dict[int, int], ipc: int) -> None:
    for c, n in sorted(sizes.items()):
        if n < ipc:
            raise TooFewImagesError(f"class {c} has {n} training images, fewer than ipc={ipc}")


def class_groups(num_classes: int, per_task: int) -> list[list[int]]:
    return [list(range(s, min(s + per_task, num_classes))) for s in range(0, num_classes, per_task)]


def memory_groups(classes: list[int], sizes: dict[int, int], image_bytes: int, limit_bytes: float) -> list[list[int]]:
    """``classes`` in order, cut into runs whose ``sizes[c] * image_bytes`` sum to at most ``limit_bytes``
    (a class larger than that is a run of its own)."""
    groups: list[list[int]] = []
    held = 0
    for c in classes:
        need = sizes[c] * image_bytes
        if groups and held + need <= limit_bytes:
            groups[-1].append(c)
            held += need
        else:
            groups.append([c])
            held = need
    return groups


def fit_picks(labels: Tensor, classes: list[int], per_class: int, seed: int) -> Tensor:
    """Indices into ``labels`` of up to ``per_class`` random images of each of ``classes``, drawn class by
    class from one generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([idx[torch.randperm(idx.numel(), generator=gen)[:per_class]]
                      for c in classes for idx in [(labels == c).nonzero().flatten()]])


@ray.remote
def survey(ds_cfg: dict[str, Any], loader_cfg: dict[str, Any], classes: list[int], per_class: int,
           seed: int) -> tuple[dict[int, int], ImageData | None]:
    """Class sizes of ``classes`` (from the labels) and up to ``per_class`` random images of each (for fitting
    the encoder); a streamed split holds no other images."""
    split = open_split(ds_cfg, LoaderSpec.from_config(loader_cfg), "train", classes=classes)
    sizes = {c: int((split.labels == c).sum()) for c in classes}
    return sizes, split.gather(fit_picks(split.labels, classes, per_class, seed)) if per_class else None


def quantize_group(data: ImageData, classes: list[int], one: Callable[[Tensor, int], Prototypes],
                   device: torch.device) -> dict[int, Prototypes]:
    """``one(images of class c on device, c)`` for each of ``classes``, from one group's images."""
    images, labels = data.images.to(device), data.labels.to(device)
    return {c: one(images[labels == c], c) for c in classes}


@ray.remote
def quantize_classes(ds_cfg: dict[str, Any], loader_cfg: dict[str, Any], spec: DatasetSpec, groups: list[list[int]],
                     state: EncoderState, settings: KMeansSettings, ipc: int, seed: int,
                     prototype: str) -> dict[int, Prototypes]:
    """Read one group of classes at a time (a class-filtered split), quantizing each class with its own seeded
    generator, on the task's device."""
    reuse_heap()
    loader = LoaderSpec.from_config(loader_cfg)
    device = task_device()
    encoder = restore(state, spec, device)

    def one(images: Tensor, c: int) -> Prototypes:
        return quantize_class(images, spec, encoder, ipc, settings, torch.Generator().manual_seed(seed * 1_000_003 + c),
                              prototype)

    protos: dict[int, Prototypes] = {}
    for group in groups:  # the group's images are a temporary: freed before the next group is read
        protos |= quantize_group(open_split(ds_cfg, loader, "train", classes=group).read(group)[0], group, one, device)
    return protos


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
    surveyed = ray.get([survey.remote(cfg["dataset"], cfg["loader"], g, per_class, seed)
                        for g in class_groups(spec.num_classes, -(-spec.num_classes // cpus))])
    sizes = {c: n for s, _ in surveyed for c, n in s.items()}
    check_ipc(sizes, ipc)
    sample = normalize(torch.cat([d.images for _, d in surveyed]), spec) if per_class else None
    t_survey = time.time()

    encoder = build_encoder(q, spec, sample, autoencoder, seed)
    state = ray.put(encoder.state())
    t_encoder = time.time()

    settings = KMeansSettings(q.max_iters, q.tol, q.batch_size, q.restarts)
    limit = GROUP_SHARE * run_spec.loader.memory_limit_gb * 1e9
    image_bytes = 5 * spec.channels * spec.image_size ** 2  # uint8 + float32
    tasks = [memory_groups(g, sizes, image_bytes, limit) for g in class_groups(spec.num_classes, q.classes_per_task)]
    print(f"quantize: {len(tasks)} tasks reading {sum(map(len, tasks))} groups of classes, each one class or "
          f"at most {limit / 1e9:.2g} GB as uint8 + float32")
    task = quantize_classes.options(num_cpus=q.resources.cpus, num_gpus=q.resources.gpus)
    refs = [task.remote(cfg["dataset"], cfg["loader"], spec, groups, state, settings, ipc, seed, q.prototype)
            for groups in tasks]
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
