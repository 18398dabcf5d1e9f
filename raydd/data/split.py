"""A split of real images as the stages read it: in memory when small, streamed by Ray Data when not.

Both paths share one definition of an epoch's order (:func:`epoch_order`): the shards in a seeded
order, then the rows shuffled within each run of ``shuffle_shards`` consecutive shards. So for the
same seed they give the same batches, and a streamed epoch holds one run of shards (plus the blocks
Ray Data reads ahead) at a time. A dataset without shards is one shard: a full shuffle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from raydd.core.images import ImageData
from raydd.errors import CorruptError, RunError
from raydd.specs import LoaderSpec


def shard_runs(num_shards: int, shuffle_shards: int, gen: torch.Generator) -> list[list[int]]:
    """The epoch's shard order (seeded; one shard draws nothing), cut into runs of ``shuffle_shards``."""
    order = torch.randperm(num_shards, generator=gen).tolist() if num_shards > 1 else [0]
    return [order[i:i + shuffle_shards] for i in range(0, num_shards, shuffle_shards)]


def epoch_order(sizes: list[int], runs: list[list[int]], gen: torch.Generator) -> Tensor:
    """Global row indices of one epoch: each run's rows (its shards in run order) in a seeded random order."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for run in runs:
        rows = torch.cat([torch.arange(int(offsets[s]), int(offsets[s + 1])) for s in run])
        parts.append(rows[torch.randperm(rows.numel(), generator=gen)])
    return torch.cat(parts)


@dataclass(frozen=True)
class Shards:
    """Where a streamed split's rows are: Parquet files in storage order, their rows (after the class filter)
    and sizes on storage."""

    uri: str
    endpoint_url: str | None
    paths: tuple[str, ...]
    rows: tuple[int, ...]
    file_bytes: tuple[int, ...]
    classes: tuple[int, ...] | None
    shape: tuple[int, int, int]


@dataclass
class Split:
    """A split's labels (always in memory, storage order) and its images: ``data`` in memory, or ``shards``."""

    labels: Tensor
    sizes: list[int]
    loader: LoaderSpec
    data: ImageData | None = None
    shards: Shards | None = None
    bytes_read: int = field(default=0, compare=False)

    @classmethod
    def in_memory(cls, data: ImageData, loader: LoaderSpec, sizes: list[int] | None = None) -> Split:
        """``data`` held whole; ``sizes``: its shards' rows in storage order (default: one shard)."""
        return cls(data.labels, sizes or [len(data)], loader, data=data)

    @property
    def streamed(self) -> bool:
        return self.shards is not None

    def __len__(self) -> int:
        return self.labels.numel()

    def epoch(self, gen: torch.Generator, batch_size: int) -> Iterator[ImageData]:
        """One epoch of uint8 mini-batches in :func:`epoch_order` (the same batches on both paths)."""
        runs = shard_runs(len(self.sizes), self.loader.shuffle_shards, gen)
        order = epoch_order(self.sizes, runs, gen)
        if self.data is not None:
            for start in range(0, order.numel(), batch_size):
                yield self.data.subset(order[start:start + batch_size])
            return
        yield from rebatch(self._shuffled_runs(runs, order), batch_size)

    def batches(self, batch_size: int) -> Iterator[ImageData]:
        """The split in storage order, in mini-batches (a test pass)."""
        if self.data is not None:
            for start in range(0, len(self), batch_size):
                yield self.data.subset(slice(start, start + batch_size))
            return
        yield from rebatch(read_shards(self, list(range(len(self.sizes)))), batch_size)

    def read(self, classes: list[int]) -> tuple[ImageData, Tensor]:
        """All images of ``classes`` (storage order) and their global indices; holds just those in memory."""
        index = torch.isin(self.labels, torch.tensor(classes)).nonzero().squeeze(1)
        return self.gather(index), index

    def gather(self, index: Tensor) -> ImageData:
        """The images at global ``index``, in that order; streaming reads only the shards holding them."""
        if self.data is not None or index.numel() == 0:
            return (self.data or ImageData(torch.empty(0, *self.shards.shape, dtype=torch.uint8),
                                           torch.empty(0, dtype=torch.long))).subset(index)
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        shard_of = torch.from_numpy(np.searchsorted(offsets, index.numpy(), side="right") - 1)
        wanted = torch.unique(shard_of).tolist()
        rows, kept = [], []
        for s, data in zip(wanted, read_shards(self, wanted)):
            mine = torch.unique(index[shard_of == s])
            rows.append(mine)
            kept.append(data.subset(mine - int(offsets[s])))
        return concat(kept).subset(torch.searchsorted(torch.cat(rows), index))

    def _shuffled_runs(self, runs: list[list[int]], order: Tensor) -> Iterator[ImageData]:
        """Each run's rows, read in the epoch's shard order, then indexed by the run's part of ``order``."""
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        stream = read_shards(self, [s for run in runs for s in run])
        done = 0
        for run in runs:
            rows = torch.cat([torch.arange(int(offsets[s]), int(offsets[s + 1])) for s in run])
            buffer = concat([next(stream) for _ in run])
            local = torch.argsort(rows)[torch.searchsorted(torch.sort(rows).values, order[done:done + rows.numel()])]
            done += rows.numel()
            yield buffer.subset(local)


