"""``raydd tune``: a Ray Tune sweep whose trials each distil (Ray Train) and evaluate a set.

The driver checks the space, trains any missing expert store, then runs (or resumes) the
sweep under ``<storage.root>/tune/<name>``: ASHA stops weak trials at rungs of the periodic
fast evaluation, as many trials run at once as the cluster has room for. It writes a results
table, plots and the best trial's config as an experiment file beside the trials.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import Any

import pyarrow.fs as pafs
import ray

from raydd.config import ConfigError, config_dir
from raydd.experts import stage as experts_stage
from raydd.runtime import init_ray
from raydd.storage.fs import Location, check_reachable
from raydd.storage.layout import model_tag, root
from raydd.tracking import tune_callbacks
from raydd.tune.export import experiment_yaml
from raydd.tune.report import STATUSES, best_row, markdown, sweep_notes, trial_rows, write_plots, write_tables
from raydd.tune.scheduler import TRIAL_CPU, check_scheduler, max_concurrent, scheduler, scheduler_text
from raydd.tune.space import Param, parse_space, with_values
from raydd.tune.stores import store_configs
from raydd.tune.trial import absolute_paths, run_trial, trial_config


def start_ray(cfg: dict[str, Any], num_cpus: int | None = None) -> None:
    """Connect to the configured cluster, or start a local Ray whose workers can reach its state API.

    When Tune stops a trial it kills the trial's Train controller; Ray Train's placement-group
    cleaner then asks the state API (the dashboard) whether the controller is gone, and frees its
    workers' CPUs. A local Ray without a dashboard, or one of several on a host, cannot answer:
    stopped trials would hold their CPUs and later trials would wait for them forever.
    """
    if ray.is_initialized() or cfg.get("ray_address") or os.environ.get("RAY_ADDRESS"):
        init_ray(cfg)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             logging_level=logging.WARNING,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def sweep_name(cfg: dict[str, Any]) -> str:
    return cfg["tune"]["name"] or f"{cfg['method']['name']}-{cfg['dataset']['name']}-{model_tag(cfg['model'])}"


def check_options(cfg: dict[str, Any]) -> None:
    """Reject sweep settings that would fail inside Tune, before any work."""
    t = cfg["tune"]
    if not re.fullmatch(r"[A-Za-z0-9_.=-]+", sweep_name(cfg)):
        raise ConfigError(f"tune.name {sweep_name(cfg)!r}: use letters, digits and _ . = - only")
    if cfg["workers"] < 1:
        raise ConfigError("raydd tune runs each trial's distillation on Ray Train workers: set workers >= 1")
    if t["mode"] not in ("max", "min"):
        raise ConfigError(f"tune.mode must be max or min, got {t['mode']!r}")
    if not isinstance(t["num_samples"], int) or t["num_samples"] < 1:
        raise ConfigError(f"tune.num_samples must be a positive integer, got {t['num_samples']!r}")
    if t["max_concurrent"] is not None and (not isinstance(t["max_concurrent"], int) or t["max_concurrent"] < 1):
        raise ConfigError(f"tune.max_concurrent must be a positive integer or null, got {t['max_concurrent']!r}")
    check_scheduler(cfg)


def storage_args(loc: Location) -> tuple[str, pafs.FileSystem | None]:
    return loc.path, None if isinstance(loc.fs, pafs.LocalFileSystem) else loc.fs


def make_tuner(cfg: dict[str, Any], params: list[Param], sweep: Location, restore: bool):
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, base=cfg), {"cpu": TRIAL_CPU})
    path, fs = storage_args(sweep)
    if restore:
        return tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=fs)
    parent, _ = storage_args(root(cfg).join("tune"))
    return tune.Tuner(
        trainable, param_space={p.key: p.domain() for p in params},
        tune_config=tune.TuneConfig(num_samples=cfg["tune"]["num_samples"], scheduler=scheduler(cfg),
                                    max_concurrent_trials=max_concurrent(cfg)),
        run_config=tune.RunConfig(name=sweep_name(cfg), storage_path=parent, storage_filesystem=fs,
                                  failure_config=tune.FailureConfig(max_failures=0), callbacks=tune_callbacks(cfg)))


def can_restore(sweep: Location) -> bool:
    from ray import tune

    path, fs = storage_args(sweep)
    return tune.Tuner.can_restore(path, storage_filesystem=fs)


def export_best(cfg: dict[str, Any], best: dict[str, Any], params: list[Param], sweep: Location) -> str:
    """Write the best trial's config to ``best.yaml`` (and ``configs/experiment/<tune.export_experiment>.yaml``);
    return the command that runs it."""
    trial = trial_config(cfg, {p.key: best[p.key] for p in params}, best["trial"])
    trial = with_values(trial, {"run_name": cfg["run_name"], "evaluate.set": cfg["evaluate"]["set"]})
    prefix = "" if sweep_name(cfg).startswith("tune") else "tune_"
    name = cfg["tune"]["export_experiment"] or f"{prefix}{sweep_name(cfg)}_best"
    note = (f"best of sweep {sweep.uri} (trial {best['trial']}: test accuracy {best['test_acc']:.2f} ± "
            f"{best['test_std']:.2f} %);\nneeds this file as configs/experiment/{name}.yaml "
            f"(`raydd tune ... tune.export_experiment={name}` writes it there)")
    text = experiment_yaml(trial, name, note)
    sweep.join("best.yaml").write_bytes_atomic(text.encode())
    if cfg["tune"]["export_experiment"]:
        (config_dir() / "experiment" / f"{name}.yaml").write_text(text)
        return f"raydd distill experiment={name}"
    return f"cp {sweep.join('best.yaml').uri} configs/experiment/{name}.yaml && raydd distill experiment={name}"


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    check_options(cfg)
    params = parse_space(cfg)
    cfg = with_values(absolute_paths(cfg), {"tune.name": sweep_name(cfg)})
    check_reachable(root(cfg))
    sweep = root(cfg).join("tune", sweep_name(cfg))
    start_ray(cfg)
    restore = can_restore(sweep)
    if restore and not cfg["tune"]["resume"]:
        raise ConfigError(f"a sweep named {sweep_name(cfg)!r} exists at {sweep.uri}: resume it (tune.resume=true) "
                          "or choose another tune.name")
    for store_cfg in store_configs(params, cfg):  # trials only read the stores
        experts_stage.run(store_cfg)
    # Train reports carry eval_acc only every distill.eval_every iterations; ASHA skips the others.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    print(f"{'resuming' if restore else 'starting'} sweep {sweep.uri}")
    rows = trial_rows(make_tuner(cfg, params, sweep, restore).fit(), params)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    if counts["error"] == len(rows):
        raise RuntimeError(f"all {len(rows)} trials failed; first: {rows[0]['error']}")
    best = best_row(rows)
    notes = sweep_notes(cfg, counts, best, params, scheduler_text(cfg))
    text = markdown(rows, params, f"Tune sweep {sweep_name(cfg)}", notes)
    write_tables(sweep, rows, text)
    plots = write_plots(sweep, rows, params, cfg["ipc"], cfg["method"]["name"])
    print(text)
    command = export_best(cfg, best, params, sweep) if best and not counts["unfinished"] else None
    if command:
        print(f"best config: {sweep.join('best.yaml').uri}\nrun it: {command}")
    return {"sweep": sweep.uri, "rows": rows, **counts, "best": best, "plots": plots,
            "best_yaml": sweep.join("best.yaml").uri if command else None, "command": command}
