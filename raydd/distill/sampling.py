"""Which trajectory segment to match: expert, start epoch (DATM window, MCT float epochs), targets."""

from __future__ import annotations

import math
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
    inner_scale: float          # the inner loss's factor (AST's balanced inner loss; else 1)


def start_window(iteration: int, d: DistillSpec) -> tuple[float, float]:
    """[min_start, current_max): DATM grows current_max from max_start_epoch_init to max_start_epoch.

    The upper end is exclusive, as the references' ``np.random.randint(min_start, upper)``.
    """
    lo, hi = float(d.min_start_epoch), float(d.max_start_epoch)
    init, grow = d.max_start_epoch_init, d.window_grow_iters or 0
    if init is None or grow <= 0:
        return lo, hi
    return lo, init + (d.max_start_epoch - init) * min(iteration, grow) / grow  # the reference's order: exact


def interior_points(d: DistillSpec) -> list[tuple[float, int]]:
    """AST's intermediate targets as (epochs after the start, inner steps).

    As AST's code, whole epoch e strictly inside the segment is matched after ``(N // M)·e`` steps;
    ``intermediate_points`` K (null: all M − 1, the reference) takes the epochs ``⌊M·k/(K+1)⌋``,
    k = 1..K. A continuous (MCT) start has no whole epochs: ``M·k/(K+1)`` after ``round(N·k/(K+1))`` steps.
    """
    n, m = d.syn_steps, d.expert_epochs
    if not d.intermediate_weight:
        return []
    k = m - 1 if d.intermediate_points is None else d.intermediate_points
    if d.continuous_start:
        points = {(m * j / (k + 1), max(1, int(n * j / (k + 1) + 0.5))) for j in range(1, k + 1)}
    else:
        points = {(float(e), (n // m) * e) for e in {m * j // (k + 1) for j in range(1, k + 1)}}
    return sorted((e, s) for e, s in points if 0 < e < m and 0 < s < n)  # a point on the start or end adds nothing


def balance_scale(start: float, max_start_epoch: int) -> float:
    """AST's balanced inner loss: ×log₅(t − h + 8) for a start t ≥ h = max_start_epoch // 2, ÷log₅(h − t + 8) below h."""
    h = max_start_epoch // 2
    return math.log(start - h + 8, 5) if start >= h else 1 / math.log(h - start + 8, 5)


def sample_segment(iteration: int, experts: list[int], d: DistillSpec, gen: torch.Generator) -> Segment:
    """Draw an expert and a start epoch (integer, or float for MCT's continuous sampling) and the targets.

    Intermediate targets (AST) are matched with weight ``intermediate_weight`` (see ``interior_points``).
    """
    lo, hi = start_window(iteration, d)
    expert = experts[int(torch.randint(len(experts), (1,), generator=gen))]
    if d.continuous_start:
        start = lo + (hi - lo) * float(torch.rand(1, generator=gen, dtype=torch.float64))
    else:
        start = float(int(torch.randint(int(lo), int(hi), (1,), generator=gen)))
    inner = interior_points(d)
    epochs = [start + e for e, _ in inner] + [start + d.expert_epochs]
    steps = [s for _, s in inner] + [d.syn_steps]
    weights = [float(d.intermediate_weight)] * len(inner) + [1.0]
    scale = balance_scale(start, d.max_start_epoch) if d.balanced_inner_loss == "epoch" else 1.0
    return Segment(expert, start, epochs, steps, weights, scale)
