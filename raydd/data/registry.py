"""Datasets by name: ``load_dataset(cfg)`` → spec, train and test splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydd.core.images import DatasetSpec, ImageData
from raydd.data import parquet, sources, standin
from raydd.data.split import Shards, Split
from raydd.specs import ConfigError, LoaderSpec
from raydd.storage.fs import resolve

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Entry:
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    load: Callable[..., ImageData]
    sized: bool = False  # the loader takes an image_size (resized datasets)
    generated: bool = False  # `raydd data` generates it from the dataset keys; stages read it from uri


DATASETS: dict[str, Entry] = {
    "digits": Entry(10, 1, 8, (0.3,), (0.38,), sources.digits),
    "mnist": Entry(10, 1, 28, (0.1307,), (0.3081,), sources.mnist),
    "fashion_mnist": Entry(10, 1, 28, (0.2861,), (0.3530,), sources.fashion_mnist),
    "cifar10": Entry(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), sources.cifar10),
    "cifar100": Entry(100, 3, 32, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), sources.cifar100),
    "tiny_imagenet": Entry(200, 3, 64, IMAGENET_MEAN, IMAGENET_STD, sources.image_folder, sized=True),
    "imagenet1k": Entry(1000, 3, 64, IMAGENET_MEAN, IMAGENET_STD, sources.image_folder, sized=True),
    standin.NAME: Entry(1000, 3, 64, IMAGENET_MEAN, IMAGENET_STD, standin.unwritten, generated=True),
}


# Class names in label order where the dataset defines them; other datasets name classes by index.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": tuple("0123456789"),
    "mnist": tuple("0123456789"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def class_names(name: str, num_classes: int) -> list[str]:
    """The dataset's class names, or ``"0" … "K-1"``."""
    names = CLASS_NAMES.get(name)
    return list(names) if names and len(names) == num_classes else [str(c) for c in range(num_classes)]


def dataset_names() -> list[str]:
    return [*DATASETS, "parquet"]


def is_generated(name: str) -> bool:
    """A dataset that ``raydd data`` generates rather than converts (see :mod:`raydd.data.standin`)."""
    return name in DATASETS and DATASETS[name].generated


def _get(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def source_root(cfg: dict[str, Any]) -> str | None:
    """``dataset.root``, else ``$RAYDD_<NAME>_ROOT``."""
    return _get(cfg, "root", sources.env_root(cfg["name"]))


def dataset_spec(cfg: dict[str, Any]) -> DatasetSpec:
    """The spec of the configured dataset, without loading images (reads one Parquet footer at most)."""
    name = cfg["name"]
    if name not in DATASETS and name != "parquet":
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}")
    if _get(cfg, "uri") or name == "parquet":
        if not _get(cfg, "uri"):
            raise ValueError("dataset 'parquet' needs dataset.uri (a local path or s3://bucket/prefix)")
        meta = parquet.read_meta(resolve(cfg["uri"], cfg.get("endpoint_url")), "train")
        entry = DATASETS.get(name)
        channels = meta["channels"]
        mean = tuple(_get(cfg, "mean", entry.mean if entry else (0.5,) * channels))
        std = tuple(_get(cfg, "std", entry.std if entry else (0.5,) * channels))
        return DatasetSpec(name, meta["num_classes"], channels, meta["height"], mean, std)
    e = DATASETS[name]
    size = int(_get(cfg, "image_size", e.image_size)) if e.sized or e.generated else e.image_size
    classes = int(_get(cfg, "num_classes", e.num_classes)) if e.generated else e.num_classes
    return DatasetSpec(name, classes, e.channels, size, tuple(_get(cfg, "mean", e.mean)), tuple(_get(cfg, "std", e.std)))


def load_split(cfg: dict[str, Any], split: str, classes: list[int] | None = None) -> ImageData:
    """Load ``split`` ('train' or 'test') of the configured dataset, optionally only ``classes``."""
    name = cfg["name"]
    if _get(cfg, "uri") or name == "parquet":
        return parquet.read_split(resolve(cfg["uri"], cfg.get("endpoint_url")), split, classes)
    entry = DATASETS[name]
    root = source_root(cfg)
    load = partial(entry.load, image_size=dataset_spec(cfg).image_size) if entry.sized else entry.load
    data = load(root, split)
    if classes is not None:
        data = data.subset(torch.isin(data.labels, torch.tensor(classes)))
    return data


def is_parquet(cfg: dict[str, Any]) -> bool:
    return bool(_get(cfg, "uri")) or cfg["name"] == "parquet"


