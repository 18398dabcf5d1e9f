"""A split of real images as the stages read it: in memory when small, streamed by Ray Data when not.

Both paths share one definition of an epoch's order (:func:`epoch_order`): the shards in a seeded
order, then the rows shuffled within each run of ``shuffle_shards`` consecutive shards. So for the
same seed they give the same batches, and a streamed epoch holds one run of shards (plus the blocks
Ray Data reads ahead) at a time. A dataset without shards is one shard: a full shuffle.
"""

from __future__ import annotations

import ctypes
import mmap
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
        yield from rebatch(self._shuffled_runs(runs, order, batch_size), batch_size)

    def batches(self, batch_size: int) -> Iterator[ImageData]:
        """The split in storage order, in mini-batches (a test pass)."""
        if self.data is not None:
            for start in range(0, len(self), batch_size):
                yield self.data.subset(slice(start, start + batch_size))
            return
        chunks = (ImageData(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()))
                  for _, images, labels in stream_segments(self, list(range(len(self.sizes)))))
        yield from rebatch(chunks, batch_size)

    def read(self, classes: list[int]) -> tuple[ImageData, Tensor]:
        """All images of ``classes`` (storage order) and their global indices; holds just those in memory."""
        index = torch.isin(self.labels, torch.tensor(classes)).nonzero().squeeze(1)
        return self.gather(index), index

    def gather(self, index: Tensor) -> ImageData:
        """The images at global ``index``, in that order; streaming reads only the shards holding them."""
        if self.data is not None:
            return self.data.subset(index)
        rows = torch.unique(index)  # sorted
        if not rows.numel():
            return ImageData(torch.empty(0, *self.shards.shape, dtype=torch.uint8), torch.empty(0, dtype=torch.long))
        images = torch.empty(rows.numel(), *self.shards.shape, dtype=torch.uint8)
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        wanted = np.unique(np.searchsorted(offsets, rows.numpy(), side="right") - 1).tolist()
        for start, block, _ in stream_segments(self, wanted):
            lo, hi = torch.searchsorted(rows, torch.tensor([start, start + len(block)]))
            images.numpy()[lo:hi] = block[(rows[lo:hi] - start).numpy()]
        return ImageData(images, self.labels[rows]).subset(torch.searchsorted(rows, index))

    def _shuffled_runs(self, runs: list[list[int]], order: Tensor, batch_size: int) -> Iterator[ImageData]:
        """Each run's shards decoded into one buffer (in the epoch's shard order), then served in the run's part
        of ``order``, a batch at a time (copies: the buffer is refilled by the next run)."""
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        segments = stream_segments(self, [s for run in runs for s in run])
        done = 0
        longest = max(sum(self.sizes[s] for s in run) for run in runs)
        buffer = torch.empty(longest, *self.shards.shape, dtype=torch.uint8)  # one buffer, reused by every run
        for run in runs:
            at = dict(zip(run, np.cumsum([0, *[self.sizes[s] for s in run]]).tolist()))  # shard → buffer row
            total = sum(self.sizes[s] for s in run)
            filled = 0
            while filled < total:
                start, block, _ = next(segments)
                shard = int(np.searchsorted(offsets, start, side="right") - 1)
                row = at[shard] + start - int(offsets[shard])
                buffer.numpy()[row:row + len(block)] = block  # one copy, out of the Arrow block
                filled += len(block)
            mine = order[done:done + total]
            local = torch.cat([torch.arange(at[s], at[s] + self.sizes[s]) for s in run])
            position = torch.empty(len(self), dtype=torch.long)  # global row → buffer row (this run's rows only)
            position[torch.cat([torch.arange(int(offsets[s]), int(offsets[s + 1])) for s in run])] = local
            for lo in range(0, total, batch_size):
                pick = mine[lo:lo + batch_size]
                yield ImageData(buffer[position[pick]], self.labels[pick])
            done += total


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


BLOCK_BYTES = 32 * 2**20


