"""DATM's difficulty alignment as a rule: which part of the experts' training the student matches, from the
share of the real data the synthetic set holds.

DATM (Guo et al. 2024) matches early trajectories at small IPC (easy patterns) and later ones as IPC grows
(hard patterns), and hand-sets the window per dataset and IPC (NUS-HPC-AI-Lab/DATM ``configs/*/ConvIN/IPC*.yaml``,
experts of 100 epochs). ``distill.window=difficulty`` replaces the hand-set window by a fit of those twelve
configurations on ``r = ipc / real images per class``, in fractions of the experts' epochs E:

* upper end (exclusive) ``E · clip(0.04 + 0.22·log10(r / 2e-4), 0.04, 0.70)``,
* lower end ``E · clip(0.33·log10(r / 0.01), 0, 0.40)``,
* while the lower end is 0 and the upper end at least E/10, the upper end grows from half its value (DATM's
  ``current_max_start_epoch``) over ``distill.window_grow_iters``; a later window is fixed.

Against DATM's table (epochs of 100): CIFAR-10 IPC 1/10/50/500/1000 → [0,4) [0,26) [0,41) [33,63) [40,70) for
their [0,4) [0,20) [0,40) [40,60) [40,60); CIFAR-100 IPC 1/10/50/100 → [0,26) [10,48) [33,63) [40,70) for
[0,20) [0,50) [20,70) [30,70); Tiny ImageNet IPC 1/10/50 → [0,26) [10,48) [33,63) for [0,20) [10,50) [40,70).
Every end lies within 13 epochs of theirs; their own windows differ by 20 epochs at the same r (CIFAR-10 IPC
500 and CIFAR-100 IPC 50). Ends are rounded to whole epochs and clipped so that a segment of ``expert_epochs``
fits the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    """Start epochs ``[min_start, max_start)``; ``max_start_init``: where a growing upper end starts (None: fixed)."""

    min_start: int
    max_start: int
    max_start_init: int | None


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def difficulty_window(ipc: int, per_class: float, epochs: int, expert_epochs: int, continuous: bool = False) -> Window:
    """The rule above for ``ipc`` synthetic of ``per_class`` real images per class and a store of ``epochs``
    (``continuous``: float starts, MCT's, reach up to the upper end itself)."""
    r = ipc / per_class
    upper = _clip(0.04 + 0.22 * math.log10(r / 2e-4), 0.04, 0.70)
    lower = _clip(0.33 * math.log10(r / 0.01), 0.0, 0.40)
    max_start = min(max(1, round(upper * epochs)), epochs - expert_epochs + (0 if continuous else 1))
    min_start = min(round(lower * epochs), max_start - 1)
    init = max(min_start + 1, round(max_start / 2)) if lower == 0 and upper >= 0.1 else None
    return Window(min_start, max_start, init if init is not None and init < max_start else None)


def with_difficulty_window(cfg: dict[str, Any], epochs: int, per_class: float) -> dict[str, Any]:
    """``cfg`` with ``distill.window=difficulty`` resolved into its start-window keys (``fixed`` from then on);
    any other ``cfg`` as it is."""
    d = cfg["distill"]
    if d["window"] != "difficulty":
        return cfg
    w = difficulty_window(cfg["ipc"], per_class, epochs, d["expert_epochs"], d["continuous_start"])
    print(f"distill.window=difficulty: ipc {cfg['ipc']} of {per_class:g} real images per class, {epochs} expert epochs "
          f"→ start epochs [{w.min_start}, {w.max_start})"
          + (f", the upper end growing from {w.max_start_init}" if w.max_start_init is not None else ""))
    return {**cfg, "distill": {**d, "window": "fixed", "min_start_epoch": w.min_start, "max_start_epoch": w.max_start,
                               "max_start_epoch_init": w.max_start_init}}
