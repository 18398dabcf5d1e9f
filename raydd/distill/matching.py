"""The trajectory-matching objective."""

from __future__ import annotations

from torch import Tensor


def matching_loss(student: Tensor, target: Tensor, start: Tensor) -> Tensor:
    """‖θ_student − θ_target‖² / ‖θ_start − θ_target‖² (MTT's normalised parameter distance)."""
    return (student - target).pow(2).sum() / (start - target).pow(2).sum().clamp_min(1e-12)
