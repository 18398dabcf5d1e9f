"""Dataset sources, normalisation, the Parquet image format (local and S3), ``raydd data``, the distilled-set format."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from s3_fixtures import s3_endpoint  # noqa: F401  (moto S3 on loopback)

from raydd.cli import main
from raydd.config import compose
from raydd.core.images import DatasetSpec, ImageData, denormalize, normalize
from raydd.core.zca import ZCA
from raydd.data import parquet
from raydd.data.registry import check_available, dataset_spec, load_dataset, load_split
from raydd.storage.distilled import DistilledSet, load_set, save_set
from raydd.storage.fs import resolve

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; S3 credentials are set first so its workers inherit them."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _ds(name, **extra):
    return {"name": name, "root": None, "uri": None, **extra}


def test_digits_shapes_and_classes():
    spec, train, test = load_dataset(_ds("digits"))
    assert (spec.num_classes, spec.channels, spec.image_size) == (10, 1, 8)
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())


def test_fashion_mnist_shapes_and_classes():
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist)")
    spec, train, test = load_dataset(_ds("fashion_mnist"))
    assert (spec.num_classes, spec.channels, spec.image_size) == (10, 1, 28)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10


def test_mnist_shapes_and_classes():
    pytest.importorskip("pureml")
    test = load_split(_ds("mnist"), "test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert set(test.labels.tolist()) == set(range(10))


def test_normalize_and_denormalize():
    spec = DatasetSpec("t", 2, 3, 4, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    x = normalize(images, spec)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[:, 1], (images[:, 1] / 255.0 - 0.25) / 0.25)
    torch.testing.assert_close(denormalize(x, spec), images / 255.0)
    assert denormalize(torch.full((1, 3, 1, 1), 100.0), spec).max() == 1.0


def _write_cifar10(root: Path, n_train: int = 20, n_test: int = 10) -> tuple[np.ndarray, list[int]]:
    """A tiny stand-in in torchvision's own on-disk format (pickled batch dicts, as torchvision reads them)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name, n in [*[(f"data_batch_{i}", n_train) for i in range(1, 6)], ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        first = first or (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return first


