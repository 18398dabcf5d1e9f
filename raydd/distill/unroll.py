"""The student's unrolled inner loop and the gradient of the matching loss through it.

``plain`` keeps the whole double-backward graph of all N steps (memory grows with N).
``constant_memory`` keeps only the N parameter vectors, then walks the steps backwards,
recomputing each step's graph and pulling the adjoint through it with one vector-Jacobian
product: the same gradient (exact, not an approximation), one step's graph in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from raydd.core.dsa import dsa
from raydd.models.functional import FlatModel


@dataclass(frozen=True)
class InnerStep:
    """One inner step's mini-batch (indices into the shard) and its DSA seed, fixed so it can be replayed."""

    index: Tensor
    seed: int


@dataclass(frozen=True)
class UnrollSpec:
    momentum: float = 0.0          # AST student momentum
    balanced: bool = False         # AST balanced inner loss: every class weighs the same in a batch
    dsa: bool = True
    dsa_strategy: str | None = None
    temperature: float = 1.0       # soft-label temperature


@dataclass
class Targets:
    """Expert parameters to match: ``points[k]`` is the target for the student after ``steps[k]`` steps."""

    start: Tensor
    steps: list[int]
    points: list[Tensor]
    weights: list[float]


def plan_steps(n_images: int, syn_steps: int, batch: int | None, gen: torch.Generator) -> list[InnerStep]:
    """Mini-batches cycling through random permutations of the shard, one DSA seed each."""
    batch = min(batch or n_images, n_images)
    steps, order = [], torch.empty(0, dtype=torch.long)
    for _ in range(syn_steps):
        if order.numel() < batch:
            order = torch.cat([order, torch.randperm(n_images, generator=gen)])
        steps.append(InnerStep(order[:batch], int(torch.randint(2**31 - 1, (1,), generator=gen))))
        order = order[batch:]
    return steps


def inner_loss(logits: Tensor, labels: Tensor, soft: Tensor | None, spec: UnrollSpec) -> Tensor:
    """CE on hard or soft labels; with ``balanced`` each class contributes equally to the batch loss."""
    if soft is not None:
        per = -(F.softmax(soft / spec.temperature, 1) * F.log_softmax(logits, 1)).sum(1)
    else:
        per = F.cross_entropy(logits, labels, reduction="none")
    if not spec.balanced:
        return per.mean()
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1).float()
    w = 1.0 / counts[labels]
    return (per * w).sum() / w.sum()


def _step(net: FlatModel, theta: Tensor, vel: Tensor, images: Tensor, labels: Tensor, soft: Tensor | None,
          lr: Tensor, step: InnerStep, spec: UnrollSpec, create_graph: bool) -> tuple[Tensor, Tensor]:
    x = images[step.index]
    if spec.dsa:
        x = dsa(x, step.seed, **({"strategy": spec.dsa_strategy} if spec.dsa_strategy else {}))
    loss = inner_loss(net(theta, x), labels[step.index], None if soft is None else soft[step.index], spec)
    (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
    vel = spec.momentum * vel + grad if spec.momentum else grad
    return theta - lr * vel, vel


def _loss_terms(thetas: dict[int, Tensor], targets: Targets) -> Tensor:
    from raydd.distill.matching import matching_loss

    return sum(w * matching_loss(thetas[s], p, targets.start) for s, p, w in
               zip(targets.steps, targets.points, targets.weights))


def unroll_plain(net: FlatModel, images: Tensor, labels: Tensor, soft: Tensor | None, lr: Tensor, start: Tensor,
                 plan: list[InnerStep], targets: Targets, spec: UnrollSpec) -> Tensor:
    """The matching loss as a differentiable graph through all steps; call ``.backward()`` on it."""
    theta = start.detach().requires_grad_(True)
    vel = torch.zeros_like(theta)
    matched: dict[int, Tensor] = {}
    wanted = set(targets.steps)
    for i, step in enumerate(plan):
        theta, vel = _step(net, theta, vel, images, labels, soft, lr, step, spec, create_graph=True)
        if i + 1 in wanted:
            matched[i + 1] = theta
    return _loss_terms(matched, targets)


def unroll_constant_memory(net: FlatModel, images: Tensor, labels: Tensor, soft: Tensor | None, lr: Tensor,
                           start: Tensor, plan: list[InnerStep], targets: Targets, spec: UnrollSpec,
                           leaves: list[Tensor]) -> Tensor:
    """Same value and gradients as :func:`unroll_plain`, accumulated into ``leaves``' ``.grad`` directly.

    ``leaves`` are the tensors that need gradients (images, lr, soft labels); returns the
    loss (detached).
    """
    n = len(plan)
    thetas, vels = [start.detach()], [torch.zeros_like(start)]
    for step in plan:  # forward: no graph kept, only the trajectory
        theta = thetas[-1].requires_grad_(True)
        with torch.enable_grad():
            nxt, vel = _step(net, theta, vels[-1], images.detach(), labels,
                             None if soft is None else soft.detach(), lr.detach(), step, spec, create_graph=False)
        theta.requires_grad_(False)
        thetas.append(nxt.detach())
        vels.append(vel.detach())
    matched = {s: thetas[s].clone().requires_grad_(True) for s in targets.steps}
    loss = _loss_terms(matched, targets)
    seeds = dict(zip(matched, torch.autograd.grad(loss, list(matched.values()))))
    adj_theta, adj_vel = seeds.get(n, torch.zeros_like(start)), torch.zeros_like(start)
    grads = [torch.zeros_like(t) for t in leaves]
    for i in range(n - 1, -1, -1):  # backward: recompute step i's graph, pull the adjoint through it
        theta = thetas[i].clone().requires_grad_(True)
        vel_in = vels[i].clone().requires_grad_(bool(spec.momentum))
        nxt, vel = _step(net, theta, vel_in, images, labels, soft, lr, plan[i], spec, create_graph=True)
        inputs = [theta, *([vel_in] if spec.momentum else []), *leaves]
        outs = torch.autograd.grad([nxt, vel] if spec.momentum else [nxt], inputs,
                                   grad_outputs=[adj_theta, adj_vel] if spec.momentum else [adj_theta],
                                   allow_unused=True)
        adj_theta = outs[0] + seeds.get(i, 0.0)
        if spec.momentum:
            adj_vel = outs[1]
        for g, o in zip(grads, outs[-len(leaves):]):
            if o is not None:
                g += o
    for leaf, g in zip(leaves, grads):
        leaf.grad = g if leaf.grad is None else leaf.grad + g
    return loss.detach()


