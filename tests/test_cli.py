"""The ``raydd`` command line: help, per-stage config, and a real evaluate run on Ray."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from raydd.cli import main
from raydd.config import STAGES, compose
from raydd.storage.layout import evaluation_location, set_location
from stderr_lines import raydd_stderr


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_help_lists_the_stages():
    result = subprocess.run([sys.executable, "-m", "raydd", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1], timeout=60)
    assert result.returncode == 0
    for stage in STAGES:
        assert re.search(rf"^  {stage}\s", result.stdout, re.M), stage


def test_no_arguments_prints_usage(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("usage: raydd <stage>")


def test_stage_help_prints_the_config(capsys):
    assert main(["evaluate", "--help", "dataset=digits", "evaluate.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"raydd evaluate: {STAGES['evaluate']}")
    assert "name: digits" in out and "epochs: 7" in out and "storage:" in out


def test_evaluate_random_on_digits(tmp_path, ray_session, capsys):
    argv = ["evaluate", "dataset=digits", "method=random", "ipc=2", "evaluate.epochs=5", "evaluate.num_models=3",
            f"storage.root={tmp_path}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^convnet: \d+\.\d\d ± \d+\.\d\d % \(3 models\)$", out, re.M), out
    set_dir = Path(set_location(compose(argv[1:])).path)
    assert set_dir.parent == tmp_path / "sets" and set_dir.name.startswith("random-ipc2-digits-convnet3w")
    assert (set_dir / "set.parquet").exists() and (set_dir / "grid.png").exists()
    evals = Path(evaluation_location(compose(argv[1:]), set_location(compose(argv[1:]))).path)
    assert evals.parent == tmp_path / "evals" and evals.name.startswith(set_dir.name)
    result = json.loads((evals / "eval.json").read_text())
    assert result["meta"]["ipc"] == 2 and result["meta"]["set_size"] == 20
    assert result["summary"]["convnet"]["n"] == 3
    rows = list(csv.DictReader((evals / "eval.csv").open()))
    assert [int(r["seed"]) for r in rows] == [0, 1, 2] and all(r["epochs"] == "5" for r in rows)


def test_error_found_inside_a_stage_is_one_line(tmp_path, capsys):
    """``raydd tune`` parses its space inside the stage; a bad key still gives the one-line error and exit 2."""
    argv = ["tune", "dataset=digits", f"storage.root={tmp_path}", "tune.space={distill.no_such_key:{grid:[1,2]}}"]
    assert main(argv) == 2
    err = raydd_stderr(capsys.readouterr().err)
    assert err.startswith("raydd: error: tune.space") and "no_such_key" in err and err.count("\n") == 1, err
    assert not (tmp_path / "tune").exists()


def test_corrupt_store_found_inside_a_stage_exits_1(tmp_path, capsys):
    """A store whose manifest is garbage is named in a one-line error (exit 1), not a traceback."""
    from raydd.storage.layout import experts_location

    argv = ["experts", "dataset=digits", f"storage.root={tmp_path}", "experts.num=1", "experts.epochs=1"]
    store = Path(experts_location(compose(argv[1:])).path)
    store.mkdir(parents=True)
    (store / "manifest.json").write_text("{not json")
    assert main(argv) == 1
    err = raydd_stderr(capsys.readouterr().err)
    assert err.startswith("raydd: error:") and "manifest" in err and err.count("\n") == 1, err
    assert (store / "manifest.json").read_text() == "{not json"
