"""The trajectory shard format and store, on a local directory and on a moto S3 server."""

from __future__ import annotations

import os

import pytest
import torch
from pyarrow.fs import FileSelector
from s3_fixtures import BUCKET, s3_endpoint  # noqa: F401  (fixture)

from raydd.storage.fs import resolve
from raydd.storage.trajectory import (CorruptShardError, ShardRows, StoreMismatchError, TrajectoryStore, add_entry,
                                      committed, config_hash, open_manifest, remove_temp_files, shard_name, write_manifest,
                                      write_shard)

LAYOUT = [["w", [6, 5]], ["b", [6]]]
EPOCHS = 4


def meta(dtype: str = "float32", lr: float = 0.01) -> dict:
    config = {"experts": {"lr": lr, "dtype": dtype, "form": "full"}, "seed": 0}
    return {"form": "full", "dtype": dtype, "variant": "plain", "epochs": EPOCHS, "dataset": {"name": "synthetic"},
            "model": {"name": "linear"}, "layout": LAYOUT, "zca": False, "config_hash": config_hash(config),
            "config": config}


def snapshots(expert_id: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(expert_id)
    return torch.randn(EPOCHS + 1, 36, generator=g).cumsum(0)


def write_store(loc, dtype: str = "float32", experts: int = 3) -> dict:
    m = meta(dtype)
    manifest = open_manifest(loc, m)
    for i in range(experts):
        snaps = snapshots(i)
        rows = ShardRows(i, [float(e) for e in range(EPOCHS + 1)], list(snaps), [None] * (EPOCHS + 1),
                         [None, *[1.0 / (e + 1) for e in range(EPOCHS)]], [0.1 * e for e in range(EPOCHS + 1)])
        add_entry(manifest, write_shard(loc, rows, {**m, "seed": i}, dtype))
        write_manifest(loc, manifest)
    return manifest


@pytest.fixture(params=["local", "s3"])
def store_loc(request, tmp_path):
    if request.param == "local":
        return resolve(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return resolve(f"s3://{BUCKET}/{tmp_path.name}/store", endpoint)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_is_bit_exact(store_loc, dtype):
    write_store(store_loc, dtype)
    store = TrajectoryStore.open(store_loc)
    assert store.experts == [0, 1, 2] and store.epochs == EPOCHS and store.layout.numel == 36
    assert store.meta["dtype"] == dtype and store.zca() is None
    for i in store.experts:
        expected = snapshots(i).to(getattr(torch, dtype)).float()
        for e in range(EPOCHS + 1):
            got = store.params(i, e)
            assert got.dtype == torch.float32 and torch.equal(got, expected[e])
        assert torch.equal(torch.stack(store.read(i).params), expected)
        m = store.metrics(i)
        assert m["epoch"] == [0.0, 1.0, 2.0, 3.0, 4.0] and m["train_loss"][0] is None
        assert m["test_acc"][-1] == pytest.approx(0.4)
    assert store.verify() == 3
    listing = sorted(i.base_name for i in store_loc.fs.get_file_info(FileSelector(store_loc.path)))
    assert listing == [shard_name(i) for i in range(3)] + ["manifest.json"]


def test_final_test_accuracy_is_the_mean_of_each_experts_last_measured_point(tmp_path):
    loc = resolve(str(tmp_path))
    manifest = write_store(loc, experts=2)
    store = TrajectoryStore.open(loc)
    assert store.final_test_accuracy() == pytest.approx(0.4)
    # an expert whose last point went unmeasured counts with its last measured one
    m = meta()
    rows = ShardRows(2, [float(e) for e in range(EPOCHS + 1)], list(snapshots(2)), [None] * (EPOCHS + 1),
                     [None] * (EPOCHS + 1), [0.1, 0.7, None, None, None])
    add_entry(manifest, write_shard(loc, rows, {**m, "seed": 2}, "float32"))
    write_manifest(loc, manifest)
    assert TrajectoryStore.open(loc).final_test_accuracy() == pytest.approx((0.4 + 0.4 + 0.7) / 3)
    for i in range(3):  # none measured at all
        rows = ShardRows(i, [float(e) for e in range(EPOCHS + 1)], list(snapshots(i)), [None] * (EPOCHS + 1),
                         [None] * (EPOCHS + 1), [None] * (EPOCHS + 1))
        add_entry(manifest, write_shard(loc, rows, {**m, "seed": i}, "float32"))
    write_manifest(loc, manifest)
    assert TrajectoryStore.open(loc).final_test_accuracy() is None


def test_float_epoch_and_unknown_expert_are_clear_errors(tmp_path):
    loc = resolve(str(tmp_path))
    write_store(loc, experts=1)
    store = TrajectoryStore.open(loc)
    with pytest.raises(ValueError, match="integer epochs 0..4"):
        store.params(0, 1.5)
    with pytest.raises(KeyError, match="expert 7 is not in store"):
        store.params(7, 0)


def test_cache_is_bounded_and_returns_copies(tmp_path):
    loc = resolve(str(tmp_path))
    write_store(loc)
    store = TrajectoryStore.open(loc, cache_bytes=3 * 36 * 4)
    for e in range(EPOCHS + 1):
        store.params(0, e)
    assert store._cache.bytes <= 3 * 36 * 4 and len(store._cache.items) == 3
    got = store.params(0, EPOCHS)
    got.add_(1.0).requires_grad_()
    assert torch.equal(store.params(0, EPOCHS), snapshots(0)[EPOCHS])


def corrupt(path: str, how: str, params: torch.Tensor) -> None:
    data = bytearray(open(path, "rb").read())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip one byte inside a row's params
        at = bytes(data).index(params.numpy().tobytes())
        assert at > 0
        data[at + 17] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_shard_is_named(tmp_path, how):
    loc = resolve(str(tmp_path))
    write_store(loc)
    path = str(tmp_path / shard_name(1))
    corrupt(path, how, snapshots(1)[EPOCHS])
    store = TrajectoryStore.open(loc)
    with pytest.raises(CorruptShardError, match=f"corrupt trajectory shard .*{shard_name(1)}"):
        store.verify()
    with pytest.raises(CorruptShardError, match=f"corrupt trajectory shard .*{shard_name(1)}"):
        for e in range(EPOCHS + 1):
            store.params(1, e)
    assert torch.equal(store.params(0, 2), snapshots(0)[2])


def test_config_mismatch_is_an_error_naming_the_key(tmp_path):
    loc = resolve(str(tmp_path))
    write_store(loc)
    with pytest.raises(StoreMismatchError, match=r"experts\.lr: 0\.01 in the store, 0\.02 now"):
        open_manifest(loc, meta(lr=0.02))
    assert len(open_manifest(loc, meta())["shards"]) == 3


def test_committed_needs_the_file_and_temp_files_are_removed(tmp_path):
    loc = resolve(str(tmp_path))
    manifest = write_store(loc)
    os.remove(tmp_path / shard_name(2))
    (tmp_path / ".tmp-abc-expert-00002.arrow").write_bytes(b"partial")
    assert sorted(committed(loc, manifest)) == [0, 1]
    assert [os.path.basename(p) for p in remove_temp_files(loc)] == [".tmp-abc-expert-00002.arrow"]
    assert not (tmp_path / ".tmp-abc-expert-00002.arrow").exists()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trajectory store .*run `raydd experts` first"):
        TrajectoryStore.open(str(tmp_path / "nothing"))
