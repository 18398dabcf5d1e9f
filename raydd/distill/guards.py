"""Detect the classic failures of trajectory matching before they reach the synthetic set."""

from __future__ import annotations

import math
from dataclasses import dataclass

from raydd.errors import RayddError


class DivergedError(RayddError, RuntimeError):
    """Distillation kept producing invalid steps; nothing broken was written."""


@dataclass
class Guard:
    """Counts rejected steps; ``patience`` rejections in a row stop the run with a clear message. Also counts the
    steps DATM's loss threshold skipped (``skipped``, and ``skipped_in_a_row`` since the last loss under it)."""

    max_lr: float
    patience: int
    in_a_row: int = 0
    total: int = 0
    skipped: int = 0
    skipped_in_a_row: int = 0

    def counts(self) -> dict[str, int]:
        """What a checkpoint keeps, so a resumed run counts on where it stopped."""
        return {"rejected": self.total, "skipped": self.skipped, "skipped_in_a_row": self.skipped_in_a_row}

    def check(self, loss: float, grads_finite: bool, lr: float | None = None) -> str | None:
        """The reason a step must be rolled back, or None when it is fine."""
        reason = None
        if not math.isfinite(loss) or not grads_finite:
            reason = f"non-finite loss/gradient (loss={loss})"
        elif lr is not None and not (math.isfinite(lr) and 0.0 < lr <= self.max_lr):
            reason = f"learned lr left (0, {self.max_lr}]: lr={lr}"
        return reason

    def record(self, reason: str | None, iteration: int) -> None:
        if reason is None:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.patience:
            raise DivergedError(f"distillation diverged at iteration {iteration}: {reason}, "
                                f"{self.in_a_row} rejected steps in a row; lower distill.lr_lr/lr_img or syn_steps")
