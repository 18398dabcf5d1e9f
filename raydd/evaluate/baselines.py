"""Reference sets built from real data: ``random`` (IPC real images per class) and ``full``."""

from __future__ import annotations

from raydd.core.images import DatasetSpec, ImageData, normalize, random_indices
from raydd.storage.distilled import DistilledSet


def random_set(train: ImageData, spec: DatasetSpec, ipc: int, seed: int) -> DistilledSet:
    idx = random_indices(train.labels, ipc, seed)
    return DistilledSet(normalize(train.images[idx], spec), train.labels[idx],
                        meta={"method": "random", "ipc": ipc, "dataset": spec.name, "seed": seed})


def full_set(train: ImageData, spec: DatasetSpec) -> DistilledSet:
    return DistilledSet(normalize(train.images, spec), train.labels,
                        meta={"method": "full", "ipc": None, "dataset": spec.name})
