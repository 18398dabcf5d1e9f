"""How a sweep's trials are scheduled: ASHA within groups of comparable trials, and how many at once.

Accuracy grows with IPC by design, so one ASHA over all trials would stop every small-IPC trial
at its first rung; one ASHA per value of ``tune.compare_within`` (default ``[ipc]``) keeps each
IPC's best. The rungs fall on the periodic fast evaluation and never on a trial's last report.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raydd.config import ConfigError
from raydd.tune.space import get

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


def report_period(cfg: dict[str, Any]) -> int:
    """How often the ASHA metric is reported: the fast evaluation's period, or the logged metrics'."""
    d = cfg["distill"]
    return d["eval_every"] if cfg["tune"]["metric"] == "eval_acc" else d["log_every"]


def grace_period(cfg: dict[str, Any]) -> int:
    return cfg["tune"]["grace_period"] or report_period(cfg)


def check_scheduler(cfg: dict[str, Any]) -> None:
    """ASHA's settings must put every rung on a report before a trial's last one."""
    t = cfg["tune"]
    if t["scheduler"] not in ("asha", "fifo"):
        raise ConfigError(f"unknown tune.scheduler {t['scheduler']!r}; choose asha or fifo")
    if t["scheduler"] != "asha":
        return
    for key in t["compare_within"]:
        try:
            get(cfg, key)
        except KeyError:
            raise ConfigError(f"tune.compare_within: {key!r} is not a config key") from None
    period, grace, iterations = report_period(cfg), grace_period(cfg), cfg["distill"]["iterations"]
    if period <= 0:
        raise ConfigError("ASHA ranks trials by the periodic fast evaluation: set distill.eval_every > 0")
    if not isinstance(t["reduction_factor"], int) or t["reduction_factor"] < 2:
        raise ConfigError(f"tune.reduction_factor must be an integer >= 2, got {t['reduction_factor']!r}")
    if grace % period or not 0 < grace < iterations:
        raise ConfigError(f"tune.grace_period={grace} must be a multiple of the {t['metric']} period ({period}) "
                          f"and below distill.iterations={iterations}")


def scheduler(cfg: dict[str, Any]) -> FIFOScheduler:
    """ASHA on the periodic metric per ``tune.compare_within`` group; FIFO runs every trial to the end.

    The rungs (grace·rf^k) are multiples of the metric's period below ``max_t``, one iteration short
    of the run, and ``stop_last_trials`` is off: a decision always falls on a report before the last,
    so a trial that reaches the end is never stopped while it writes and evaluates its set.
    """
    t = cfg["tune"]
    if t["scheduler"] == "fifo":
        return FIFOScheduler()
    return GroupedASHA(t["compare_within"], time_attr="iteration", metric=t["metric"], mode=t["mode"],
                       max_t=cfg["distill"]["iterations"] - 1, grace_period=grace_period(cfg),
                       reduction_factor=t["reduction_factor"], stop_last_trials=False)


def scheduler_text(cfg: dict[str, Any]) -> str:
    t = cfg["tune"]
    if t["scheduler"] != "asha":
        return t["scheduler"]
    within = f", within equal {', '.join(t['compare_within'])}" if t["compare_within"] else ""
    return (f"ASHA on {t['metric']} ({t['mode']}{within}; grace {grace_period(cfg)}, "
            f"reduction factor {t['reduction_factor']})")


def max_concurrent(cfg: dict[str, Any]) -> int:
    """``tune.max_concurrent``, else as many trials as the cluster's CPUs (and GPUs) hold, Train workers included."""
    if cfg["tune"]["max_concurrent"]:
        return cfg["tune"]["max_concurrent"]
    d, workers, resources = cfg["distill"], cfg["workers"], ray.cluster_resources()
    n = resources.get("CPU", 0) // (TRIAL_CPU + workers * d["cpus_per_worker"])
    if d["gpus_per_worker"] > 0:
        n = min(n, resources.get("GPU", 0) // (workers * d["gpus_per_worker"]))
    return max(1, int(n))
