"""Turn a registered dataset into raydd Parquet shards, one shard's worth of images at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raydd.core.images import DatasetSpec, ImageData
from raydd.data.parquet import write_shard, write_split
from raydd.data.registry import DATASETS, load_split
from raydd.data.sources import decode_images
from raydd.storage.fs import Location

SPLITS = ("train", "test")


def is_image_folder(cfg_dataset: dict[str, Any]) -> bool:
    """ImageFolder trees (tiny_imagenet, imagenet1k) are decoded per shard; the rest fit in memory."""
    return DATASETS[cfg_dataset["name"]].sized


def mixed(samples: list[tuple[str, int]], seed: int | None) -> list[tuple[str, int]]:
    """``samples`` in a seeded random order (``seed`` None: as listed)."""
    if seed is None:
        return samples
    return [samples[i] for i in np.random.default_rng(seed).permutation(len(samples))]


def chunks(samples: list[tuple[str, int]], rows_per_shard: int) -> list[list[tuple[str, int]]]:
    """Consecutive runs of ``rows_per_shard`` samples: shard ``i`` gets ``chunks(...)[i]``."""
    return [samples[start:start + rows_per_shard] for start in range(0, len(samples), rows_per_shard)]


def convert_shard(samples: list[tuple[str, int]], image_size: int, out: Location, split: str, index: int,
                  num_classes: int) -> int:
    """Decode one chunk of ``(path, label)`` samples and write it as shard ``index``; returns its rows."""
    images = decode_images([path for path, _ in samples], image_size)
    write_shard(ImageData(images, torch.tensor([c for _, c in samples], dtype=torch.long)), out, split, index,
                num_classes)
    return len(samples)


def convert_in_memory(cfg_dataset: dict[str, Any], spec: DatasetSpec, out: Location, rows_per_shard: int) -> dict[str, int]:
    """Load each split of a small dataset whole and write it as shards; returns rows per split."""
    rows = {}
    for split in SPLITS:
        data = load_split(cfg_dataset, split)
        write_split(data, out, split, spec.num_classes, rows_per_shard)
        rows[split] = len(data)
    return rows
