"""The evaluation protocol as pure functions: train from scratch on a set, report final test accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raydd.core.dsa import DEFAULT_STRATEGY, dsa


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 300
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    soft_label_temperature: float = 1.0
    amp: bool = False              # bfloat16 autocast for the forward pass (weights and optimiser stay float32)
    channels_last: bool = False    # NHWC weights and activations (same values, faster convolutions)


def per_sample_loss(logits: Tensor, labels: Tensor, soft: Tensor | None, temperature: float = 1.0) -> Tensor:
    """Cross-entropy per sample on hard labels, or on soft labels (logits → softmax targets)."""
    if soft is not None:
        return -(F.softmax(soft / temperature, dim=1) * F.log_softmax(logits, dim=1)).sum(1)
    return F.cross_entropy(logits, labels, reduction="none")


def set_loss(logits: Tensor, labels: Tensor, soft: Tensor | None, weights: Tensor | None, temperature: float = 1.0) -> Tensor:
    """:func:`per_sample_loss`, averaged (weighted per sample when ``weights`` are given)."""
    per_sample = per_sample_loss(logits, labels, soft, temperature)
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / weights.sum()


def train_on_set(model: nn.Module, images: Tensor, labels: Tensor, spec: TrainSpec, seed: int,
                 soft: Tensor | None = None, weights: Tensor | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """SGD with momentum, lr ×0.1 at half the epochs, DSA on every batch (the MTT/DATM protocol).

    Runs on the device of ``model``'s parameters; the set is moved there once.
    """
    device = next(model.parameters()).device
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    images, labels = images.to(device), labels.to(device)
    soft = None if soft is None else soft.to(device)
    weights = None if weights is None else weights.to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    # Milestone at least 1: a milestone of 0 would decay the lr before the first epoch.
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, spec.epochs // 2)], gamma=0.1)
    n = images.shape[0]
    model.train()
    for epoch in range(spec.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, spec.batch_size):
            idx = order[start:start + spec.batch_size].to(device)
            x = images[idx]
            if spec.dsa:
                x = dsa(x, seed=int(torch.randint(2**31, (1,), generator=gen)), strategy=spec.dsa_strategy)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.amp):
                logits = model(x)
            loss = set_loss(logits.float(), labels[idx], None if soft is None else soft[idx],
                            None if weights is None else weights[idx], spec.soft_label_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch)
    return model


@torch.no_grad()
def batch_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over ``(images, labels)`` batches, each moved to the model's device."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for images, labels in batches:
        correct += (model(images.to(device)).argmax(1).cpu() == labels.cpu()).sum().item()
        total += labels.numel()
    return correct / max(1, total)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on a (normalised, possibly whitened) test set, on the model's device."""
    return batch_accuracy(model, zip(images.split(batch_size), labels.split(batch_size)))
