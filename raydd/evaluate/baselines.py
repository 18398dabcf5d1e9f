"""Reference sets built from real data: ``random`` (IPC real images per class) and ``full``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raydd.core.images import DatasetSpec, normalize, random_indices
from raydd.data.split import Split
from raydd.storage.distilled import DistilledSet


def random_set(train: Split, spec: DatasetSpec, ipc: int, seed: int) -> DistilledSet:
    """IPC random real images per class; only those are read."""
    picked = train.gather(random_indices(train.labels, ipc, seed))
    return DistilledSet(normalize(picked.images, spec), picked.labels,
                        meta={"method": "random", "ipc": ipc, "dataset": spec.name, "seed": seed})


@dataclass(frozen=True)
class FullSet:
    """The ``full`` baseline: the whole training split, trained on as a stream of uint8 mini-batches decoded one at
    a time (never held as float). It answers what evaluation asks of a :class:`DistilledSet`: hard labels, no
    learned lr, no ZCA."""

    split: Split
    meta: dict[str, Any] = field(default_factory=dict)
    lr: None = None
    zca: None = None
    temperature: float = 1.0

    def __len__(self) -> int:
        return len(self.split)


def full_set(train: Split, spec: DatasetSpec) -> FullSet:
    return FullSet(train, {"method": "full", "ipc": None, "dataset": spec.name})
