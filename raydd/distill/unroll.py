"""The student's unrolled inner loop and the exact gradient of the matching loss through it.

One code path for one worker or many, CPU or CUDA. Each inner step's mini-batch is drawn
from the whole synthetic set; a worker computes the gradient of its own images' share of the
step's loss and ``reduce`` (an all-reduce sum; the identity on one worker) completes it, so
the student θ is the same on every worker. The backward pass walks the steps in reverse and
pulls the adjoint of θ through each step with one vector-Jacobian product, all-reducing the
θ part (the images' part stays with their owner):

    forward   g_i = reduce(∇θ ℓ_mine(θ_{i-1}));  v_i = μ·v_{i-1} + g_i;  θ_i = θ_{i-1} − lr·v_i
    backward  ā_v = μ·ā_v' − lr·ā_θ;  ∂L/∂lr −= ⟨ā_θ, v_i⟩;
              ā_θ += reduce(ā_vᵀ ∂g_mine/∂θ);  ∂L/∂X_mine += ā_vᵀ ∂g_mine/∂X_mine

``kept_graphs=None`` (``distill.unroll=plain``) keeps every step's double-backward graph from
the forward pass, as the reference code does; ``0`` (``constant_memory``, TESLA-style) keeps
only the N parameter vectors and recomputes one step's graph at a time in the backward pass:
the same gradient bit for bit, one step's graph in memory, one more forward and backward per step
(a backward without the convolutions' weight gradients, whose values the forward pass already took:
:func:`raydd.models.conv.graph_only`);
``k`` keeps the last k steps' graphs and recomputes the others: memory and time in between,
growing with k and not with N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from raydd.core.dsa import dsa
from raydd.core.train import per_sample_loss
from raydd.distill.matching import matching_loss
from raydd.distill.sharding import InnerStep
from raydd.models.conv import graph_only
from raydd.models.functional import FlatModel

Reduce = Callable[[Tensor], Tensor]


def local_sum(t: Tensor) -> Tensor:
    """The all-reduce of a single worker."""
    return t


@dataclass(frozen=True)
class UnrollSpec:
    momentum: float = 0.0          # AST student momentum
    dsa: bool = True
    dsa_strategy: str | None = None
    temperature: float = 1.0       # soft-label temperature
    kept_graphs: int | None = None  # steps (the last ones) whose graph the forward keeps: None all (plain), 0 none

    def keeps(self, step: int, steps: int) -> bool:
        """Whether step ``step`` of ``steps`` keeps its graph from the forward pass instead of recomputing it."""
        return self.kept_graphs is None or step >= steps - self.kept_graphs


@dataclass
class Targets:
    """Expert parameters to match: ``points[k]`` is the target for the student after ``steps[k]`` steps."""

    start: Tensor
    steps: list[int]
    points: list[Tensor]
    weights: list[float]


@dataclass
class UnrollResult:
    loss: Tensor        # the matching loss (detached; the same on every worker)
    lr_grad: Tensor     # ∂loss/∂lr (the same on every worker)


def local_grad(net: FlatModel, theta: Tensor, images: Tensor, labels: Tensor, soft: Tensor | None, step: InnerStep,
               spec: UnrollSpec) -> Tensor:
    """∇θ of this worker's share of the step's loss (its images' weighted per-sample losses, summed), with its graph.

    The graph is always built, also where the caller drops it at once: autograd then takes the same
    (double-differentiable) kernels in every pass, so a recomputed step is bit for bit the step the
    forward pass took, and on CPU channels-last that path is the faster one (group norm's first-order
    kernel is slower there: ``benchmarks/results/distill_speed.md``).
    """
    if step.rows.numel() == 0:
        return torch.zeros_like(theta)
    x = images[step.rows]
    if spec.dsa:
        x = dsa(x, step.seed, rows=step.positions, total=step.size,
                **({"strategy": spec.dsa_strategy} if spec.dsa_strategy else {}))
    per = per_sample_loss(net(theta, x), labels[step.rows], None if soft is None else soft[step.rows], spec.temperature)
    (grad,) = torch.autograd.grad((per * step.weights.to(per.device)).sum(), theta, create_graph=True)
    return grad


def matching_seeds(thetas: list[Tensor], targets: Targets) -> tuple[Tensor, dict[int, Tensor]]:
    """The weighted matching loss over the matched steps and its gradient at each of them."""
    matched = {s: thetas[s].clone().requires_grad_(True) for s in targets.steps}
    loss = sum(w * matching_loss(matched[s], p, targets.start)
               for s, p, w in zip(targets.steps, targets.points, targets.weights))
    return loss.detach(), dict(zip(matched, torch.autograd.grad(loss, list(matched.values()))))


def unroll(net: FlatModel, images: Tensor, labels: Tensor, soft: Tensor | None, lr: Tensor, start: Tensor,
           plan: list[InnerStep], targets: Targets, spec: UnrollSpec, reduce: Reduce = local_sum) -> UnrollResult:
    """Unroll ``plan`` from ``start``, match ``targets``; add the gradients to ``images.grad`` (and ``soft.grad``).

    ``images`` and ``soft`` are this worker's shard (leaves that require grad); ``lr`` is the
    inner learning rate (a scalar tensor).
    """
    lr = lr.detach()
    learn = [images, *([soft] if soft is not None else [])]
    thetas, vels, graphs = [start.detach()], [torch.zeros_like(start)], []
    for i, step in enumerate(plan):
        theta = thetas[-1].detach().requires_grad_(True)
        if spec.keeps(i, len(plan)):
            mine = local_grad(net, theta, images, labels, soft, step, spec)
            graphs.append((theta, mine))
        else:
            mine = local_grad(net, theta, images.detach(), labels, None if soft is None else soft.detach(), step,
                              spec).detach()
        grad = reduce(mine.detach().clone())
        vel = spec.momentum * vels[-1] + grad if spec.momentum else grad
        thetas.append(thetas[-1] - lr * vel)
        vels.append(vel)
    loss, seeds = matching_seeds(thetas, targets)

    adj_theta, adj_vel = seeds.get(len(plan), torch.zeros_like(start)), torch.zeros_like(start)
    lr_grad = torch.zeros((), device=start.device)
    grads: list[Tensor | None] = [None] * len(learn)
    for i in range(len(plan) - 1, -1, -1):
        adj_v = adj_vel - lr * adj_theta                     # adjoint of v_{i+1}
        lr_grad = lr_grad - (adj_theta * vels[i + 1]).sum()
        if spec.keeps(i, len(plan)):
            theta, mine = graphs.pop()
        else:
            theta = thetas[i].detach().requires_grad_(True)
            with graph_only():
                mine = local_grad(net, theta, images, labels, soft, plan[i], spec)
        outs = torch.autograd.grad(mine, [theta, *learn], grad_outputs=adj_v, allow_unused=True) \
            if mine.requires_grad else [None] * (1 + len(learn))
        hvp = outs[0] if outs[0] is not None else torch.zeros_like(start)
        adj_theta = adj_theta + reduce(hvp) + seeds.get(i, 0.0)
        adj_vel = spec.momentum * adj_v
        grads = [g if o is None else (o if g is None else g + o) for g, o in zip(grads, outs[1:])]
    for leaf, g in zip(learn, grads):
        if g is not None:
            leaf.grad = g if leaf.grad is None else leaf.grad + g
    return UnrollResult(loss, lr_grad)
