"""Initialising the synthetic set: real samples (MTT), correctly-classified ones (DATM), representatives (AST)."""

from __future__ import annotations


import torch
from torch import Tensor

from raydd.core.images import DatasetSpec, ImageData, random_indices, to_model_space
from raydd.core.kmeans import kmeans, medoids
from raydd.core.zca import ZCA
from raydd.models.functional import FlatModel
from raydd.specs import DistillSpec


@torch.no_grad()
def expert_logits(net: FlatModel, experts: list[Tensor], x: Tensor, batch: int = 1024) -> Tensor:
    """Mean logits of several expert parameter vectors on ``x``."""
    out = torch.zeros(x.shape[0], net.module(x[:1]).shape[1])
    for theta in experts:
        out += torch.cat([net(theta, x[i:i + batch]) for i in range(0, x.shape[0], batch)])
    return out / len(experts)


def correct_indices(train: ImageData, x_all: Tensor, net: FlatModel, experts: list[Tensor], ipc: int,
                    seed: int, pool: int = 20) -> Tensor:
    """DATM: per class, ``ipc`` random images among a pool that the experts classify correctly."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in train.labels.unique(sorted=True):
        idx = (train.labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:max(pool * ipc, ipc)]]
        ok = idx[expert_logits(net, experts, x_all[idx]).argmax(1) == c]
        rest = idx[~torch.isin(idx, ok)]
        picks.append(torch.cat([ok, rest])[:ipc])  # top up with misclassified ones if too few are correct
    return torch.cat(picks)


def representatives(x: Tensor, labels: Tensor, ipc: int, how: str, seed: int) -> tuple[Tensor, Tensor]:
    """AST representative initialisation per class: k-means centres, the real image nearest each centre
    (``kmeans_medoid``), or averages of random groups (``mean``)."""

    gen = torch.Generator().manual_seed(seed)
    images, ys = [], []
    for c in labels.unique(sorted=True):
        xc = x[labels == c]
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


def initial_set(d: DistillSpec, train: ImageData, spec: DatasetSpec, ipc: int, seed: int, zca: ZCA | None,
                net: FlatModel, experts: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """Images, labels and (DATM) soft-label logits of the synthetic set before distillation."""
    how = d.init
    if how == "real":
        idx = random_indices(train.labels, ipc, seed)
        images, labels = to_model_space(train.images[idx], spec, zca), train.labels[idx]
    elif how == "correct":
        x_all = to_model_space(train.images, spec, zca)
        idx = correct_indices(train, x_all, net, experts, ipc, seed)
        images, labels = x_all[idx], train.labels[idx]
    else:  # kmeans, kmeans_medoid or mean: AST's representatives (raydd.specs checks distill.init)
        images, labels = representatives(to_model_space(train.images, spec, zca), train.labels, ipc, how, seed)
    soft = expert_logits(net, experts, images) if d.soft_labels else None
    return images.contiguous(), labels, soft