def test_cifar10_loader_on_a_stand_in(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # md5s are of the real files
    data, labels = _write_cifar10(tmp_path)
    spec, train, test = load_dataset(_ds("cifar10", root=str(tmp_path)))
    assert (spec.num_classes, spec.image_size) == (10, 32)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert torch.equal(train.images[:20], torch.from_numpy(data).view(20, 3, 32, 32))
    assert train.labels[:20].tolist() == labels


def _write_image_folder(root: Path) -> None:
    """3 classes of small RGB PNGs of assorted sizes; ``val/`` lacks class ``c2`` (labels must follow ``train/``)."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", (5, 4, 6)), ("val", (3, 2, 0))):
        for c, n in enumerate(counts):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _convert(tmp_path, out, *extra):
    root = tmp_path / "tiny"
    _write_image_folder(root)
    argv = ["data", "dataset=tiny_imagenet", f"dataset.root={root}", "dataset.image_size=16", f"data.out={out}",
            "data.rows_per_shard=4", f"storage.root={tmp_path / 'runs'}", *extra]
    assert main(argv) == 0
    return _ds("tiny_imagenet", root=str(root), image_size=16)


def _assert_same(a: ImageData, b: ImageData) -> None:
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_image_folder_to_parquet_bit_exact(tmp_path, ray_session, capsys):
    out = tmp_path / "shards"
    source = _convert(tmp_path, out)
    assert f"dataset=tiny_imagenet dataset.uri={out}" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"part-0000{i}.parquet" for i in range(4)]
    direct = {split: load_split(source, split) for split in ("train", "test")}
    assert direct["train"].images.shape == (15, 3, 16, 16)
    assert direct["test"].labels.tolist() == [0, 0, 0, 1, 1]

    cfg = compose(["dataset=parquet", f"dataset.uri={out}"])["dataset"]
    spec = check_available(cfg)
    assert (spec.num_classes, spec.channels, spec.image_size) == (200, 3, 16)
    order = torch.from_numpy(np.random.default_rng(0).permutation(15))  # data.shuffle_seed=0: class-mixed shards
    _assert_same(load_split(cfg, "train"), direct["train"].subset(order))
    _assert_same(load_split(cfg, "test"), direct["test"])
    assert len(set(load_split(cfg, "train").labels[:4].tolist())) > 1
    named = compose(["dataset=tiny_imagenet", f"dataset.uri={out}"])["dataset"]
    assert dataset_spec(named).mean == (0.485, 0.456, 0.406)
    assert load_split(named, "train", classes=[1]).labels.tolist() == [1] * 4


def test_image_folder_to_parquet_on_s3(tmp_path, ray_session, s3_endpoint, monkeypatch):
    uri = "s3://raydd-test/tiny-16"
    source = _convert(tmp_path, uri, f"storage.endpoint_url={s3_endpoint}")
    monkeypatch.setenv("RAYDD_S3_ENDPOINT_URL", s3_endpoint)
    cfg = compose(["dataset=parquet", f"dataset.uri={uri}"])["dataset"]
    assert len(parquet.shard_paths(resolve(uri), "train")) == 4
    order = torch.from_numpy(np.random.default_rng(0).permutation(15))
    _assert_same(load_split(cfg, "train"), load_split(source, "train").subset(order))
    _assert_same(load_split(cfg, "test"), load_split(source, "test"))


def test_in_memory_source_to_parquet_and_s3(tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("RAYDD_S3_ENDPOINT_URL", s3_endpoint)
    for name, key in CREDENTIALS.items():
        monkeypatch.setenv(name, key)
    uri = "s3://raydd-test/digits"
    assert main(["data", "dataset=digits", f"data.out={uri}", "data.rows_per_shard=1000",
                 f"storage.root={tmp_path}"]) == 0
    cfg = compose(["dataset=digits", f"dataset.uri={uri}"])["dataset"]
    assert len(parquet.shard_paths(resolve(uri), "train")) == 2
    for split in ("train", "test"):
        _assert_same(load_split(cfg, split), load_split(_ds("digits"), split))


def test_corrupt_shard_is_named(tmp_path):
    loc = resolve(str(tmp_path))
    data = load_split(_ds("digits"), "test")
    assert parquet.write_split(data, loc, "test", 10, rows_per_shard=100) == 4
    bad = tmp_path / "test" / "part-00002.parquet"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(ValueError, match="corrupt Parquet shard .*part-00002.parquet"):
        parquet.read_split(loc, "test")
    first = tmp_path / "test" / "part-00000.parquet"
    first.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="corrupt Parquet shard .*part-00000.parquet"):
        parquet.read_meta(loc, "test")


def test_distilled_set_round_trip(tmp_path):
    spec = DatasetSpec("t", 3, 3, 4, (0.5,) * 3, (0.25,) * 3)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 4, 4, generator=g)
    ds = DistilledSet(images, torch.tensor([0, 0, 1, 1, 2, 2]), soft_labels=torch.randn(6, 3, generator=g),
                      weights=torch.rand(6, generator=g), lr=0.0123, zca=ZCA.fit(torch.randn(50, 3, 4, 4, generator=g)),
                      meta={"method": "ddoq", "ipc": 2, "dataset": "t"})
    loc = resolve(str(tmp_path / "set"))
    save_set(ds, loc, spec)
    assert (tmp_path / "set" / "grid.png").stat().st_size > 0
    back = load_set(loc)
    for name in ("images", "labels", "soft_labels", "weights"):
        assert torch.equal(getattr(back, name), getattr(ds, name)), name
    assert back.lr == ds.lr and back.meta == ds.meta
    for name in ("mean", "whiten", "unwhiten"):
        assert torch.equal(getattr(back.zca, name), getattr(ds.zca, name))

    hard = DistilledSet(images, torch.arange(6) % 3)
    save_set(hard, resolve(str(tmp_path / "hard")))
    back = load_set(resolve(str(tmp_path / "hard")))
    assert back.soft_labels is None and back.weights is None and back.lr is None and back.zca is None
    with pytest.raises(FileNotFoundError, match="missing set.parquet"):
        load_set(resolve(str(tmp_path / "nowhere")))
