"""raydd's convex variant of MCT (``experts.form=convex``): θ(t) = θ_start + α(t)(θ_end − θ_start).

Only θ_start, θ_end and a few interior knots (e_k, α_k) are kept; α is piecewise linear
through (0, 0), (e_k, α_k), (E, 1), so the parameters can be read at any float epoch. One
scalar α on one chord, the checkpoint's projection on it: close to the reference's
projected-points ablation (``--abl_projected_points``, which keeps that α at every epoch);
MCT's own compression (per-layer α, smoothed waypoints) is ``waypoints.py``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ConvexTrajectory:
    """Endpoints (float32 ``P`` vectors) and interior knots of α over epochs ``[0, epochs]``."""

    start: Tensor
    end: Tensor
    knot_epochs: tuple[float, ...]
    knot_alphas: tuple[float, ...]
    epochs: float

    def __post_init__(self) -> None:
        xs = (0.0, *self.knot_epochs, self.epochs)
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"knot epochs must increase strictly inside (0, {self.epochs}), got {self.knot_epochs}")
        ys = (0.0, *self.knot_alphas, 1.0)
        if len(self.knot_alphas) != len(self.knot_epochs) or any(b < a for a, b in zip(ys, ys[1:])):
            raise ValueError(f"knot alphas must be monotone in [0, 1], one per knot, got {self.knot_alphas}")

    @property
    def nbytes(self) -> int:
        return self.start.numel() * self.start.element_size() + self.end.numel() * self.end.element_size()

    def alpha(self, epoch: float) -> float:
        """α at a float epoch: linear between neighbouring knots."""
        if not 0.0 <= epoch <= self.epochs:
            raise ValueError(f"epoch {epoch} outside the trajectory's [0, {self.epochs}]")
        xs = (0.0, *self.knot_epochs, float(self.epochs))
        ys = (0.0, *self.knot_alphas, 1.0)
        k = min(bisect.bisect_right(xs, epoch) - 1, len(xs) - 2)
        w = (epoch - xs[k]) / (xs[k + 1] - xs[k])
        return ys[k] + w * (ys[k + 1] - ys[k])

    def params(self, epoch: float) -> Tensor:
        """Parameters at ``epoch``; exactly the stored endpoint where α is 0 or 1."""
        a = self.alpha(epoch)
        if a == 0.0:
            return self.start.clone()
        if a == 1.0:
            return self.end.clone()
        return torch.lerp(self.start, self.end, a)


def knot_rows(rows: int, points: int) -> list[int]:
    """Indices of ``points`` evenly spaced interior rows among ``rows`` saved points."""
    if not 0 <= points <= rows - 2:
        raise ValueError(f"convex_points must be in [0, {rows - 2}] for a trajectory of {rows} saved points, got {points}")
    return [round(k * (rows - 1) / (points + 1)) for k in range(1, points + 1)]


def convexify(snapshots: Tensor, epochs: list[float], points: int) -> ConvexTrajectory:
    """Fit the convex form to saved parameters ``snapshots`` (rows at ``epochs``, the first 0).

    α_k is the projection of the real checkpoint θ_{e_k} on the chord θ_end − θ_start,
    clipped to [0, 1] and made monotone non-decreasing.
    """
    if snapshots.dim() != 2 or snapshots.shape[0] != len(epochs):
        raise ValueError(f"snapshots must be rows×P, one row per epoch: got {tuple(snapshots.shape)} for {len(epochs)} epochs")
    if epochs[0] != 0:
        raise ValueError(f"the first snapshot must be epoch 0, got {epochs[0]}")
    index = knot_rows(len(epochs), points)
    start, end = snapshots[0].float(), snapshots[-1].float()
    chord = (end - start).double()
    norm2 = float(chord.square().sum())
    alphas, running = [], 0.0
    for i in index:
        a = float((snapshots[i].double() - start.double()) @ chord) / norm2 if norm2 > 0 else epochs[i] / epochs[-1]
        running = max(running, min(1.0, max(0.0, a)))
        alphas.append(running)
    return ConvexTrajectory(start.clone(), end.clone(), tuple(float(epochs[i]) for i in index), tuple(alphas),
                            float(epochs[-1]))
