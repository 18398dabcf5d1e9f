"""Every config composes; every bad config fails fast with one line and exit status 2."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raydd.cli import main
from raydd.config import STAGES, check_storage, compose, config_dir, validate

CONFIGS = config_dir()
GROUPS = sorted(d.name for d in CONFIGS.iterdir() if d.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONFIGS / g).glob("*.yaml"))]
EXPERIMENTS = sorted((CONFIGS / "experiment").glob("*.yaml"))
NEEDS = {("dataset", "parquet"): ["dataset.uri=/tmp/unused"]}


def _plain(value):
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def test_groups_found():
    assert {"dataset", "model", "method", "storage"} <= set(GROUPS)
    assert len(OPTIONS) >= 20


def test_default_composes():
    cfg = compose([])
    assert type(cfg) is dict and _plain(cfg)
    assert (cfg["dataset"]["name"], cfg["model"]["width"], cfg["method"]["name"]) == ("fashion_mnist", 16, "mtt")
    validate(cfg, "distill")


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    cfg = compose([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert type(cfg) is dict and _plain(cfg)
    if group == "method":
        assert cfg["method"]["name"] == option
        stage = "evaluate" if cfg["method"]["stage"] == "baseline" else cfg["method"]["stage"]
        validate(cfg, stage)
    elif group != "experiment":
        validate(cfg, "evaluate")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_launch_comment_validates(path):
    """An experiment's first line is its launch command, ``# raydd <stage> experiment=<name> ...``."""
    words = path.read_text().splitlines()[0].lstrip("# ").split()
    assert words[0] == "raydd" and words[1] in STAGES, f"{path}: first line must be '# raydd <stage> ...'"
    overrides = [w for w in words[2:] if "=" in w]
    assert f"experiment={path.stem}" in overrides or f"+experiment={path.stem}" in overrides
    validate(compose(overrides), words[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD = {
    "unknown dataset": (["evaluate", "dataset=imagenet22k"], "unknown dataset 'imagenet22k'; choose one of cifar10"),
    "unknown model": (["evaluate", "model=lenet"], "unknown model 'lenet'; choose one of alexnet"),
    "unknown evaluate model": (["evaluate", "evaluate.models=[lenet]"], "unknown model 'lenet'; choose one of convnet"),
    "unknown compiled model": (["evaluate", "evaluate.compile=[resnet]"], "evaluate.compile: unknown model 'resnet'"),
    "compile not a list": (["evaluate", "evaluate.compile=true"], "evaluate.compile must be a list of architectures"),
    "unknown method": (["evaluate", "method=dc"], "unknown method 'dc'; choose one of ast"),
    "method in wrong stage": (["distill", "method=ddoq"], "method 'ddoq' does not run in stage 'distill'"),
    "ipc=0": (["evaluate", "ipc=0"], "ipc must be a positive integer, got 0"),
    "ipc=-1": (["evaluate", "ipc=-1"], "ipc must be a positive integer, got -1"),
    "missing data": (["evaluate", "dataset=cifar10", "dataset.root=/nonexistent"],
                     "CIFAR10 needs dataset.root pointing at a torchvision root (got '/nonexistent')"),
    "missing image folder": (["evaluate", "dataset=tiny_imagenet", "dataset.root=/nonexistent"],
                             "tiny_imagenet: dataset.root must be an ImageFolder root"),
    "parquet without uri": (["evaluate", "dataset=parquet"], "missing mandatory value dataset.uri"),
    "unknown stage": (["destill"], "unknown stage 'destill'; choose one of data, experts"),
    "bad unroll": (["distill", "distill.unroll=recursive"], "unknown distill.unroll 'recursive'; choose plain or constant_memory"),
    "bad lr_max_step": (["distill", "distill.lr_max_step=1"], "distill.lr_max_step must be > 1"),
    "negative lr_lr": (["distill", "distill.lr_lr=-1"], "distill.lr_img, lr_lr and lr_label must be >= 0"),
    "bad threshold patience": (["distill", "distill.threshold_patience=0"],
                               "distill.threshold_patience must be a positive integer"),
    "kept graphs on plain": (["distill", "distill.kept_graphs=4"],
                             "distill.kept_graphs=4 applies to distill.unroll=constant_memory"),
    "negative kept graphs": (["distill", "distill.unroll=constant_memory", "distill.kept_graphs=-1"],
                             "distill.kept_graphs must be an integer >= 0, got -1"),
    "bad heap": (["distill", "distill.heap=tcmalloc"], "unknown distill.heap 'tcmalloc'; choose one of auto, jemalloc, reuse, default"),
    "bad dsa strategy": (["distill", "distill.dsa_strategy=crop_blur"], "distill.dsa_strategy: unknown DSA transform 'blur'"),
    "bad temperature": (["distill", "distill.temperature=0"], "distill.lr_backoff must lie in (0, 1]"),
    "unknown key": (["evaluate", "evaluate.epoch=3"], "Could not override 'evaluate.epoch'"),
    "data without out": (["data", "dataset=digits"], "raydd data needs data.out"),
    "data from parquet": (["data", "dataset=parquet", "dataset.uri=/tmp/x", "data.out=/tmp/y"],
                          "raydd data converts a dataset from dataset.root"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_config_one_line_error(name, capsys, tmp_path):
    argv, message = BAD[name]
    assert main([*argv, f"storage.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raydd: error: {message}"), err
    assert err.count("\n") == 1


def test_unreachable_bucket(capsys, monkeypatch):
    """A closed port on loopback: the CLI refuses before any work, naming the storage."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    root = "s3://raydd-test/runs"
    endpoint = f"storage.endpoint_url=http://127.0.0.1:{_free_port()}"
    assert main(["evaluate", "dataset=digits", "method=random", f"storage.root={root}", endpoint]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raydd: error: storage {root} is unreachable"), err
    assert err.count("\n") == 1


def test_check_storage_refuses_nonempty_data_out(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "part-00000.parquet").write_bytes(b"")
    cfg = compose(["dataset=digits", f"data.out={tmp_path}"])
    with pytest.raises(ValueError, match="already holds Parquet shards"):
        check_storage(cfg, "data")
    check_storage(compose(["dataset=digits", f"data.out={tmp_path / 'fresh'}"]), "data")


def test_exit_status_through_python_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "raydd", "evaluate", "ipc=0", f"storage.root={tmp_path}"],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60)
    assert result.returncode == 2
    assert result.stderr == "raydd: error: ipc must be a positive integer, got 0\n"


def test_set_names_carry_what_makes_sets_differ():
    from raydd.storage.layout import run_name

    assert run_name(compose(["method=mtt", "ipc=10"])) == "mtt-ipc10-fashion_mnist-convnet3w16"
    assert run_name(compose(["method=ddoq", "quantize.encoder=pca", "ipc=5"])) == "ddoq-pca-ipc5-fashion_mnist-convnet3w16"
    assert run_name(compose(["method=ddoq", "quantize.prototype=medoid", "ipc=1"])) == \
        "ddoq-pixel-medoid-ipc1-fashion_mnist-convnet3w16"
    assert run_name(compose(["method=full", "ipc=50"])) == "full-fashion_mnist-convnet3w16"
    assert run_name(compose(["method=full", "run_name=mine"])) == "mine"


def test_method_files_carry_the_authors_defaults():
    ast = compose(["method=ast"])["distill"]
    assert (ast["perturb"], ast["perturb_mode"]) == (1.0, "filter")  # AST's weightPerturb(alpha=1)
    datm = compose(["method=datm"])["distill"]
    assert (datm["init"], datm["soft_label_init"], datm["ema"]) == ("correct", "correct", 0.0)
