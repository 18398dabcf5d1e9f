"""Expert training as pure functions: ``plain`` (MTT) and ``smooth`` (AST) variants.

Both snapshot the flattened parameters at initialisation and after every epoch, and
record the epoch's mean cross-entropy and the test accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raydd.core.dsa import DEFAULT_STRATEGY, dsa
from raydd.core.train import accuracy
from raydd.models.functional import flatten_params
from raydd.specs import ExpertsSpec

@dataclass
class ExpertRun:
    """Snapshots ``(epochs+1)×P`` (float32, CPU) and per-snapshot metrics (no train loss at epoch 0)."""

    snapshots: Tensor
    train_loss: list[float | None]
    test_acc: list[float]


def clip_loss(loss: Tensor, clip_value: float) -> Tensor:
    """``loss × min(1, clip_value / loss)``: the value is at most ``clip_value``, the gradient scaled alike."""
    return loss * (clip_value / loss.detach()).clamp(max=1.0)


def gradient_penalty(loss: Tensor, params: list[Tensor]) -> Tensor:
    """``‖∇_θ loss‖²``, differentiable (double backward)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return sum(g.square().sum() for g in grads)


def objective(loss: Tensor, params: list[Tensor], spec: ExpertsSpec, epoch: int) -> Tensor:
    """The loss to minimise: cross-entropy (plain), clipped early plus a gradient penalty (smooth)."""
    if spec.variant == "plain":
        return loss
    if epoch < spec.clip_epochs:
        loss = clip_loss(loss, spec.clip_value)
    if spec.gradient_penalty > 0:
        loss = loss + spec.gradient_penalty * gradient_penalty(loss, params)
    return loss


def train_expert(model: nn.Module, images: Tensor, labels: Tensor, test_images: Tensor, test_labels: Tensor,
                 spec: ExpertsSpec, seed: int,
                 on_epoch: Callable[[int, float, float], None] | None = None) -> ExpertRun:
    """SGD for ``spec.epochs`` epochs with a seeded batch order and DSA; ``on_epoch(epoch, loss, acc)`` after each."""
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    snapshots = [flatten_params(model).cpu()]
    losses: list[float | None] = [None]
    accs = [accuracy(model, test_images, test_labels)]
    n = images.shape[0]
    for epoch in range(spec.epochs):
        model.train()
        total = torch.zeros((), device=images.device)
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, spec.batch_size):
            idx = order[start:start + spec.batch_size].to(images.device)
            x = images[idx]
            if spec.dsa:
                x = dsa(x, seed=int(torch.randint(2**31, (1,), generator=gen)), strategy=DEFAULT_STRATEGY)
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=spec.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx])
            total += loss.detach() * idx.numel()
            opt.zero_grad(set_to_none=True)
            objective(loss, params, spec, epoch).backward()
            opt.step()
        snapshots.append(flatten_params(model).cpu())
        losses.append(float(total) / n)
        accs.append(accuracy(model, test_images, test_labels))
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1], accs[-1])
    return ExpertRun(torch.stack(snapshots), losses, accs)
