"""Every error a user can fix: one ``raydd: error:`` line naming it, exit 2 (config) or 1 (data/storage/run),
no traceback, and no file that existed before changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import s3fs
from s3_fixtures import BUCKET, ray_session, s3_endpoint  # noqa: F401  (fixtures)
from stderr_lines import raydd_stderr

from raydd.cli import main
from raydd.config import compose
from raydd.core.images import ImageData
from raydd.data.parquet import write_split
from raydd.data.registry import load_dataset, open_split
from raydd.evaluate.baselines import random_set
from raydd.experts import stage as experts_stage
from raydd.specs import LoaderSpec
from raydd.storage.distilled import save_set
from raydd.storage.fs import resolve

TINY = ["dataset=digits", "model.width=8", "model.depth=2", "experts.num=1", "experts.epochs=3", "experts.lr=0.05",
        "distill.syn_steps=2", "distill.expert_epochs=1", "distill.max_start_epoch=1", "distill.iterations=2",
        "distill.eval_every=0", "ipc=1", "evaluate.num_models=1", "evaluate.epochs=1"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, ray_session) -> Path:  # noqa: F811
    """One tiny expert store, one set and one Parquet copy of digits, shared by every case."""
    root = tmp_path_factory.mktemp("errors")
    store = experts_stage.run(compose([*TINY, f"storage.root={root / 'runs'}"]))["store"]
    shutil.copytree(store, root / "store")
    spec, train, test = load_dataset({"name": "digits"})
    digits = open_split({"name": "digits"}, LoaderSpec.from_config(compose([])["loader"]), "train")
    save_set(random_set(digits, spec, ipc=2, seed=0), resolve(str(root / "set")), spec)
    for split, data in (("train", train), ("test", test)):
        write_split(ImageData(data.images, data.labels), resolve(str(root / "parquet")), split, 10, rows_per_shard=500)
    return root


def copy(shared: Path, tmp: Path, name: str) -> Path:
    shutil.copytree(shared / name, tmp / name)
    return tmp / name


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def corrupt_set(shared: Path, tmp: Path) -> list[str]:
    (copy(shared, tmp, "set") / "set.parquet").write_bytes(b"not parquet at all")
    return ["evaluate", f"evaluate.set={tmp / 'set'}"]


def truncated_set(shared: Path, tmp: Path) -> list[str]:
    truncate(copy(shared, tmp, "set") / "set.parquet")
    return ["evaluate", f"evaluate.set={tmp / 'set'}"]


def truncated_dataset(shared: Path, tmp: Path) -> list[str]:
    truncate(next((copy(shared, tmp, "parquet") / "train").glob("part-*.parquet")))
    return ["evaluate", "method=random", "dataset=parquet", f"dataset.uri={tmp / 'parquet'}"]


def corrupt_manifest(shared: Path, tmp: Path) -> list[str]:
    (copy(shared, tmp, "store") / "manifest.json").write_text("{not json")
    return ["distill", f"experts.store={tmp / 'store'}"]


def corrupt_shard(shared: Path, tmp: Path) -> list[str]:
    truncate(next(copy(shared, tmp, "store").glob("expert-*.arrow")))
    return ["distill", f"experts.store={tmp / 'store'}"]


def store_for(field: str, value) -> Callable[[Path, Path], list[str]]:
    def setup(shared: Path, tmp: Path) -> list[str]:
        manifest = copy(shared, tmp, "store") / "manifest.json"
        data = json.loads(manifest.read_text())
        data["meta"][field] = value
        manifest.write_text(json.dumps(data))
        return ["distill", f"experts.store={tmp / 'store'}"]
    return setup


def args(*argv: str) -> Callable[[Path, Path], list[str]]:
    return lambda shared, tmp: list(argv)


def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(key, "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()  # the credentials of earlier cases' filesystems


# name: (argv builder, exit status, text the one line must contain, environment change)
CASES = {
    "unknown stage": (args("destill"), 2, "unknown stage 'destill'", None),
    "unknown dataset": (args("evaluate", "dataset=imagenet22k"), 2, "unknown dataset 'imagenet22k'", None),
    "unknown model": (args("evaluate", "model=lenet"), 2, "unknown model 'lenet'", None),
    "unknown evaluate model": (args("evaluate", "evaluate.models=[lenet]"), 2, "unknown model 'lenet'", None),
    "compile not a list": (args("evaluate", "evaluate.compile=true"), 2, "evaluate.compile must be a list", None),
    "a width for alexnet": (args("evaluate", "evaluate.models=[convnet,alexnet]", "evaluate.width=16"), 2,
                            "evaluate.width=16 for alexnet, which has one width", None),
    "evaluate.width=0": (args("evaluate", "evaluate.models=[resnet18]", "evaluate.width=0"), 2,
                         "evaluate.width must be", None),
    "unknown method": (args("evaluate", "method=dc"), 2, "unknown method 'dc'", None),
    "method in the wrong stage": (args("distill", "method=ddoq"), 2, "method 'ddoq' does not run in stage 'distill'", None),
    "unknown key": (args("evaluate", "evaluate.epoch=3"), 2, "evaluate.epoch", None),
    "unknown distill.init": (args("distill", "distill.init=bogus"), 2, "unknown distill.init 'bogus'", None),
    "unknown distill.unroll": (args("distill", "distill.unroll=recursive"), 2, "unknown distill.unroll 'recursive'", None),
    "unknown distill.window": (args("distill", "distill.window=late"), 2, "unknown distill.window 'late'", None),
    "unknown distill.perturb_mode": (args("distill", "distill.perturb_mode=layer"), 2,
                                     "unknown distill.perturb_mode 'layer'", None),
    "unknown quantize.encoder": (args("quantize", "method=ddoq", "quantize.encoder=nope"), 2,
                                 "unknown quantize.encoder 'nope'", None),
    "unknown tune.scheduler": (args("tune", "workers=1", "tune.scheduler=hyperband"), 2,
                               "unknown tune.scheduler 'hyperband'", None),
    "ipc=0": (args("evaluate", "ipc=0"), 2, "ipc must be a positive integer, got 0", None),
    "workers=-1": (args("distill", "workers=-1"), 2, "workers must be an integer >= 0, got -1", None),
    "experts.epochs=0": (args("experts", "experts.epochs=0"), 2, "experts.epochs must be positive", None),
    "unknown experts.variant": (args("experts", "experts.variant=sam"), 2,
                                "unknown experts.variant 'sam'; choose one of plain, smooth, ftd", None),
    "GSAM rho_min above rho_max": (args("experts", "experts.variant=ftd", "experts.gsam_rho_min=0.1"), 2,
                                   "experts.gsam_rho_min must lie in [0, gsam_rho_max]", None),
    "negative GSAM alpha": (args("experts", "experts.variant=ftd", "experts.gsam_alpha=-0.1"), 2, "alpha -0.1", None),
    "GSAM rho range at a constant lr": (args("experts", "method=datm", "experts.gsam_rho_max=0.05"), 2,
                                        "experts.gsam_rho_min 0.01 must equal gsam_rho_max 0.05 at a constant lr", None),
    "unknown experts.form": (args("experts", "experts.form=chord"), 2, "unknown experts.form 'chord'", None),
    "one waypoint": (args("experts", "experts.form=waypoints", "experts.waypoints=1"), 2,
                     "experts.waypoints must be in [2, 4] for 3 epochs, got 1", None),
    "float starts on a full store": (lambda shared, tmp: ["distill", "distill.continuous_start=true",
                                                          f"experts.store={shared / 'store'}"], 2,
                                     "distill.continuous_start needs an expert store read at float epochs", None),
    "evaluate.num_models=0": (args("evaluate", "evaluate.num_models=0"), 2, "evaluate.num_models", None),
    "start window beyond the experts": (args("distill", "distill.max_start_epoch=9"), 2, "must lie within experts.epochs", None),
    "pca latent_dim above the image size": (args("quantize", "method=ddoq", "quantize.encoder=pca",
                                                 "quantize.latent_dim=100"), 2, "quantize.latent_dim=100 exceeds", None),
    "data without data.out": (args("data"), 2, "raydd data needs data.out", None),
    "streaming a dataset without shards": (args("experts", "loader.mode=stream"), 2,
                                           "loader.mode=stream reads Parquet shards", None),
    "unknown loader mode": (args("experts", "loader.mode=bogus"), 2, "unknown loader.mode 'bogus'", None),
    "stand-in of no images per class": (lambda shared, tmp: ["data", "dataset=imagenet1k_standin",
                                                              "dataset.images_per_class=0", f"data.out={tmp / 'out'}"], 2,
                                        "dataset.images_per_class must be an integer >= 1, got 0", None),
    "stand-in of one class": (lambda shared, tmp: ["data", "dataset=imagenet1k_standin", "dataset.num_classes=1",
                                                   f"data.out={tmp / 'out'}"], 2,
                              "dataset.num_classes must be an integer >= 2, got 1", None),
    "stand-in read before raydd data": (args("evaluate", "method=random", "dataset=imagenet1k_standin"), 2,
                                        "write it first with `raydd data dataset=imagenet1k_standin data.out=<uri>`", None),
    "config dir without config.yaml": (args("evaluate"), 2, "holds no config.yaml",
                                       lambda mp, tmp: mp.setenv("RAYDD_CONFIG_DIR", str(tmp))),
    "read-only output": (args("evaluate", "storage.root=/proc/raydd-runs"), 2, "storage /proc/raydd-runs is unreachable", None),
    "wrong bucket": (args("evaluate", "storage.root=s3://no-such-bucket/runs"), 2, "bucket 'no-such-bucket'", None),
    "no credentials": (args("evaluate", f"storage.root=s3://{BUCKET}/runs"), 2, "NoCredentialsError",
                       lambda mp, tmp: no_credentials(mp)),
    "distill before experts": (args("distill"), 1, "no expert trajectories at", None),
    "evaluate before the set exists": (args("evaluate", "method=mtt"), 1, "no distilled set at", None),
    "evaluate.set that does not exist": (lambda shared, tmp: ["evaluate", f"evaluate.set={tmp / 'nowhere'}"], 1,
                                         "no distilled set at", None),
    "corrupt set": (corrupt_set, 1, "corrupt distilled set", None),
    "truncated set Parquet": (truncated_set, 1, "corrupt distilled set", None),
    "truncated dataset Parquet": (truncated_dataset, 1, "corrupt Parquet shard", None),
    "corrupt manifest": (corrupt_manifest, 1, "corrupt trajectory manifest", None),
    "corrupt shard": (corrupt_shard, 1, "corrupt trajectory shard", None),
    "store made for another dataset": (store_for("dataset", {"name": "mnist"}), 2, "was made for mnist", None),
    "store made for another model": (store_for("model", {"name": "resnet18", "norm": "instance"}), 2,
                                     "was made for digits with resnet18", None),
    "ipc above a class size": (args("evaluate", "method=random", "ipc=1000"), 1, "fewer than ipc=1000", None),
    "store of other expert settings": (lambda shared, tmp: ["experts", "experts.lr=0.5",
                                                            f"experts.store={copy(shared, tmp, 'store')}"], 1,
                                       "written with a different configuration", None),
}


def checksums(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_changes_nothing(name, shared, s3_endpoint, tmp_path, monkeypatch, capsys):  # noqa: F811
    build, status, text, env = CASES[name]
    argv = build(shared, tmp_path)
    if env:
        env(monkeypatch, tmp_path)
    root = [] if any(a.startswith("storage.root=") for a in argv) else [f"storage.root={tmp_path / 'runs'}"]
    before = checksums(shared, tmp_path)
    code = main([argv[0], *TINY, *root, *argv[1:]])
    out, err = capsys.readouterr()
    err = raydd_stderr(err)
    assert err.startswith("raydd: error: ") and err.count("\n") == 1, err
    assert text in err, err
    assert "Traceback" not in out + err
    assert code == status, err
    assert checksums(shared, tmp_path) == before
