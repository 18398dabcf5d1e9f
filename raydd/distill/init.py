"""Initialising the synthetic set: real samples (MTT), correctly-classified ones (DATM), representatives (AST)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from raydd.core.images import DatasetSpec, ImageData, TooFewImagesError, random_indices, to_model_space
from raydd.core.kmeans import kmeans, medoids
from raydd.core.zca import ZCA
from raydd.data.split import Split
from raydd.models.functional import FlatModel
from raydd.specs import DistillSpec

Net = Callable[[Tensor, Tensor], Tensor]  # (parameters, images) -> logits, as FlatModel


@torch.no_grad()
def logits_of(net: Net, theta: Tensor, x: Tensor, batch: int = 1024) -> Tensor:
    """One expert's logits on ``x``, in batches."""
    return torch.cat([net(theta, x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def expert_logits(net: Net, experts: Sequence[Tensor], x: Tensor) -> Tensor:
    """Mean logits of several expert parameter vectors on ``x`` (raydd's ``soft_label_init=mean``)."""
    return sum(logits_of(net, theta, x) for theta in experts) / len(experts)


def correct_mean_logits(net: Net, experts: Sequence[Tensor], x: Tensor, labels: Tensor) -> Tensor:
    """DATM's code: per image, the mean logits of the experts whose argmax is its label.

    An image no expert classifies correctly gets the mean over all of them (raydd's fallback: the
    reference divides by zero there).
    """
    total = every = count = 0
    for theta in experts:
        z = logits_of(net, theta, x)
        ok = (z.argmax(1) == labels).unsqueeze(1)
        total, every, count = total + z * ok, every + z, count + ok
    return torch.where(count > 0, total / torch.clamp(count, min=1), every / len(experts))


@torch.no_grad()
def correct_in_order(order: Tensor, label: int, images_of: Callable[[Tensor], Tensor], net: Net,
                     experts: Sequence[Tensor], ipc: int, batch: int = 256) -> Tensor:
    """DATM's code for one class: walking ``order`` (the class's indices), the first ``ipc`` images expert 0
    classifies as ``label``; if too few, those the next experts do, in turn, until ``ipc`` (in ``order``'s order).

    A class still short after every expert is topped up with its misclassified images, in ``order``
    (raydd's fallback: the reference's loop never ends there).
    """
    chosen = torch.zeros(order.numel(), dtype=torch.bool)
    for k in range(len(experts)):
        if chosen.sum() >= ipc:
            break
        theta = experts[k]  # read only when needed
        for lo in range(0, order.numel(), batch):
            ok = net(theta, images_of(order[lo:lo + batch])).argmax(1).cpu() == label
            new = (ok & ~chosen[lo:lo + batch]).nonzero().squeeze(1)[:ipc - int(chosen.sum())]
            chosen[lo + new] = True
            if chosen.sum() >= ipc:
                break
    return order[torch.cat([chosen.nonzero().squeeze(1), (~chosen).nonzero().squeeze(1)])[:ipc]]


def correct_indices(labels: Tensor, images_of: Callable[[Tensor], Tensor], net: Net, experts: Sequence[Tensor],
                    ipc: int, seed: int) -> Tensor:
    """DATM (``init=correct``): per class, ``correct_in_order`` over a random order of all its images."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel() < ipc:
            raise TooFewImagesError(f"class {int(c)} has {idx.numel()} images, fewer than ipc={ipc}")
        picks.append(correct_in_order(idx[torch.randperm(idx.numel(), generator=gen)], int(c), images_of, net,
                                      experts, ipc))
    return torch.cat(picks)


def pooled_correct_indices(labels: Tensor, images_of: Callable[[Tensor], Tensor], net: Net,
                           experts: Sequence[Tensor], ipc: int, seed: int, pool: int = 20) -> Tensor:
    """raydd's ``init=correct_pool``: per class, ``ipc`` of a random pool of ``pool·ipc`` images, those the
    experts' mean logits classify correctly first, then misclassified ones."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:max(pool * ipc, ipc)]]
        ok = expert_logits(net, experts, images_of(idx)).argmax(1) == c
        picks.append(torch.cat([idx[ok], idx[~ok]])[:ipc])
    return torch.cat(picks)


def representatives(labels: Tensor, images_of: Callable[[Tensor], Tensor], ipc: int, how: str,
                    seed: int) -> tuple[Tensor, Tensor]:
    """AST representative initialisation per class (``images_of(index)``: the class's model-space images): k-means
    centres, the real image nearest each centre (``kmeans_medoid``), or averages of random groups (``mean``)."""

    gen = torch.Generator().manual_seed(seed)
    images, ys = [], []
    for c in labels.unique(sorted=True):
        xc = images_of((labels == c).nonzero().squeeze(1))
        if how in ("kmeans", "kmeans_medoid"):
            flat = xc.flatten(1)
            result = kmeans(flat, ipc, gen)
            centres = result.centers.view(ipc, *xc.shape[1:])
            if how == "kmeans_medoid":  # an empty cluster (index -1) keeps its centre
                idx = medoids(flat, result.assign, result.centers)
                centres = torch.where((idx >= 0).view(-1, *[1] * (xc.dim() - 1)), xc[idx.clamp(min=0)], centres)
        else:
            groups = torch.randperm(xc.shape[0], generator=gen) % ipc
            centres = torch.stack([xc[groups == g].mean(0) for g in range(ipc)])
        images.append(centres)
        ys.append(torch.full((ipc,), int(c)))
    return torch.cat(images), torch.cat(ys)


class ClassImages:
    """A split's images in model space by global index, read a class at a time: a call reads the classes of its
    indices (``Split.read``) unless the last read holds them, keeps that read (uint8) for the next calls and
    decodes only the rows asked for. The per-class passes above ask for one class after another."""

    def __init__(self, split: Split, spec: DatasetSpec, zca: ZCA | None) -> None:
        self.split, self.spec, self.zca = split, spec, zca
        self.classes: set[int] | None = None  # those of the last read, its images and their global indices
        self.data: ImageData | None = None
        self.index: Tensor | None = None

    def __call__(self, idx: Tensor) -> Tensor:
        classes = set(self.split.labels[idx].tolist())
        if self.classes is None or not classes <= self.classes:
            self.data = None  # drop the last class before reading the next
            self.data, self.index = self.split.read(sorted(classes))
            self.classes = classes
        return to_model_space(self.data.images[torch.searchsorted(self.index, idx)], self.spec, self.zca)


def initial_set(d: DistillSpec, train: Split, spec: DatasetSpec, ipc: int, seed: int, zca: ZCA | None,
                net: FlatModel, final: Sequence[Tensor], early: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """Images, labels and (DATM) soft-label logits of the synthetic set before distillation.

    ``final``: every expert at its last epoch (DATM's code: ``init=correct``, ``soft_label_init=correct``);
    ``early``: the first five at ``max_start_epoch`` (raydd's ``correct_pool`` and ``soft_label_init=mean``).
    Either may read its parameters only when indexed. Of ``train`` only the picked images (``real``) or one class at
    a time (the others) are read.
    """
    how = d.init
    by_class = ClassImages(train, spec, zca)
    if how in ("real", "correct", "correct_pool"):
        if how == "real":
            idx = random_indices(train.labels, ipc, seed)
        elif how == "correct":
            idx = correct_indices(train.labels, by_class, net, final, ipc, seed)
        else:
            idx = pooled_correct_indices(train.labels, by_class, net, early, ipc, seed)
        picked = train.gather(idx)
        images, labels = to_model_space(picked.images, spec, zca), picked.labels
    else:  # kmeans, kmeans_medoid or mean: AST's representatives (raydd.specs checks distill.init)
        images, labels = representatives(train.labels, by_class, ipc, how, seed)
    soft = None
    if d.soft_labels:
        soft = correct_mean_logits(net, final, images, labels) if d.soft_label_init == "correct" else \
            expert_logits(net, early, images)
    return images.contiguous(), labels, soft
