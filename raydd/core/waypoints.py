"""MCT's trajectory compression as the authors built it: smoothed waypoints and per-layer α at every epoch.

The reference (Zhong0x29a/MCT ``exps/trajectory_compression.py``, ``--num_interpolation`` n, 4 in its
``run_command.md``) splits an expert's saved points θ_0..θ_E into segments between waypoints, and in each
segment [w_k, w_{k+1}] and each layer ℓ (one parameter tensor) keeps

    α_ℓ(e) = Σ_{j=w_k+1..e} ‖θ_j,ℓ − θ_{j−1},ℓ‖ / Σ_{j=w_k+1..w_{k+1}} ‖θ_j,ℓ − θ_{j−1},ℓ‖
                                                         (0 for a layer that does not move)

so θ_ℓ(e) = W_k,ℓ + α_ℓ(e)(W_{k+1},ℓ − W_k,ℓ): the segment's chord, walked at the layer's own
arc-length pace.
α comes from the real checkpoints; the waypoints W are smoothed afterwards (n > 2 only). Distillation
(``distill_compressed.py``) reads float epochs through ``CompressedTrajectoryWithInterpolation.get_point_n``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def waypoint_rows(rows: int, num_interpolation: int) -> list[int]:
    """The saved points that become waypoints: every ``rows // (n − 1)``-th from 0, then the last if missed.

    With 51 saved points and n = 4: 0, 17, 34, 50; with 7: 0, 2, 4, 6; with 8: 0, 2, 4, 6, 7 (the reference's
    ``range(0, len, len // (n − 1))``, so n is the nominal count).
    """
    if rows < 2 or not 2 <= num_interpolation <= rows:
        raise ValueError(f"waypoints must be in [2, {rows}] for a trajectory of {rows} saved points, "
                         f"got {num_interpolation}")
    index = list(range(0, rows, rows // (num_interpolation - 1)))
    return index if index[-1] == rows - 1 else [*index, rows - 1]


def smoothed_waypoints(snapshots: Tensor, index: Sequence[int]) -> Tensor:
    """The waypoints after the reference's smoothing, in its order (``waypoints × P``).

    Each interior waypoint becomes the mean of its two neighbours, left to right, then the last point the mean
    of the point before it and itself; a neighbour that is an earlier smoothed waypoint enters smoothed, as in the
    reference's in-place update. The first point is kept.
    """
    smoothed: dict[int, Tensor] = {}

    def at(i: int) -> Tensor:
        return smoothed.get(i, snapshots[i])

    for i in index[1:-1]:
        smoothed[i] = (at(i - 1) + at(i + 1)) / 2
    last = index[-1]
    smoothed[last] = (at(last - 1) + at(last)) / 2
    return torch.stack([at(i) for i in index])


def layer_alphas(segment: Tensor, sizes: Sequence[int]) -> Tensor:
    """Per layer, the cumulative arc length along a segment's points over its total (``points × layers``, first row 0).

    Norms and sums in float64, returned as float32; a layer whose steps are all zero keeps α = 0 throughout (the
    reference divides by 1 when the sum is 0), so it stays at the segment's first waypoint.
    """
    steps = (segment[1:] - segment[:-1]).double().split(list(sizes), dim=1)
    norms = torch.stack([s.norm(dim=1) for s in steps], dim=1)
    cumulative = torch.cat([norms.new_zeros(1, len(sizes)), norms.cumsum(0)])
    total = cumulative[-1]
    return (cumulative / torch.where(total == 0, torch.ones_like(total), total)).float()


@dataclass(frozen=True)
class WaypointTrajectory:
    """Waypoint epochs and vectors (float32 ``waypoints × P``), per-layer α of every saved epoch (``(E+1) × layers``).

    Row e of ``alphas`` is α at epoch e in the segment ending at or containing e (row 0: zeros); at the start of
    a segment α is 0 for every layer by construction, so it is not stored.
    """

    epochs: tuple[int, ...]
    waypoints: Tensor
    alphas: Tensor
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        e = self.epochs
        if len(e) < 2 or e[0] != 0 or any(b <= a for a, b in zip(e, e[1:])):
            raise ValueError(f"waypoint epochs must start at 0 and increase strictly, got {e}")
        if self.waypoints.shape != (len(e), sum(self.sizes)):
            raise ValueError(f"waypoints must be {len(e)}×{sum(self.sizes)}, got {tuple(self.waypoints.shape)}")
        if self.alphas.shape != (e[-1] + 1, len(self.sizes)):
            raise ValueError(f"alphas must be {e[-1] + 1}×{len(self.sizes)}, got {tuple(self.alphas.shape)}")

    @property
    def nbytes(self) -> int:
        return (self.waypoints.numel() + self.alphas.numel()) * 4

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1]

    def alpha(self, epoch: float) -> tuple[int, Tensor]:
        """The segment k holding ``epoch`` and its per-layer α there.

        As the reference's ``get_point_n``: for i = ⌊epoch⌋ in segment [w_k, w_{k+1}),
        α = lerp(α(i), α(i+1), epoch − i) with α(w_k) = 0, so α is linear between saved epochs. Where the
        reference cannot read, this reads on: epoch = E (it finds no segment and returns None) is the last
        segment's end, and a grid of more than n waypoints (8 saved points, n = 4: 0, 2, 4, 6, 7), whose
        last segments its reader does not index, is read through.
        """
        if not 0.0 <= epoch <= self.last_epoch:
            raise ValueError(f"epoch {epoch} outside the trajectory's [0, {self.last_epoch}]")
        k = min(bisect.bisect_right(self.epochs, epoch) - 1, len(self.epochs) - 2)
        i = min(int(epoch), self.epochs[k + 1] - 1)
        low = torch.zeros_like(self.alphas[0]) if i == self.epochs[k] else self.alphas[i]
        return k, torch.lerp(low, self.alphas[i + 1], epoch - i)

    def params(self, epoch: float) -> Tensor:
        """float32 parameters at a float ``epoch`` in [0, E]: per layer, lerp(W_k, W_{k+1}, α_ℓ) (``torch.lerp``,
        as the reference: exactly W_k where α is 0 and W_{k+1} where it is 1)."""
        k, a = self.alpha(float(epoch))
        weight = a.repeat_interleave(torch.tensor(self.sizes))
        return torch.lerp(self.waypoints[k], self.waypoints[k + 1], weight)


def compress(snapshots: Tensor, sizes: Sequence[int], num_interpolation: int) -> WaypointTrajectory:
    """MCT's compression of saved points ``snapshots`` (rows at epochs 0..E, ``P = Σ sizes`` columns).

    α from the real checkpoints per segment; waypoints smoothed when n > 2 (the reference's n = 2 branch keeps
    θ_0 and θ_E as they are).
    """
    if snapshots.dim() != 2 or snapshots.shape[1] != sum(sizes):
        raise ValueError(f"snapshots must be rows×{sum(sizes)}, got {tuple(snapshots.shape)}")
    snapshots = snapshots.float()
    index = waypoint_rows(snapshots.shape[0], num_interpolation)
    alphas = torch.zeros(snapshots.shape[0], len(sizes))
    for a, b in zip(index, index[1:]):
        alphas[a + 1:b + 1] = layer_alphas(snapshots[a:b + 1], sizes)[1:]
    waypoints = smoothed_waypoints(snapshots, index) if num_interpolation > 2 else snapshots[index].clone()
    return WaypointTrajectory(tuple(index), waypoints, alphas, tuple(int(s) for s in sizes))
