"""Splits in memory and streamed through Ray Data: the same batches for the same seed, bounded reads, named errors."""

import sys

import numpy as np
import pytest
import ray
import torch

from s3_fixtures import s3_endpoint  # noqa: F401  (moto S3 on loopback)

from raydd.config import compose
from raydd.core.images import ImageData
from raydd.data import parquet
from raydd.data.registry import open_split
from raydd.data.split import epoch_order, forget_shared_pages, rebatch, shard_runs
from raydd.errors import CorruptError
from raydd.specs import ConfigError, LoaderSpec
from raydd.storage.fs import resolve

CLASSES, SHAPE = 5, (3, 6, 6)


@pytest.fixture(scope="module")
def ray_session(s3_endpoint):  # noqa: F811  (S3 env first, so Ray's workers inherit it)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def loader(mode: str, shuffle_shards: int = 2) -> LoaderSpec:
    return LoaderSpec(mode=mode, memory_limit_gb=2.0, shuffle_shards=shuffle_shards, prefetch_blocks=2)


def write_dataset(uri: str, rows: int = 230, rows_per_shard: int = 40) -> ImageData:
    """A small class-mixed dataset: pixel values encode the row (so equal batches mean equal rows)."""
    gen = torch.Generator().manual_seed(1)
    data = ImageData(torch.randint(0, 256, (rows, *SHAPE), generator=gen, dtype=torch.uint8),
                     torch.randint(0, CLASSES, (rows,), generator=gen))
    for split in ("train", "test"):
        parquet.write_split(data, resolve(uri), split, CLASSES, rows_per_shard)
    return data


def dataset_cfg(uri: str) -> dict:
    return compose(["dataset=parquet", f"dataset.uri={uri}"])["dataset"]


def same(a: ImageData, b: ImageData) -> bool:
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_epoch_order_is_a_permutation_shuffled_within_runs():
    sizes = [4, 3, 5, 2]
    gen = torch.Generator().manual_seed(0)
    runs = shard_runs(len(sizes), 2, gen)
    order = epoch_order(sizes, runs, gen)
    assert sorted(order.tolist()) == list(range(14))
    assert sorted(s for run in runs for s in run) == [0, 1, 2, 3] and all(len(r) == 2 for r in runs)
    offsets = [0, 4, 7, 12, 14]
    first = {r for s in runs[0] for r in range(offsets[s], offsets[s + 1])}
    assert set(order[:len(first)].tolist()) == first  # the first run's rows come first, in any order


def test_one_shard_is_a_plain_randperm():
    """A dataset without shards draws exactly torch.randperm(n): in-memory experts keep their trajectories."""
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(epoch_order([50], shard_runs(1, 2, gen), gen), torch.randperm(50, generator=ref))


def test_rebatch_keeps_batch_boundaries():
    chunks = [ImageData(torch.full((n, 1, 1, 1), i, dtype=torch.uint8), torch.zeros(n)) for i, n in enumerate([3, 5, 1])]
    sizes = [len(b) for b in rebatch(iter(chunks), 4)]
    assert sizes == [4, 4, 1]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_streamed_and_in_memory_give_the_same_batches(tmp_path, ray_session, where):
    uri = str(tmp_path / "ds") if where == "local" else "s3://raydd-test/split-ds"
    data = write_dataset(uri)
    cfg = dataset_cfg(uri)
    memory, stream = open_split(cfg, loader("memory"), "train"), open_split(cfg, loader("stream"), "train")
    assert not memory.streamed and stream.streamed and torch.equal(memory.labels, stream.labels)
    for seed in (0, 1):
        a = list(memory.epoch(torch.Generator().manual_seed(seed), 32))
        b = list(stream.epoch(torch.Generator().manual_seed(seed), 32))
        assert len(a) == len(b) == 8 and all(same(x, y) for x, y in zip(a, b))
    assert stream.bytes_read == 2 * sum(stream.shards.file_bytes)
    # not a replay of storage order: the epoch is shuffled
    assert not torch.equal(a[0].images, data.images[:32])
    assert same(ImageData(torch.cat([x.images for x in stream.batches(64)]), torch.cat([x.labels for x in stream.batches(64)])), data)
    index = torch.tensor([200, 3, 41, 3, 117])
    assert same(stream.gather(index), data.subset(index)) and same(memory.gather(index), data.subset(index))
    got, where_from = stream.read([1, 3])
    mask = (data.labels == 1) | (data.labels == 3)
    assert same(got, data.subset(mask)) and torch.equal(where_from, mask.nonzero().squeeze(1))


def test_class_filtered_split_streams_only_those_classes(tmp_path, ray_session):
    data = write_dataset(str(tmp_path / "ds"))
    cfg = dataset_cfg(str(tmp_path / "ds"))
    memory = open_split(cfg, loader("memory", 3), "train", classes=[0, 4])
    stream = open_split(cfg, loader("stream", 3), "train", classes=[0, 4])
    keep = (data.labels == 0) | (data.labels == 4)
    assert torch.equal(stream.labels, data.labels[keep])
    a = list(memory.epoch(torch.Generator().manual_seed(5), 16))
    b = list(stream.epoch(torch.Generator().manual_seed(5), 16))
    assert len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def test_auto_streams_by_size(tmp_path, ray_session, capsys):
    write_dataset(str(tmp_path / "ds"))
    cfg = dataset_cfg(str(tmp_path / "ds"))
    small = LoaderSpec(mode="auto", memory_limit_gb=1.0, shuffle_shards=2, prefetch_blocks=2)
    assert not open_split(cfg, small, "train").streamed
    assert "in memory" in capsys.readouterr().out
    tiny = LoaderSpec(mode="auto", memory_limit_gb=1e-6, shuffle_shards=2, prefetch_blocks=2)
    assert open_split(cfg, tiny, "train").streamed
    assert "streamed from 6 Parquet shards through Ray Data" in capsys.readouterr().out


def test_stream_needs_parquet():
    with pytest.raises(ConfigError, match="loader.mode=stream reads Parquet shards"):
        open_split({"name": "digits", "root": None, "uri": None}, loader("stream"), "train")


def test_corrupt_shard_met_mid_stream_is_named(tmp_path, ray_session):
    write_dataset(str(tmp_path / "ds"))
    split = open_split(dataset_cfg(str(tmp_path / "ds")), loader("stream"), "train")
    bad = tmp_path / "ds" / "train" / "part-00003.parquet"  # breaks after the split was opened
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CorruptError, match=r"^corrupt Parquet shard .*part-00003\.parquet: "):
        list(split.batches(16))


def shmem_kb() -> int:
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("RssShmem:")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise")
def test_consumed_blocks_leave_the_process_resident_memory_and_keep_their_data(ray_session):
    import pyarrow as pa

    values = np.arange(64 * 2**20, dtype=np.uint8) * 7
    table = ray.get(ray.put(pa.table({"image": pa.array(values)})))  # zero copy: in the object store's mapping
    assert int(pa.compute.sum(table.column("image")).as_py()) == int(values.sum(dtype=np.int64))  # every page read
    touched = shmem_kb()
    forget_shared_pages(table)
    assert shmem_kb() < touched - 60_000  # the 64 MB are no longer resident in this process
    assert np.array_equal(table.column("image").to_numpy(), values)  # and read back from the store intact
    private = pa.table({"image": pa.array(values)})  # a private copy: left alone (MADV_DONTNEED would zero it)
    forget_shared_pages(private)
    assert np.array_equal(private.column("image").to_numpy(), values)
