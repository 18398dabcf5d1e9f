"""``tracking: tensorboard``: experts, distill (Ray Train callback) and tune (Ray Tune's TBX logger) write event
files under <storage.root>/tracking holding the reported metrics; with tracking off nothing is written there."""

import struct
from pathlib import Path

import pandas as pd
import pytest
import ray

from raydd.config import compose
from raydd.distill import stage as distill_stage
from raydd.experts import stage as experts_stage
from raydd.storage.layout import experts_location, set_location
from raydd.storage.trajectory import TrajectoryStore
from raydd.tracking import tune_callbacks
from tune_fixtures import init_ray, run_toy_sweep

TINY = ["dataset=digits", "model.width=8", "model.depth=2", "experts.num=2", "experts.epochs=3", "experts.batch_size=64",
        "experts.lr=0.05", "distill.syn_steps=4", "distill.expert_epochs=1", "distill.max_start_epoch=2", "ipc=1",
        "distill.iterations=10", "distill.log_every=5", "distill.checkpoint_every=5", "distill.eval_every=5",
        "distill.eval_epochs=5", "distill.eval_test_size=100"]


def scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """tag → {step: value} from every TensorBoard event file under ``logdir`` (TFRecord framing, Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in logdir.rglob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


@pytest.fixture(scope="module")
def session():
    init_ray()
    yield
    ray.shutdown()


def test_experts_and_distill_write_their_metrics(tmp_path, session):
    cfg = compose([*TINY, f"storage.root={tmp_path}", "tracking=tensorboard"])
    experts_stage.run(cfg)
    store = TrajectoryStore.open(experts_location(cfg))
    for expert in (0, 1):
        folder = experts_location(cfg).uri.rstrip("/").rsplit("/", 1)[-1]  # <dataset>-<model>-<variant>-<digest>
        events = scalars(tmp_path / "tracking" / "experts" / folder / f"expert-{expert}")
        acc = store.metrics(expert)["test_acc"]
        assert events["experts/test_acc"] == pytest.approx(dict(enumerate(acc)))
        assert sorted(events["experts/train_loss"]) == [1, 2, 3]
    distill_stage.run(cfg)
    (run,) = (tmp_path / "tracking" / "distill").iterdir()
    events = scalars(run)
    history = pd.read_csv(set_location(cfg).join("distill_metrics.csv").path).set_index("iteration")
    assert sorted(events["distill/loss"]) == [5, 10]
    for it in (5, 10):
        assert events["distill/loss"][it] == pytest.approx(history.loc[it, "loss"])
        assert events["distill/lr"][it] == pytest.approx(history.loc[it, "lr"])
        assert events["distill/eval_acc"][it] == pytest.approx(history.loc[it, "eval_acc"])


def test_nothing_is_written_when_tracking_is_off(tmp_path, session):
    cfg = compose([*TINY, f"storage.root={tmp_path}", "experts.num=1", "distill.iterations=5"])
    assert cfg["tracking"] is None
    experts_stage.run(cfg)
    distill_stage.run(cfg)
    assert set_location(cfg).join("set.parquet").exists() and not (tmp_path / "tracking").exists()
    assert tune_callbacks(cfg) == []


def test_tune_trials_go_to_tensorboard(tmp_path, session):
    cfg = compose([f"storage.root={tmp_path}", "tracking=tensorboard", "tune.name=toy"])
    grid = run_toy_sweep(str(tmp_path / "tune"), "toy", tune_callbacks(cfg))
    lengths = []
    for result in grid:
        df = result.metrics_dataframe
        events = scalars(tmp_path / "tracking" / "tune" / "toy" / result.metrics["trial_id"])
        assert events["ray/tune/eval_acc"] == pytest.approx(dict(zip(df["training_iteration"], df["eval_acc"])))
        lengths.append(len(events["ray/tune/eval_acc"]))
    assert sorted(lengths) == [1, 1, 4]  # ASHA stopped two trials at the first rung
    assert not list((tmp_path / "tune").rglob("events.out.tfevents.*"))  # in tracking/, not the trial directories


def test_unknown_tracker_is_a_config_error(capsys):
    from raydd.cli import main

    assert main(["distill", "dataset=digits", "tracking=mlflow"]) == 2
    assert capsys.readouterr().err == "raydd: error: unknown tracking 'mlflow'; choose null (off) or tensorboard\n"
