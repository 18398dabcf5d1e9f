"""GSAM (Zhuang et al. 2022, "Surrogate Gap Guided Sharpness-Aware Minimization"), the optimiser of FTD experts.

One step on the loss ``f`` at weights ``w`` with gradient ``g = ∇f(w)``:

1. ascend: ``e = ρ·T²g / (‖Tg‖ + ε)`` with ``T = |w|`` (adaptive, ASAM) or ``T = 1``; ``g_p = ∇f(w + e)``;
2. descend along ``g_p − α·g_⊥``, where ``g_⊥ = g − (⟨g, g_p⟩ / ‖g_p‖²)·g_p`` is the part of ``g`` orthogonal to
   ``g_p`` (minimising the surrogate gap ``f(w + e) − f(w)`` without raising ``f(w + e)``);

the base optimiser (SGD) then steps from ``w`` with that direction. ``ρ`` follows the lr linearly between
``ρ_min`` and ``ρ_max``. The norms, ε = 1e-12 and its placement are those of the authors' ``gsam`` package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

EPS = 1e-12


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The L2 norm of all ``tensors`` taken as one vector."""
    return torch.stack([t.norm() for t in tensors]).norm()


def ascent(params: Sequence[Tensor], grads: Sequence[Tensor], rho: float, adaptive: bool) -> list[Tensor]:
    """The perturbation ``e = ρ·T²g / (‖Tg‖ + ε)``, ``T = |w|`` if ``adaptive`` else 1 (one norm over all tensors)."""
    scales = [p.abs() if adaptive else torch.ones_like(p) for p in params]
    scale = rho / (global_norm([t * g for t, g in zip(scales, grads)]) + EPS)
    return [g * scale * t.square() for t, g in zip(scales, grads)]


def descent(grads: Sequence[Tensor], perturbed: Sequence[Tensor], alpha: float) -> list[Tensor]:
    """``g_p − α·(g − cos(g, g_p)·‖g‖·g_p/‖g_p‖)``: the perturbed gradient less α times ``g``'s part orthogonal to it."""
    inner = sum((g * gp).sum() for g, gp in zip(grads, perturbed))
    norm, norm_p = global_norm(grads), global_norm(perturbed)
    along = inner / (norm * norm_p + EPS) * norm / (norm_p + EPS)  # cos·‖g‖/‖g_p‖: g's projection on g_p, per unit g_p
    return [gp - alpha * (g - along * gp) for g, gp in zip(grads, perturbed)]


def proportional_rho(lr: float, lr_max: float, lr_min: float, rho_max: float, rho_min: float) -> float:
    """``ρ`` linear in the lr: ``ρ_min + (ρ_max − ρ_min)(lr − lr_min)/(lr_max − lr_min)``; ``ρ_max`` for a constant lr."""
    if lr_max == lr_min:
        return rho_max
    return rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)


def gsam_step(model: nn.Module, loss_fn: Callable[[], Tensor], rho: float, alpha: float, adaptive: bool) -> Tensor:
    """Set every parameter's ``.grad`` to GSAM's direction; returns the (detached) loss at the unperturbed weights.

    ``loss_fn`` computes the batch's loss from the model as it is (the same augmented batch both times). The
    weights come back exactly; so do the buffers (BatchNorm running statistics): the perturbed pass does not
    update them, as the reference's ``disable_running_stats``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        weights = [p.clone() for p in params]
        buffers = [b.clone() for b in model.buffers()]
        for p, e in zip(params, ascent(params, grads, rho, adaptive)):
            p.add_(e)
    perturbed = torch.autograd.grad(loss_fn(), params)
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
        for p, d in zip(params, descent(grads, perturbed, alpha)):
            p.grad = d
    return loss.detach()
