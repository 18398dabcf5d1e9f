"""One Tune trial: a distillation on Ray Train (its reports forwarded to Tune), then an evaluation."""

from __future__ import annotations

from typing import Any

from raydd.storage.fs import Location, resolve
from raydd.storage.layout import digest, root, store_settings
from raydd.tune.space import get, with_values

PATH_KEYS = ("storage.root", "experts.store", "evaluate.set", "dataset.root", "dataset.uri")


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """Local paths made absolute: Tune runs each trial in its own working directory."""
    endpoint = cfg["storage"].get("endpoint_url")
    return with_values(cfg, {k: resolve(get(cfg, k), endpoint).uri for k in PATH_KEYS if get(cfg, k)})


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base config with the trial's values (a swept expert setting names its own store)."""
    return with_values(base, params)


def trial_set(base: dict[str, Any], trial_id: str) -> Location:
    """Where a trial writes its set: beside the sweep, one folder per trial."""
    return root(base).join("tune", base["tune"]["name"], "sets", trial_id)


def train_run_name(cfg: dict[str, Any], trial_id: str) -> str:
    """Fixed per trial, so a trial restarted by a resumed sweep continues its Train checkpoints."""
    return f"tune-{cfg['tune']['name']}-{trial_id}"


def run_trial(params: dict[str, Any], base: dict[str, Any], stores: dict[str, str]) -> None:
    """Tune function trainable: distil from the trial's store (``stores``: the URIs the experts stage returned,
    by the digest of their settings; Train reports reach ASHA), evaluate the set, report the result."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydd.distill import stage as distill_stage
    from raydd.evaluate import stage as evaluate_stage

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params)
    distilled = distill_stage.run(cfg, stores[digest(store_settings(cfg))], out=trial_set(base, trial_id),
                                  callbacks=[TuneReportCallback()], train_name=train_run_name(cfg, trial_id))
    # Outside the trial's placement group (which Tune makes its tasks inherit), so the evaluation's
    # model tasks can take the CPUs the Train workers just freed.
    evaluate = ray.remote(evaluate_stage.run).options(num_cpus=0, scheduling_strategy="DEFAULT")
    summary = ray.get(evaluate.remote(cfg, distilled["set"]))["summary"]
    first = summary[cfg["evaluate"]["models"][0]]
    tune.report({"iteration": cfg["distill"]["iterations"], "test_acc": first["mean"], "test_std": first["std"],
                 **{f"test_acc_{arch}": s["mean"] for arch, s in summary.items()},
                 "set": distilled["set"], "distill_s": distilled["wall_s"]})