def rebatch(chunks: Iterator[ImageData], batch_size: int) -> Iterator[ImageData]:
    """Consecutive chunks re-cut into batches of ``batch_size`` (the last may be smaller)."""
    carry: ImageData | None = None
    for chunk in chunks:
        data = chunk if carry is None else concat([carry, chunk])
        full = len(data) - len(data) % batch_size
        for start in range(0, full, batch_size):
            yield data.subset(slice(start, start + batch_size))
        carry = data.subset(slice(full, len(data))) if full < len(data) else None
    if carry is not None:
        yield carry


def concat(parts: list[ImageData]) -> ImageData:
    if len(parts) == 1:
        return parts[0]
    return ImageData(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def read_shards(split: Split, shard_ids: list[int]) -> Iterator[ImageData]:
    """Stream whole shards in order through ``ray.data.read_parquet`` (image and label columns, the class filter
    pushed into the read), re-assembled per shard; a shard that fails to read is named in a :class:`CorruptError`."""
    import ray.data
    from ray.data.expressions import col

    from raydd.storage.fs import resolve

    s = split.shards
    loc = resolve(s.uri, s.endpoint_url)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # blocks arrive in the order of the paths
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = False  # v2's file listing asks for a CPU that the calling task already holds
    paths = [s.paths[i] for i in shard_ids]
    pending: list[ImageData] = []
    have, pos = 0, 0
    try:
        ds = ray.data.read_parquet(paths, filesystem=loc.fs, columns=["image", "label"], num_cpus=0,
                                   file_extensions=None, override_num_blocks=len(paths))
        if s.classes is not None:
            ds = ds.filter(expr=col("label").is_in(list(s.classes)), num_cpus=0)
        for block in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=split.loader.prefetch_blocks):
            pending.append(decode(block, s.shape))
            have += len(pending[-1])
            while pos < len(shard_ids) and have >= s.rows[shard_ids[pos]]:
                data, pending, have = split_off(pending, s.rows[shard_ids[pos]])
                split.bytes_read += s.file_bytes[shard_ids[pos]]
                yield check_labels(split, shard_ids[pos], data)
                pos += 1
    except (CorruptError, RunError):
        raise
    except Exception as e:  # a read failed: name the first shard from here on that does not read
        raise unreadable(loc.fs, paths[pos:], e) from e
    if pos < len(shard_ids):
        raise CorruptError(f"Parquet shard {paths[pos]} ended early: expected {s.rows[shard_ids[pos]]} rows")


def decode(block: dict[str, Any], shape: tuple[int, int, int]) -> ImageData:
    """A Ray Data block (numpy) → uint8 ``N×C×H×W`` images and labels."""
    buf = b"".join(block["image"].tolist())
    images = np.frombuffer(buf, dtype=np.uint8).reshape(-1, *shape)
    return ImageData(torch.from_numpy(images.copy()), torch.from_numpy(block["label"].astype(np.int64)))


def split_off(pending: list[ImageData], n: int) -> tuple[ImageData, list[ImageData], int]:
    """The first ``n`` rows of ``pending`` and what remains (with its row count)."""
    data = concat(pending)
    rest = [data.subset(slice(n, len(data)))] if n < len(data) else []
    return data.subset(slice(0, n)), rest, len(data) - n


def check_labels(split: Split, shard: int, data: ImageData) -> ImageData:
    """A streamed shard's labels must be those read when the split was opened (order and content)."""
    start = sum(split.sizes[:shard])
    if not torch.equal(data.labels, split.labels[start:start + split.sizes[shard]]):
        raise CorruptError(f"Parquet shard {split.shards.paths[shard]} changed while it was read (its labels differ)")
    return data


def unreadable(fs, paths: list[str], error: Exception) -> Exception:
    """The :class:`CorruptError` naming the first of ``paths`` that pyarrow cannot read, else a :class:`RunError`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in paths:
        try:
            with fs.open_input_file(path) as f:
                pq.read_table(f, columns=["image", "label"])
        except (pa.ArrowInvalid, OSError) as e:
            return CorruptError(f"corrupt Parquet shard {path}: {str(e).splitlines()[0]}")
    return RunError(f"streaming {paths[0] if paths else 'the split'} failed: {str(error).splitlines()[0]}")
