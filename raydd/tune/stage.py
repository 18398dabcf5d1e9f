"""``raydd tune``: a Ray Tune sweep whose trials each distil (Ray Train) and evaluate a set.

The driver checks the space, trains any missing expert store, then runs (or resumes) the
sweep under ``<storage.root>/tune/<name>``: ASHA stops weak trials at rungs of the periodic
fast evaluation, as many trials run at once as the cluster has room for. It writes a results
table, plots and the best trial's config as an experiment file beside the trials.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs

from raydd.config import config_dir
from raydd.errors import RunError
from raydd.experts import stage as experts_stage
from raydd.runtime import init_ray
from raydd.specs import ConfigError, RunSpec, tune_name
from raydd.storage.fs import Location, check_reachable
from raydd.storage.layout import digest, root, store_settings
from raydd.tracking import tune_callbacks
from raydd.tune.export import experiment_yaml
from raydd.tune.report import STATUSES, best_row, markdown, sweep_notes, trial_rows, write_plots, write_tables
from raydd.tune.scheduler import TRIAL_CPU, max_concurrent, scheduler, scheduler_text
from raydd.tune.space import Param, parse_space, with_values
from raydd.tune.stores import store_configs
from raydd.tune.trial import absolute_paths, run_trial, trial_config


def storage_args(loc: Location) -> tuple[str, pafs.FileSystem | None]:
    return loc.path, None if isinstance(loc.fs, pafs.LocalFileSystem) else loc.fs


def make_tuner(cfg: dict[str, Any], spec: RunSpec, params: list[Param], sweep: Location, restore: bool, stores: dict[str, str]):
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, base=cfg, stores=stores), {"cpu": TRIAL_CPU})
    path, fs = storage_args(sweep)
    if restore:
        return tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=fs)
    parent, _ = storage_args(root(cfg).join("tune"))
    return tune.Tuner(
        trainable, param_space={p.key: p.domain() for p in params},
        tune_config=tune.TuneConfig(num_samples=spec.tune.num_samples, scheduler=scheduler(spec),
                                    max_concurrent_trials=max_concurrent(spec)),
        run_config=tune.RunConfig(name=cfg["tune"]["name"], storage_path=parent, storage_filesystem=fs,
                                  failure_config=tune.FailureConfig(max_failures=0), callbacks=tune_callbacks(cfg)))


def can_restore(sweep: Location) -> bool:
    from ray import tune

    path, fs = storage_args(sweep)
    return tune.Tuner.can_restore(path, storage_filesystem=fs)


def export_best(cfg: dict[str, Any], best: dict[str, Any], params: list[Param], sweep: Location) -> str:
    """Write the best trial's config to ``best.yaml`` (and ``<config dir>/experiment/<tune.export_experiment>.yaml``);
    return the command that runs it."""
    trial = with_values(trial_config(cfg, {p.key: best[p.key] for p in params}), {"run_name": cfg["run_name"]})
    prefix = "" if cfg["tune"]["name"].startswith("tune") else "tune_"
    name = cfg["tune"]["export_experiment"] or f"{prefix}{cfg['tune']['name']}_best"
    note = (f"best of sweep {sweep.uri} (trial {best['trial']}: test accuracy {best['test_acc']:.2f} ± "
            f"{best['test_std']:.2f} %);\nneeds this file as {config_dir() / 'experiment' / name}.yaml "
            f"(`raydd tune ... tune.export_experiment={name}` writes it there)")
    text = experiment_yaml(trial, name, note)
    sweep.join("best.yaml").write_bytes_atomic(text.encode())
    if cfg["tune"]["export_experiment"]:
        (config_dir() / "experiment" / f"{name}.yaml").write_text(text)
        return f"raydd distill experiment={name}"
    return f"cp {sweep.join('best.yaml').uri} {config_dir() / 'experiment'}/{name}.yaml && raydd distill experiment={name}"


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the sweep; returns its URI as ``sweep``, the trials' rows and the best config."""
    params = parse_space(cfg)
    cfg = with_values(absolute_paths(cfg), {"tune.name": tune_name(RunSpec.from_config(cfg))})
    spec = RunSpec.from_config(cfg)
    check_reachable(root(cfg))
    sweep = root(cfg).join("tune", tune_name(spec))
    init_ray(cfg)
    restore = can_restore(sweep)
    if restore and not cfg["tune"]["resume"]:
        raise ConfigError(f"a sweep named {tune_name(spec)!r} exists at {sweep.uri}: resume it (tune.resume=true) "
                          "or choose another tune.name")
    # Trials only read the stores, each the one the experts stage returned for its settings.
    stores = {digest(store_settings(c)): experts_stage.run(c)["store"] for c in store_configs(params, cfg)}
    # Train reports carry eval_acc only every distill.eval_every iterations; ASHA skips the others.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    print(f"{'resuming' if restore else 'starting'} sweep {sweep.uri}")
    rows = trial_rows(make_tuner(cfg, spec, params, sweep, restore, stores).fit(), params)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    if counts["error"] == len(rows):
        raise RunError(f"all {len(rows)} trials failed; first: {rows[0]['error']}")
    best = best_row(rows)
    notes = sweep_notes(cfg, counts, best, params, scheduler_text(spec))
    text = markdown(rows, params, f"Tune sweep {tune_name(spec)}", notes)
    write_tables(sweep, rows, text)
    plots = write_plots(sweep, rows, params, cfg["ipc"], cfg["method"]["name"])
    print(text)
    command = export_best(cfg, best, params, sweep) if best and not counts["unfinished"] else None
    if command:
        print(f"best config: {sweep.join('best.yaml').uri}\nrun it: {command}")
    return {"sweep": sweep.uri, "rows": rows, **counts, "best": best, "plots": plots,
            "best_yaml": sweep.join("best.yaml").uri if command else None, "command": command}
