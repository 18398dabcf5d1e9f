"""The evaluation protocol as pure functions: train from scratch on a set, report final test accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
    channels_last: bool | str = False  # NHWC weights and activations (the same values); "auto": see channels_last()
    compile: bool = False          # torch.compile the training forward (one static graph per batch shape)


def channels_last(setting: bool | str, device: torch.device) -> bool:
    """Whether a stage on ``device`` lays its tensors out NHWC: ``setting``, or for ``"auto"`` NHWC on CUDA
    and NCHW on CPU, where oneDNN's NCHW instance norm outruns what NHWC saves elsewhere
    (``benchmarks/results/distill_speed.md``)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


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


# One mini-batch on the model's device: model-space images, labels, soft-label logits, per-sample weights.
Batch = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, spec: TrainSpec, gen: torch.Generator) -> None:
    """One SGD step of the protocol: DSA (its seed drawn from ``gen``), the forward pass (bfloat16 under
    ``spec.amp``), :func:`set_loss`, backward, step."""
    x, labels, soft, weights = batch
    if spec.dsa:
        x = dsa(x, seed=int(torch.randint(2**31, (1,), generator=gen)), strategy=spec.dsa_strategy)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=spec.amp):
        logits = model(x)
    loss = set_loss(logits.float(), labels, soft, weights, spec.soft_label_temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_on_batches(model: nn.Module, epoch: Callable[[torch.Generator], Iterable[Batch]], spec: TrainSpec,
                     seed: int, on_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """SGD with momentum, lr ×0.1 at half the epochs, :func:`train_step` on every batch of ``epoch(gen)`` (one
    epoch's batches, their order drawn from the seeded ``gen``, which then seeds DSA batch by batch); under
    ``spec.compile`` through the compiled forward (the returned module stays eager)."""
    if channels_last(spec.channels_last, next(model.parameters()).device):
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, dynamic=False) if spec.compile else model
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    # Milestone at least 1: a milestone of 0 would decay the lr before the first epoch.
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, spec.epochs // 2)], gamma=0.1)
    model.train()
    for e in range(spec.epochs):
        for batch in epoch(gen):
            train_step(forward, opt, batch, spec, gen)
        sched.step()
        if on_epoch is not None:
            on_epoch(e)
    return model


def train_on_set(model: nn.Module, images: Tensor, labels: Tensor, spec: TrainSpec, seed: int,
                 soft: Tensor | None = None, weights: Tensor | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """:func:`train_on_batches` over a set in memory, reshuffled every epoch (the MTT/DATM protocol).

    Runs on the device of ``model``'s parameters; the set is moved there once.
    """
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    soft = None if soft is None else soft.to(device)
    weights = None if weights is None else weights.to(device)

    def epoch(gen: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, order.numel(), spec.batch_size):
            idx = order[start:start + spec.batch_size].to(device)
            yield images[idx], labels[idx], None if soft is None else soft[idx], None if weights is None else weights[idx]

    return train_on_batches(model, epoch, spec, seed, on_epoch)


@torch.no_grad()
def batches_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over (images, labels) mini-batches in model space, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in batches:
        correct += (model(x.to(device)).argmax(1).cpu() == y.cpu()).sum().item()
        total += y.numel()
    return correct / max(1, total)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on a (normalised, possibly whitened) test set, on the model's device."""
    return batches_accuracy(model, ((images[i:i + batch_size], labels[i:i + batch_size])
                                    for i in range(0, images.shape[0], batch_size)))