def require_shards(cfg: dict[str, Any], loader: LoaderSpec) -> None:
    """``loader.mode=stream`` needs Parquet shards (checked before any work, and again where a split opens)."""
    if loader.mode == "stream" and not is_parquet(cfg):
        raise ConfigError(f"loader.mode=stream reads Parquet shards: write {cfg['name']} with `raydd data "
                          f"dataset={cfg['name']} data.out=<uri>`, then set dataset.uri=<uri>")


def open_split(cfg: dict[str, Any], loader: LoaderSpec, split: str, classes: list[int] | None = None) -> Split:
    """``split`` of the configured dataset (only ``classes``, if given), in memory or streamed from its Parquet
    shards through Ray Data: ``loader.mode``, where ``auto`` streams a split whose float32 size exceeds
    ``loader.memory_limit_gb``. Prints the decision; reads only the label column before deciding."""
    spec = dataset_spec(cfg)
    float_gb = 4 * spec.channels * spec.image_size ** 2 / 1e9
    what = f"{spec.name} {split}" + (f" (classes {classes[0]}…{classes[-1]})" if classes else "")
    limit = f"loader.memory_limit_gb={loader.memory_limit_gb:g}"
    if not is_parquet(cfg):
        require_shards(cfg, loader)
        if DATASETS[cfg["name"]].sized and loader.mode == "auto":
            gb = len(sources.image_folder_samples(source_root(cfg), "train" if split == "train" else "val")) * float_gb
            if gb > loader.memory_limit_gb:
                raise ConfigError(f"{what} is {gb:.1f} GB as float32, over {limit}: write it as Parquet shards "
                                  f"(raydd data dataset={spec.name} data.out=<uri>) and read them with dataset.uri=<uri>")
        data = load_split(cfg, split, classes)
        print(f"{what}: {len(data)} images, {len(data) * float_gb:.2f} GB as float32: in memory")
        return Split.in_memory(data, loader)
    loc = resolve(cfg["uri"], cfg.get("endpoint_url"))
    meta = parquet.read_meta(loc, split)
    found = [(path, parquet.shard_labels(loc, path, classes)) for path in parquet.shard_paths(loc, split)]
    found = [(path, labels) for path, labels in found if labels.size]
    labels = torch.from_numpy(np.concatenate([labels for _, labels in found] or [np.empty(0, np.int64)]))
    sizes = [labels.size for _, labels in found]
    gb = labels.numel() * float_gb
    if loader.mode == "memory" or (loader.mode == "auto" and gb <= loader.memory_limit_gb):
        data = parquet.read_split(loc, split, classes)
        print(f"{what}: {len(data)} images, {gb:.2f} GB as float32 (≤ {limit}): in memory")
        return Split.in_memory(data, loader, sizes)
    paths = tuple(path for path, _ in found)
    shards = Shards(loc.uri, cfg.get("endpoint_url"), paths, tuple(sizes),
                    tuple(loc.fs.get_file_info(list(paths))[i].size for i in range(len(paths))),
                    None if classes is None else tuple(classes), (meta["channels"], meta["height"], meta["width"]))
    print(f"{what}: {labels.numel()} images, {gb:.2f} GB as float32 ({'loader.mode=stream' if loader.mode == 'stream' else '> ' + limit}): "
          f"streamed from {len(paths)} Parquet shards through Ray Data, {loader.shuffle_shards} shards per shuffle run")
    return Split(labels, sizes, loader, shards=shards)


def load_dataset(cfg: dict[str, Any]) -> tuple[DatasetSpec, ImageData, ImageData]:
    """Spec, train split and test split of the configured dataset."""
    spec = dataset_spec(cfg)
    return spec, load_split(cfg, "train"), load_split(cfg, "test")


def check_available(cfg: dict[str, Any]) -> DatasetSpec:
    """The spec, after checking the data is there (cheaply: the test split of small datasets, directories of large)."""
    spec = dataset_spec(cfg)
    entry = DATASETS.get(cfg["name"])
    if entry is not None and not _get(cfg, "uri"):
        if entry.sized:
            root = source_root(cfg)
            if not root or not (Path(root) / "train").is_dir():
                raise sources.DatasetNotFoundError(
                    f"{cfg['name']}: dataset.root must be an ImageFolder root with train/ and val/ (got {root!r}), "
                    "or set dataset.uri to Parquet shards")
        else:
            load_split(cfg, "test")
    return spec
