"""How a sweep's trials are scheduled: ASHA within groups of comparable trials, and how many at once.

Accuracy grows with IPC by design, so one ASHA over all trials would stop every small-IPC trial
at its first rung; one ASHA per value of ``tune.compare_within`` (default ``[ipc]``) keeps each
IPC's best. The rungs fall on the periodic fast evaluation and never on a trial's last report.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raydd.specs import RunSpec, tune_grace_period

TRIAL_CPU = 0.01  # a trial only drives its Train run and evaluation; their workers and tasks take the CPUs


class GroupedASHA(FIFOScheduler):
    """One ``ASHAScheduler(**asha)`` per distinct value of the trials' ``keys``."""

    def __init__(self, keys: list[str], **asha: Any):
        super().__init__()
        self._keys, self._asha, self._groups = tuple(keys), asha, {}
        self._metric, self._mode = asha["metric"], asha["mode"]

    def group(self, trial) -> tuple:
        return tuple(repr(trial.config.get(k)) for k in self._keys)

    def _asha_for(self, trial) -> ASHAScheduler:
        return self._groups.setdefault(self.group(trial), ASHAScheduler(**self._asha))

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha_for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._asha_for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._asha_for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._asha_for(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha_for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"ASHA for {dict(zip(self._keys, g))}: {s.debug_string()}" for g, s in self._groups.items())


def scheduler(spec: RunSpec) -> FIFOScheduler:
    """ASHA on the periodic metric per ``tune.compare_within`` group; FIFO runs every trial to the end.

    The rungs (grace·rf^k) are multiples of the metric's period below ``max_t``, one iteration short
    of the run, and ``stop_last_trials`` is off: a decision always falls on a report before the last,
    so a trial that reaches the end is never stopped while it writes and evaluates its set.
    """
    t = spec.tune
    if t.scheduler == "fifo":
        return FIFOScheduler()
    return GroupedASHA(list(t.compare_within), time_attr="iteration", metric=t.metric, mode=t.mode,
                       max_t=spec.distill.iterations - 1, grace_period=tune_grace_period(t, spec.distill),
                       reduction_factor=t.reduction_factor, stop_last_trials=False)


def scheduler_text(spec: RunSpec) -> str:
    t = spec.tune
    if t.scheduler != "asha":
        return t.scheduler
    within = f", within equal {', '.join(t.compare_within)}" if t.compare_within else ""
    return (f"ASHA on {t.metric} ({t.mode}{within}; grace {tune_grace_period(t, spec.distill)}, "
            f"reduction factor {t.reduction_factor})")


def max_concurrent(spec: RunSpec) -> int:
    """``tune.max_concurrent``, else as many trials as the cluster's CPUs (and GPUs) hold, Train workers included."""
    if spec.tune.max_concurrent:
        return spec.tune.max_concurrent
    worker, resources = spec.distill.resources, ray.cluster_resources()
    n = resources.get("CPU", 0) // (TRIAL_CPU + spec.workers * worker.cpus)
    if worker.gpus > 0:
        n = min(n, resources.get("GPU", 0) // (spec.workers * worker.gpus))
    return max(1, int(n))
