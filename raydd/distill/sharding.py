"""Class-stratified sharding of the synthetic set across Ray Train workers, and each step's share of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def shard_indices(labels: Tensor, world: int) -> list[Tensor]:
    """Worker w owns the images at (class c, slot k) with (c·ipc + k) mod world == w.

    With IPC ≥ world every worker holds ⌊IPC/world⌋ or ⌈IPC/world⌉ images of every class;
    below that, classes are dealt round-robin. Each image is owned by exactly one worker.
    """
    order = torch.argsort(labels, stable=True)
    slot = torch.arange(labels.numel())
    owners = slot % world
    return [order[owners == w] for w in range(world)]


@dataclass(frozen=True)
class ShardMap:
    """Who owns each image of the whole set, and where it sits in its owner's shard."""

    owner: Tensor   # N: the worker holding image i
    local: Tensor   # N: its position in that worker's shard

    @classmethod
    def of(cls, labels: Tensor, world: int) -> ShardMap:
        owner, local = torch.empty_like(labels), torch.empty_like(labels)
        for w, idx in enumerate(shard_indices(labels, world)):
            owner[idx], local[idx] = w, torch.arange(idx.numel())
        return cls(owner, local)


@dataclass(frozen=True)
class InnerStep:
    """One worker's part of one inner step's mini-batch, fixed so the step can be replayed.

    ``rows`` index the worker's shard; ``positions`` say where those images sit in the whole
    mini-batch of ``size`` (so DSA gives them the transforms they get there); ``weights`` are
    their loss weights, which sum to the segment's inner-loss scale (1 but for AST's balanced
    inner loss) over the whole mini-batch.
    """

    rows: Tensor
    positions: Tensor
    weights: Tensor
    size: int
    seed: int


def batch_weights(labels: Tensor, balanced: bool) -> Tensor:
    """Per-sample loss weights of a mini-batch: 1/B each, or (``balanced``) equal total weight per class
    (the same with whole-set batches of equal classes)."""
    if not balanced:
        return torch.full(labels.shape, 1.0 / labels.numel())
    w = 1.0 / torch.bincount(labels)[labels].float()
    return w / w.sum()


def plan_steps(labels: Tensor, shards: ShardMap, rank: int, syn_steps: int, batch: int | None, balanced: bool,
               gen: torch.Generator, scale: float = 1.0) -> list[InnerStep]:
    """``rank``'s share of mini-batches that cycle through random permutations of the whole set.

    Every worker draws the same global plan from the same generator state, so the union of
    their shares is one mini-batch of the whole set per step. ``scale`` multiplies every weight.
    """
    n = labels.numel()
    batch = min(batch or n, n)
    steps, order = [], torch.empty(0, dtype=torch.long)
    for _ in range(syn_steps):
        if order.numel() < batch:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        chosen, order = order[:batch], order[batch:]
        mine = (shards.owner[chosen] == rank).nonzero().squeeze(1)
        steps.append(InnerStep(shards.local[chosen[mine]], mine, scale * batch_weights(labels[chosen], balanced)[mine],
                               batch, int(torch.randint(2**31 - 1, (1,), generator=gen))))
    return steps
