"""Class-stratified sharding of the synthetic set across Ray Train workers."""

from __future__ import annotations

import torch


def shard_indices(labels: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Worker w owns the images at (class c, slot k) with (c·ipc + k) mod world == w.

    With IPC ≥ world every worker holds ⌊IPC/world⌋ or ⌈IPC/world⌉ images of every class;
    below that, classes are dealt round-robin. Each image is owned by exactly one worker.
    """
    order = torch.argsort(labels, stable=True)
    slot = torch.arange(labels.numel())
    owners = slot % world
    return [order[owners == w] for w in range(world)]
