"""Ray Tune sweeps: search spaces from Hydra config, expert stores per swept expert setting,
ASHA stopping weak trials on a real (tiny) sweep, results, resume, and the exported best config re-running."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from raydd.config import compose, config_dir, validate
from raydd.distill import stage as distill_stage
from raydd.runtime import init_ray
from raydd.specs import ConfigError
from raydd.storage.distilled import load_set
from raydd.storage.fs import resolve
from raydd.storage.layout import experts_location, set_location
from raydd.tune import stage as tune_stage
from raydd.tune.export import experiment_yaml, override_value
from raydd.tune.space import parse_space, with_values
from raydd.tune.stores import store_configs

TINY = ["dataset=digits", "model.width=8", "model.depth=2", "experts.num=2", "experts.epochs=4", "experts.batch_size=64",
        "experts.lr=0.05", "distill.syn_steps=6", "distill.expert_epochs=1", "distill.max_start_epoch=2",
        "distill.checkpoint_every=10", "distill.log_every=5", "distill.eval_every=5", "distill.eval_epochs=30",
        "distill.eval_test_size=500", "evaluate.num_models=1", "evaluate.epochs=30"]


def tiny(tmp: Path, *extra: str) -> dict:
    return compose([*TINY, f"storage.root={tmp}", *extra])


# --- search spaces (no Ray) ---------------------------------------------------------------------------------------

def test_space_from_nested_and_dotted_keys(tmp_path):
    cfg = tiny(tmp_path, "tune.space={ipc:{grid:[1,10]},distill.lr_img:{loguniform:[10,1000]}}",
               "+tune.space.distill.intermediate_weight.choice=[0.0,0.5]")
    params = {p.key: p for p in parse_space(cfg)}
    assert set(params) == {"ipc", "distill.lr_img", "distill.intermediate_weight"}
    assert params["ipc"].finite and params["ipc"].values == (1, 10)
    assert params["distill.lr_img"].kind == "loguniform" and not params["distill.lr_img"].finite


@pytest.mark.parametrize("space,message", [
    (None, "tune.space is empty"),
    ("{ipcc:{grid:[1,2]}}", "'ipcc' is not a config key"),
    ("{distill.iterations:{grid:[10,20]}}", "ASHA's time budget"),
    ("{method.name:{grid:[mtt,ast]}}", "one sweep per method"),
    ("{ipc:{uniform:[1,10]}}", "ipc is an integer"),
    ("{distill.lr_img:{loguniform:[0,10]}}", "positive low bound"),
    ("{distill.lr_img:{uniform:[10,1]}}", "must be below high"),
    ("{distill.lr_img:{grid:[]}}", "non-empty list"),
    ("{distill:{lr_img:{grid:[1],choice:[2]}}}", "exactly one domain kind"),
    ("{ipc:{grid:[1,0]}}", "ipc must be a positive integer"),
    ("{distill.max_start_epoch:{grid:[1,5]}}", "must lie within experts.epochs=4"),
])
def test_bad_space_fails_before_any_work(tmp_path, space, message):
    cfg = tiny(tmp_path, *([f"tune.space={space}"] if space else []))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_space(cfg)


@pytest.mark.parametrize("overrides,message", [
    (["workers=0"], "workers >= 1"),
    (["tune.grace_period=7"], "multiple of the eval_acc period"),
    (["tune.grace_period=40", "distill.iterations=40"], "below distill.iterations"),
    (["tune.reduction_factor=1"], "integer >= 2"),
    (["distill.eval_every=0"], "distill.eval_every > 0"),
    (["tune.mode=best"], "max or min"),
])
def test_bad_sweep_options_fail_fast(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(tiny(tmp_path, "distill.iterations=20", *overrides), "tune")


def test_swept_expert_settings_get_their_own_stores(tmp_path):
    base = tiny(tmp_path, "method=ast", "tune.space={experts.gradient_penalty:{grid:[0.0,2.0]},ipc:{grid:[1,2]}}")
    configs = store_configs(parse_space(base), base)
    stores = [experts_location(c).uri for c in configs]
    assert len(stores) == 2 and len(set(stores)) == 2
    assert experts_location(base).uri in stores, "the base's own value reads the default store"
    assert all(s.rsplit("-", 1)[0] == experts_location(base).uri.rsplit("-", 1)[0] for s in stores)
    random_gp = tiny(tmp_path, "method=ast", "tune.space={experts.gradient_penalty:{uniform:[0.0,0.1]}}")
    with pytest.raises(ConfigError, match="changes the expert trajectories"):
        store_configs(parse_space(random_gp), random_gp)


@pytest.mark.parametrize("value,text", [(None, "null"), (True, "true"), (3, "3"), (1e-05, "1e-05"), ("ast", "ast"),
                                        ("null", '"null"'), ("/a b", '"/a b"'), ('say "hi"', '"say \\"hi\\""'),
                                        ([1, "x"], "[1,x]")])
def test_override_values(value, text):
    assert override_value(value) == text


@pytest.fixture
def config_copy(tmp_path, monkeypatch):
    """A private copy of configs/ (exports write into its experiment/ folder)."""
    copy = tmp_path / "configs"
    shutil.copytree(config_dir(), copy)
    monkeypatch.setenv("RAYDD_CONFIG_DIR", str(copy))
    return copy


def test_exported_experiment_composes_back_to_the_trial(tmp_path, config_copy):
    cfg = tiny(tmp_path, "method=ast", "model=convnet4", "ipc=3", "distill.lr_img=123.456",
               "distill.intermediate_weight=0.25", 'dataset.root="/tmp/a b"',
               f"experts.store={tmp_path}/experts/x", "distill.batch_syn=null")
    text = experiment_yaml(cfg, "exported", "a note\non two lines")
    lines = text.splitlines()
    assert lines[0] == "# raydd distill experiment=exported" and lines[1] == "# a note"
    (config_copy / "experiment" / "exported.yaml").write_text(text)
    again = compose(["experiment=exported"])
    assert {k: v for k, v in again.items() if k != "tune"} == {k: v for k, v in cfg.items() if k != "tune"}


def test_no_plots_before_a_trial_has_ended(tmp_path):
    from raydd.tune.report import write_plots

    rows = [{"trial": "a", "ipc": None, "status": "unfinished", "iterations": 0}]
    assert write_plots(resolve(str(tmp_path)), rows, [], 10, "mtt") == []


class FakeTrial:
    def __init__(self, trial_id: str, ipc: int):
        self.trial_id, self.config = trial_id, {"ipc": ipc}


def test_asha_ranks_trials_only_within_their_ipc():
    from ray.tune.schedulers import TrialScheduler

    from raydd.tune.scheduler import GroupedASHA

    asha = GroupedASHA(["ipc"], time_attr="iteration", metric="eval_acc", mode="max", max_t=9, grace_period=5,
                       reduction_factor=2, stop_last_trials=False)
    good10, weak10, weak1 = FakeTrial("a", 10), FakeTrial("b", 10), FakeTrial("c", 1)
    for t in (good10, weak10, weak1):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, good10, {"iteration": 5, "eval_acc": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, weak10, {"iteration": 5, "eval_acc": 0.5}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, weak1, {"iteration": 5, "eval_acc": 0.3}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, good10, {"iteration": 10, "eval_acc": 0.2}) == TrialScheduler.CONTINUE, \
        "no decision at the last report"


# --- real sweeps ----------------------------------------------------------------------------------------------------

SWEEP = ["distill.iterations=10", "tune.grace_period=5", "tune.reduction_factor=2", "distill.eval_epochs=60"]
# lr_init sets the set's learned step size, which the fast evaluation trains with: 1e-4 barely moves a network,
# so within each IPC that trial falls below the bar its predecessor set at the rung (on 2 CPUs trials run one
# at a time, in grid order).
FOUR = "{ipc:{grid:[10,2]},distill.lr_init:{grid:[0.05,0.0001]}}"


@pytest.fixture(scope="module")
def ray_session():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    init_ray({}, num_cpus=2)
    yield
    ray.shutdown()


def test_asha_stops_the_weak_trial_and_the_best_config_reruns(tmp_path, ray_session, config_copy):
    cfg = tiny(tmp_path, *SWEEP, "ipc=10", "tune.name=two", "tune.space={distill.lr_init:{grid:[0.05,0.0001]}}",
               "tune.export_experiment=tune_test_best")
    out = tune_stage.run(cfg)
    sweep = Path(out["sweep"])
    rows = pd.read_csv(sweep / "results.csv")
    assert len(rows) == 2 and out["completed"] == 1 and out["stopped"] == 1, rows
    stopped = rows[rows["status"] == "stopped"].iloc[0]
    assert stopped["distill.lr_init"] == 0.0001 and stopped["iterations"] < 10, "ASHA stopped it at the rung"
    for name in ("results.md", "acc_vs_ipc.png", "acc_vs_distill.lr_init.png", "best.yaml"):
        assert (sweep / name).stat().st_size > 0, name
    assert (sweep / "best.yaml").read_text() == (config_copy / "experiment" / "tune_test_best.yaml").read_text()

    best = compose(["experiment=tune_test_best"])  # the exported best config re-runs
    assert best["distill"]["lr_init"] == 0.05 and best["storage"]["root"] == str(tmp_path)
    distill_stage.run(best)
    assert load_set(set_location(best)).images.shape == (100, 1, 8, 8)
    with pytest.raises(ConfigError, match="exists"):
        tune_stage.run(with_values(cfg, {"tune.resume": False}))


@pytest.mark.slow
def test_four_trials_are_ranked_within_each_ipc(tmp_path, ray_session):
    cfg = tiny(tmp_path, *SWEEP, "tune.name=four", f"tune.space={FOUR}")
    out = tune_stage.run(cfg)
    rows = pd.DataFrame(out["rows"])
    assert len(rows) == 4 and out["completed"] == 2 and out["stopped"] == 2, rows
    stopped = rows[rows["status"] == "stopped"]
    assert (stopped["distill.lr_init"] == 0.0001).all() and (stopped["iterations"] < 10).all()
    assert sorted(stopped["ipc"]) == [2, 10], "each IPC keeps its best: ASHA ranks within an IPC"
    assert out["best"]["ipc"] == 10 and out["best_yaml"]
    again = tune_stage.run(cfg)  # a finished sweep of the same name is restored, not re-run
    assert [r["trial"] for r in again["rows"]] == list(rows["trial"])


def finished_trials(sweep: Path) -> list[Path]:
    """Trial folders whose final result (with the test accuracy) Tune has recorded."""
    return [p.parent for p in sweep.glob("*/result.json") if '"test_acc"' in p.read_text()]


@pytest.mark.slow
def test_interrupted_four_trial_sweep_resumes(tmp_path, ray_session):
    """``raydd tune`` with 4 trials (IPC x lr_init), interrupted (SIGINT) once its first trial finished;
    running it again resumes: the finished trial is kept, the rest run, ASHA stops a weak one."""
    args = [*TINY, *SWEEP, f"storage.root={tmp_path}", "tune.name=four", f"tune.space={FOUR}"]
    sweep = tmp_path / "tune" / "four"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "raydd", "tune", *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).parents[1], env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not finished_trials(sweep):
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    first = pd.read_csv(sweep / "results.csv")
    assert (first["status"] == "unfinished").any(), first
    done = first[first["status"] == "completed"]
    assert len(done) >= 1
    kept = {t: (sweep / "sets" / t / "set.parquet").stat().st_mtime for t in done["trial"]}

    out = tune_stage.run(compose(args))
    rows = pd.DataFrame(out["rows"])
    assert len(rows) == 4 and set(rows["status"]) <= {"completed", "stopped"}, rows
    assert (rows[rows["status"] == "stopped"]["iterations"] < 10).sum() >= 1, "ASHA stopped a trial early"
    assert {t: (sweep / "sets" / t / "set.parquet").stat().st_mtime for t in kept} == kept, "finished trials not re-run"
    assert out["best_yaml"] and out["best"]["distill.lr_init"] == 0.05


@pytest.mark.slow
def test_swept_gradient_penalty_trains_and_reads_one_store_per_value(tmp_path, ray_session):
    cfg = tiny(tmp_path, "method=ast", "ipc=2", "distill.iterations=4", "tune.scheduler=fifo", "tune.name=gp",
               "evaluate.epochs=10", "tune.space={experts.gradient_penalty:{grid:[0.1,2.0]}}")
    out = tune_stage.run(cfg)
    assert out["completed"] == 2
    stores = {load_set(resolve(r["set"])).meta["experts"] for r in out["rows"]}
    assert len(stores) == 2 and experts_location(cfg).uri in stores, stores
    assert all((Path(s) / "manifest.json").exists() for s in stores)
