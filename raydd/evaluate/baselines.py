"""Reference sets built from real data: ``random`` (IPC real images per class) and ``full``."""

from __future__ import annotations

import torch

from raydd.core.images import DatasetSpec, ImageData, normalize
from raydd.storage.distilled import DistilledSet


def random_indices(labels: torch.Tensor, ipc: int, seed: int) -> torch.Tensor:
    """``ipc`` random indices of each class, classes in order."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel() < ipc:
            raise ValueError(f"class {int(c)} has {idx.numel()} images, fewer than ipc={ipc}")
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:ipc]])
    return torch.cat(picks)


def random_set(train: ImageData, spec: DatasetSpec, ipc: int, seed: int) -> DistilledSet:
    idx = random_indices(train.labels, ipc, seed)
    return DistilledSet(normalize(train.images[idx], spec), train.labels[idx],
                        meta={"method": "random", "ipc": ipc, "dataset": spec.name, "seed": seed})


def full_set(train: ImageData, spec: DatasetSpec) -> DistilledSet:
    return DistilledSet(normalize(train.images, spec), train.labels,
                        meta={"method": "full", "ipc": None, "dataset": spec.name})
