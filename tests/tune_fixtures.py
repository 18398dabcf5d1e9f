"""A real, tiny Ray Tune sweep over a toy trainable (Ray's workers import it: tests/ goes on their PYTHONPATH)."""

from __future__ import annotations

import os

import ray


def init_ray() -> None:
    tests = os.path.dirname(__file__)
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})


def trainable(config: dict) -> None:
    """Reports like a distillation trial: ``eval_acc`` growing with ``iteration``, faster for a larger ``scale``;
    the last report carries ``test_acc``."""
    from ray import tune

    for it in range(1, 5):
        tune.report({"iteration": 10 * it, "loss": 1.0 / it, "eval_acc": config["scale"] * it / 4,
                     **({"test_acc": 100 * config["scale"]} if it == 4 else {})})


def run_toy_sweep(storage_path: str, name: str, callbacks: list | None = None):
    """Three trials, one at a time, best first, under ASHA (grace 10 iterations, halving): the two weaker ones stop
    at the first rung."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="iteration", max_t=40, grace_period=10, reduction_factor=2)
    return tune.Tuner(trainable, param_space={"scale": tune.grid_search([0.9, 0.5, 0.2])},
                      tune_config=tune.TuneConfig(metric="eval_acc", mode="max", max_concurrent_trials=1, scheduler=asha),
                      run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks)).fit()
