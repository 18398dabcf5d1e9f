"""imagenet1k_standin: written by ``raydd data`` one Ray task per shard, the same bytes on every run, class-mixed,
balanced, separable and about as incompressible as natural images."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from s3_fixtures import ray_session  # noqa: F401  (fixture)

from raydd.cli import main
from raydd.config import compose
from raydd.data import parquet, standin
from raydd.data.registry import IMAGENET_MEAN, check_available, load_split
from raydd.storage.fs import resolve

SMALL = {"num_classes": 10, "image_size": 16, "images_per_class": 20, "test_per_class": 5, "seed": 0}
ROWS_PER_SHARD = 64
ARGV = ["data", "dataset=imagenet1k_standin", *(f"dataset.{k}={v}" for k, v in SMALL.items()),
        f"data.rows_per_shard={ROWS_PER_SHARD}"]


@pytest.fixture(scope="module")
def written(tmp_path_factory, ray_session) -> tuple[Path, str]:  # noqa: F811
    """The small stand-in written twice, to ``a/`` and ``b/``; and what the first run printed."""
    root = tmp_path_factory.mktemp("standin")
    printed = io.StringIO()
    for out in ("a", "b"):
        with contextlib.redirect_stdout(printed if out == "a" else io.StringIO()):
            assert main([*ARGV, f"data.out={root / out}", f"storage.root={root / 'runs'}"]) == 0
    return root, printed.getvalue()


def _cfg(uri: Path) -> dict:
    return compose(["dataset=imagenet1k_standin", f"dataset.uri={uri}"])["dataset"]


def test_shards_rows_and_metadata(written):
    root, printed = written
    rows = {split: [pq.ParquetFile(p).metadata.num_rows for p in sorted((root / "a" / split).iterdir())]
            for split in ("train", "test")}
    assert rows == {"train": [64, 64, 64, 8], "test": [50]}
    meta = parquet.read_meta(resolve(str(root / "a")), "train")
    assert meta == {"raydd.format": parquet.FORMAT, "channels": 3, "height": 16, "width": 16, "num_classes": 10}
    assert f"imagenet1k_standin (16px): 200 train and 50 test images → {root / 'a'}" in printed
    assert f"dataset=imagenet1k_standin dataset.uri={root / 'a'}" in printed


def test_a_rerun_writes_identical_bytes(written):
    root, _ = written
    files = sorted(p.relative_to(root / "a") for p in (root / "a").rglob("*.parquet"))
    assert files == sorted(p.relative_to(root / "b") for p in (root / "b").rglob("*.parquet")) and len(files) == 5
    assert all((root / "a" / f).read_bytes() == (root / "b" / f).read_bytes() for f in files)
    other = standin.generate_shard({**SMALL, "seed": 1}, "train", 0, ROWS_PER_SHARD)
    assert not torch.equal(other.images, load_split(_cfg(root / "a"), "train").images[:ROWS_PER_SHARD])


def test_read_back_balanced_and_class_mixed(written):
    cfg = _cfg(written[0] / "a")
    spec = check_available(cfg)
    assert (spec.num_classes, spec.channels, spec.image_size, spec.mean) == (10, 3, 16, IMAGENET_MEAN)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.images.shape == (200, 3, 16, 16) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [20] * 10 and torch.bincount(test.labels).tolist() == [5] * 10
    for start in range(0, 192, ROWS_PER_SHARD):  # each full shard mixes (nearly) every class, like a shuffled dataset
        assert len(set(train.labels[start:start + ROWS_PER_SHARD].tolist())) >= 8
    assert train.images.float().std() > 30  # not flat colours


def test_classes_are_separable(written):
    """Nearest class mean on raw pixels, fitted on train, on test: far above chance (0.1); measured 0.66."""
    cfg = _cfg(written[0] / "a")
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    x, xt = train.images.flatten(1).float(), test.images.flatten(1).float()
    means = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xt, means).argmin(1) == test.labels).float().mean().item()
    assert accuracy >= 0.4, accuracy


def test_a_shard_is_a_pure_function_and_a_class_one_template():
    a, b = (standin.generate_shard(SMALL, "train", 1, ROWS_PER_SHARD) for _ in range(2))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, standin.generate_shard(SMALL, "train", 2, ROWS_PER_SHARD).images)
    assert a.labels.tolist() == standin.shard_labels(0, "train", 10, 20, 1, ROWS_PER_SHARD).tolist()
    every = standin.class_templates(0, np.arange(10), 16)
    assert np.array_equal(standin.class_templates(0, np.array([3, 7]), 16), every[[3, 7]])
    assert len({t.tobytes() for t in every}) == 10


def test_an_image_is_about_as_incompressible_as_a_natural_one(tmp_path):
    """At 64 px a zstd Parquet row stays near the raw 12,288 bytes (measured 11.9 KB), as ImageNet's do."""
    data = standin.generate_shard({**SMALL, "image_size": 64}, "train", 0, 200)
    parquet.write_shard(data, resolve(str(tmp_path)), "train", 0, 10)
    per_image = (tmp_path / "train" / "part-00000.parquet").stat().st_size / len(data)
    assert 11_000 < per_image <= 12_288 + 100, per_image
