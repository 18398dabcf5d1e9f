"""Which trajectory segment to match: expert, start epoch (DATM window, MCT float epochs), targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raydd.specs import DistillSpec


@dataclass(frozen=True)
class Segment:
    expert: int
    start: float                # start epoch t
    target_epochs: list[float]  # epochs whose parameters the student must reach
    target_steps: list[int]     # after this many inner steps
    weights: list[float]


def start_window(iteration: int, d: DistillSpec) -> tuple[float, float]:
    """[min_start, current_max]: DATM grows current_max from max_start_epoch_init to max_start_epoch."""
    lo, hi = float(d.min_start_epoch), float(d.max_start_epoch)
    init, grow = d.max_start_epoch_init, d.window_grow_iters or 0
    if init is None or grow <= 0:
        return lo, hi
    frac = min(1.0, iteration / grow)
    return lo, max(lo, float(init) + (hi - float(init)) * frac)


def interior_points(d: DistillSpec) -> list[tuple[float, int]]:
    """AST's intermediate targets as (epochs after the start, inner steps); on a stored (integer-epoch)
    trajectory only whole epochs strictly inside the segment count, so ``expert_epochs=1`` has none."""
    n, m, k = d.syn_steps, d.expert_epochs, int(d.intermediate_points or 0)
    fracs = [j / (k + 1) for j in range(1, k + 1)] if d.intermediate_weight else []
    continuous = bool(d.continuous_start)
    inner = sorted({(m * f if continuous else float(int(m * f + 0.5)), max(1, int(n * f + 0.5))) for f in fracs})
    return [(e, s) for e, s in inner if 0 < e < m and s < n]  # a point on the segment's start or end adds nothing


def sample_segment(iteration: int, experts: list[int], d: DistillSpec, gen: torch.Generator) -> Segment:
    """Draw an expert and a start epoch (integer, or float for MCT's continuous sampling) and the targets.

    With ``intermediate_points`` K (AST), the student after ``N·k/(K+1)`` steps is also matched
    to the expert at ``t + M·k/(K+1)`` with weight ``intermediate_weight``.
    """
    lo, hi = start_window(iteration, d)
    expert = experts[int(torch.randint(len(experts), (1,), generator=gen))]
    continuous = bool(d.continuous_start)
    if continuous:
        start = lo + (hi - lo) * float(torch.rand(1, generator=gen, dtype=torch.float64))
    else:
        start = float(int(torch.randint(int(lo), int(hi) + 1, (1,), generator=gen)))
    inner = interior_points(d)
    epochs = [start + e for e, _ in inner] + [start + d.expert_epochs]
    steps = [s for _, s in inner] + [d.syn_steps]
    weights = [float(d.intermediate_weight)] * len(inner) + [1.0]
    return Segment(expert, start, epochs, steps, weights)