def stream_segments(split: Split, shard_ids: list[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Shards ``shard_ids``, in that order, through ``ray.data.read_parquet`` (image and label columns, the class
    filter as a Ray Data expression): ``(global row of the first, images, labels)`` per piece of one shard, the
    images a zero-copy ``N×C×H×W`` uint8 view of the Arrow block. A shard that fails to read is named in a
    :class:`CorruptError`; rows that are not those the split was opened with are too."""
    import ray.data
    from ray.data import ExecutionResources
    from ray.data.expressions import col

    from raydd.storage.fs import resolve

    s = split.shards
    loc = resolve(s.uri, s.endpoint_url)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # blocks arrive in the order of the paths
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = False  # v2's file listing asks for a CPU that the calling task already holds
    ctx.target_max_block_size = BLOCK_BYTES  # the blocks this task maps (prefetched ones too) stay small
    # and few: read-ahead bounded in the object store, so the store pages this task maps stay bounded too
    ctx.execution_options.resource_limits = ExecutionResources(
        cpu=float("inf"), gpu=float("inf"), memory=float("inf"),
        object_store_memory=(split.loader.prefetch_blocks + 2) * BLOCK_BYTES)
    offsets = np.concatenate([[0], np.cumsum(split.sizes)])
    paths = [s.paths[i] for i in shard_ids]
    pos, within = 0, 0  # the shard being read (index into shard_ids) and the rows of it seen so far
    try:
        # one read task at a time, holding no CPU (the calling task has it): CPU-free tasks are not bounded by
        # CPUs, so without the limit Ray Data would start one reader process per shard at once
        ds = ray.data.read_parquet(paths, filesystem=loc.fs, columns=["image", "label"], num_cpus=0, concurrency=1,
                                   file_extensions=None, override_num_blocks=len(paths))
        if s.classes is not None:
            ds = ds.filter(expr=col("label").is_in(list(s.classes)), num_cpus=0, concurrency=1)
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=split.loader.prefetch_blocks):
            images, labels = decode(block, s.shape, paths[min(pos, len(paths) - 1)])
            while len(labels):
                if pos == len(shard_ids):
                    raise CorruptError(f"Parquet shard {paths[-1]} has more rows than when it was opened")
                shard = shard_ids[pos]
                take = min(len(labels), split.sizes[shard] - within)
                start = int(offsets[shard]) + within
                if not np.array_equal(labels[:take], split.labels[start:start + take].numpy()):
                    raise CorruptError(f"Parquet shard {paths[pos]} changed while it was read (its labels differ)")
                piece = (start, images[:take], labels[:take])
                images, labels, within = images[take:], labels[take:], within + take
                if within == split.sizes[shard]:
                    split.bytes_read += s.file_bytes[shard]
                    pos, within = pos + 1, 0
                yield piece
            forget_shared_pages(block)
    except (CorruptError, RunError):
        raise
    except Exception as e:  # a read failed: name the first shard from here on that does not read
        raise unreadable(loc.fs, paths[pos:], e) from e
    if pos < len(shard_ids):
        raise CorruptError(f"Parquet shard {paths[pos]} ended early: expected {split.sizes[shard_ids[pos]]} rows")


def decode(block, shape: tuple[int, int, int], path: str) -> tuple[np.ndarray, np.ndarray]:
    """A Ray Data block (a pyarrow table) → a zero-copy uint8 ``N×C×H×W`` view of its image bytes, and its labels."""
    per = int(np.prod(shape))
    views = []
    for chunk in block.column("image").chunks:
        ends = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        if len(chunk) and not (np.diff(ends) == per).all():
            raise CorruptError(f"Parquet shard {path}: an image is not {per} bytes ({'×'.join(map(str, shape))})")
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8) if len(chunk) else np.empty(0, np.uint8)
        views.append(data[ends[0]:ends[-1]].reshape(-1, *shape))
    images = views[0] if len(views) == 1 else np.concatenate(views or [np.empty((0, *shape), np.uint8)])
    return images, block.column("label").to_numpy()


MADV_DONTNEED = 4  # Linux madvise advice


def forget_shared_pages(block) -> None:
    """Drop this process's page-table entries for the consumed ``block``'s buffers where they lie in a shared
    mapping (Ray's object store), so its resident memory does not grow with every store page a stream ever
    touched; the store keeps the data (a later read faults it back in). Private memory is left alone
    (``MADV_DONTNEED`` would zero it). A no-op off Linux."""
    try:
        maps = open("/proc/self/maps").read().splitlines()
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return
    shared = []
    for line in maps:
        fields = line.split()
        if fields[1].endswith("s"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            shared.append((lo, hi))
    page = mmap.PAGESIZE
    for column in block.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is None or buf.size < page:
                    continue
                lo, hi = -(-buf.address // page) * page, (buf.address + buf.size) // page * page
                if hi > lo and any(a <= lo and hi <= b for a, b in shared):
                    madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED)


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
