"""Expert training as pure functions: ``plain`` (MTT), ``smooth`` (AST) and ``ftd`` (FTD's GSAM, DATM's experts).

All snapshot the flattened parameters at initialisation and after every epoch, and
record the epoch's mean cross-entropy and the test accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raydd.core.dsa import DEFAULT_STRATEGY, dsa
from raydd.core.train import batches_accuracy
from raydd.data.split import Split
from raydd.experts.gsam import gsam_step, proportional_rho
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


def clip_scale(epoch: int, clip_epochs: int) -> float:
    """AST's clipping schedule: 0.5 at epoch 0, rising by 0.5/clip_epochs an epoch (0.5, 0.55, …, 0.95 for 10)."""
    return 0.5 + 0.5 * epoch / clip_epochs


def clipped(loss: Tensor, spec: ExpertsSpec, epoch: int) -> Tensor:
    """The cross-entropy of a smooth expert's first ``clip_epochs`` epochs: scaled (``scale``) or clipped (``clip``)."""
    if epoch >= spec.clip_epochs:
        return loss
    if spec.clip_mode == "scale":
        return loss * clip_scale(epoch, spec.clip_epochs)
    return clip_loss(loss, spec.clip_value)


def input_gradient_penalty(model: nn.Module, images: Tensor) -> Tensor:
    """WGAN-GP on the inputs, as AST's code: mean over images and pixels of (‖∂Σlogits/∂x‖ − 1)², the norm
    taken over the channels of each pixel; differentiable in the parameters (double backward)."""
    x = images.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    return (grad.norm(dim=1) - 1).square().mean()


def param_gradient_penalty(loss: Tensor, params: list[Tensor]) -> Tensor:
    """``‖∇_θ loss‖²``, differentiable (double backward)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return sum(g.square().sum() for g in grads)


def objective(loss: Tensor, model: nn.Module, images: Tensor, spec: ExpertsSpec, epoch: int) -> Tensor:
    """The loss to minimise: cross-entropy (plain); smooth: clipped early, plus ``gradient_penalty`` times the
    penalty on the input gradient at the un-augmented ``images`` (``input``) or on ``‖∇_θ loss‖²`` (``params``)."""
    if spec.variant == "plain":
        return loss
    loss = clipped(loss, spec, epoch)
    if spec.gradient_penalty <= 0:
        return loss
    if spec.gradient_penalty_on == "input":
        return loss + spec.gradient_penalty * input_gradient_penalty(model, images)
    return loss + spec.gradient_penalty * param_gradient_penalty(loss, list(model.parameters()))


def epoch_lr(spec: ExpertsSpec, epoch: int) -> float:
    """The lr of (0-based) ``epoch``: ×``lr_decay`` from epoch ``lr_decay_epoch``, by default ``epochs // 2 + 2``
    (the references' schedule)."""
    first = spec.epochs // 2 + 2 if spec.lr_decay_epoch is None else spec.lr_decay_epoch
    return spec.lr * (spec.lr_decay if epoch >= first else 1.0)


def epoch_rho(spec: ExpertsSpec, epoch: int) -> float:
    """GSAM's ρ for ``epoch``: linear in its lr between ``gsam_rho_min`` (least lr) and ``gsam_rho_max`` (largest)."""
    lrs = (spec.lr, spec.lr * spec.lr_decay)
    return proportional_rho(epoch_lr(spec, epoch), max(lrs), min(lrs), spec.gsam_rho_max, spec.gsam_rho_min)


def sgd(params: list[Tensor], spec: ExpertsSpec, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def split_accuracy(model: nn.Module, split: Split, prepare: Callable[[Tensor], Tensor], batch_size: int) -> float:
    """Top-1 accuracy over ``split`` in storage order, each uint8 batch ``prepare``d (decoded on the device); test
    batches as large as training ones keep the task's peak memory that of training."""
    return batches_accuracy(model, ((prepare(b.images), b.labels) for b in split.batches(batch_size)))


def train_expert(model: nn.Module, train: Split, test: Split, prepare: Callable[[Tensor], Tensor],
                 spec: ExpertsSpec, seed: int,
                 on_epoch: Callable[[int, float, float], None] | None = None) -> ExpertRun:
    """SGD for ``spec.epochs`` epochs with a seeded batch order and DSA; ``on_epoch(epoch, loss, acc)`` after each.

    ``prepare`` turns a uint8 batch into what the model sees, on its device (normalise, ZCA), so only a
    batch is ever decoded. The lr decay starts a fresh optimiser (no momentum carried over), as the reference does.
    ``ftd`` steps SGD along GSAM's direction (both of its passes on the same augmented batch).
    """
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    device = params[0].device
    lr = epoch_lr(spec, 0)
    opt = sgd(params, spec, lr)
    snapshots = [flatten_params(model).cpu()]
    losses: list[float | None] = [None]
    accs = [split_accuracy(model, test, prepare, spec.batch_size)]
    for epoch in range(spec.epochs):
        if epoch_lr(spec, epoch) != lr:
            lr = epoch_lr(spec, epoch)
            opt = sgd(params, spec, lr)
        model.train()
        total = torch.zeros((), device=device)
        for batch in train.epoch(gen, spec.batch_size):
            clean = x = prepare(batch.images)
            labels = batch.labels.to(device)
            if spec.dsa:
                x = dsa(x, seed=int(torch.randint(2**31, (1,), generator=gen)), strategy=DEFAULT_STRATEGY)

            def batch_loss() -> Tensor:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.amp):
                    logits = model(x)
                return F.cross_entropy(logits.float(), labels)

            opt.zero_grad(set_to_none=True)
            if spec.variant == "ftd":
                loss = gsam_step(model, batch_loss, epoch_rho(spec, epoch), spec.gsam_alpha, spec.gsam_adaptive)
            else:
                loss = batch_loss()
                objective(loss, model, clean, spec, epoch).backward()
            total += loss.detach() * labels.numel()
            opt.step()
        snapshots.append(flatten_params(model).cpu())
        losses.append(float(total) / len(train))
        accs.append(split_accuracy(model, test, prepare, spec.batch_size))
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1], accs[-1])
    return ExpertRun(torch.stack(snapshots), losses, accs)
