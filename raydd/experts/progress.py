"""One progress display across parallel experts: tasks report epochs to a tiny actor, the driver draws."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import ray
from tqdm import tqdm

from raydd.errors import RayddError

PROGRESS_PREFIX = "raydd-experts-progress-"


@ray.remote(num_cpus=0)
class Progress:
    """Latest epoch finished by each expert, and the pid of the worker training it."""

    def __init__(self) -> None:
        self.epochs: dict[int, int] = {}
        self.pids: dict[int, int] = {}

    def report(self, expert_id: int, epoch: int, pid: int) -> None:
        self.epochs[expert_id] = epoch
        self.pids[expert_id] = pid

    def state(self) -> dict[int, tuple[int, int]]:
        """``{expert_id: (epoch, pid)}``."""
        return {i: (self.epochs[i], self.pids[i]) for i in self.epochs}


def start_progress() -> Any:
    """A named progress actor (named so that tools and tests can look at a running stage)."""
    return Progress.options(name=f"{PROGRESS_PREFIX}{uuid.uuid4().hex[:8]}").remote()


def wait_for_experts(jobs: dict[ray.ObjectRef, int], progress: Any, epochs: int,
                     on_result: Callable[[int, Any], None]) -> dict[int, str | RayddError]:
    """Drain ``jobs`` (ref → expert id) as they finish, calling ``on_result``; returns failures by expert: the
    raydd error a task raised (bad data: not retried), else the last line of what killed it."""
    total = len(jobs)
    bar = tqdm(total=total * epochs, unit="epoch", desc=f"experts 0/{total}", mininterval=2.0, smoothing=0.05)
    pending, finished, failures = list(jobs), set(), {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)
        for ref in ready:
            expert_id = jobs[ref]
            finished.add(expert_id)
            try:
                on_result(expert_id, ray.get(ref))
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None)
                failures[expert_id] = cause if isinstance(cause, RayddError) else \
                    f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"
        state = ray.get(progress.state.remote())
        running = sum(min(epochs, ep) for i, (ep, _) in state.items() if i not in finished)
        bar.n = len(finished) * epochs + running
        bar.set_description(f"experts {len(finished)}/{total}", refresh=False)
        bar.refresh()
    bar.close()
    return failures
