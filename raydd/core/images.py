"""In-memory image datasets and the way into model space (normalise, then ZCA), shared by every stage."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from raydd.core.zca import ZCA
from raydd.errors import RayddError


@dataclass(frozen=True)
class DatasetSpec:
    """What a stage needs to know about a dataset without loading it."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ImageData:
    """Images as uint8 ``N×C×H×W`` and integer labels ``N``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor) -> ImageData:
        return ImageData(self.images[index], self.labels[index])


def normalize(images: Tensor, spec: DatasetSpec) -> Tensor:
    """uint8 images → float32, scaled to [0, 1] and standardised per channel."""
    x = images.float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def denormalize(x: Tensor, spec: DatasetSpec) -> Tensor:
    """Inverse of :func:`normalize` to [0, 1] floats (for pictures)."""
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def to_model_space(images: Tensor, spec: DatasetSpec, zca: ZCA | None = None) -> Tensor:
    """uint8 images → what the networks see: normalised, then ZCA-whitened when the run uses ZCA."""
    x = normalize(images, spec)
    return zca.transform(x) if zca is not None else x


def decoded(batches: Iterable[ImageData], spec: DatasetSpec, zca: ZCA | None,
            device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 mini-batches → (model-space images, labels) on ``device``, decoded there one batch at a time."""
    zca = None if zca is None else zca.to(device)
    for batch in batches:
        yield to_model_space(batch.images.to(device), spec, zca), batch.labels.to(device)


class TooFewImagesError(RayddError, ValueError):
    """A class has fewer training images than the set needs."""


def random_indices(labels: Tensor, ipc: int, seed: int) -> Tensor:
    """``ipc`` random indices of each class, classes in order."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel() < ipc:
            raise TooFewImagesError(f"class {int(c)} has {idx.numel()} images, fewer than ipc={ipc}")
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:ipc]])
    return torch.cat(picks)
