"""raydd's Parquet image format: how users bring their own dataset (and how ImageNet travels).

``<uri>/<split>/part-00000.parquet ...`` with columns ``image`` (raw uint8 bytes, C×H×W)
and ``label`` (int64); schema metadata ``raydd.format``, ``channels``, ``height``, ``width``,
``num_classes``.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydd.core.images import ImageData
from raydd.errors import CorruptError, NotFoundError
from raydd.storage.fs import Location

FORMAT = "raydd.images.v1"


def _schema(channels: int, size: int, num_classes: int) -> pa.Schema:
    meta = {"raydd.format": FORMAT, "channels": channels, "height": size, "width": size, "num_classes": num_classes}
    return pa.schema([("image", pa.binary()), ("label", pa.int64())],
                     metadata={b"raydd": json.dumps(meta).encode()})


def write_shard(data: ImageData, loc: Location, split: str, index: int, num_classes: int) -> None:
    """Write ``<loc>/<split>/part-<index>.parquet``; it appears atomically."""
    _, c, h, w = data.images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}×{w}")
    table = pa.table({"image": [im.tobytes() for im in data.images.numpy()], "label": data.labels.numpy()},
                     schema=_schema(c, h, num_classes))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    loc.join(split, f"part-{index:05d}.parquet").write_bytes_atomic(sink.getvalue().to_pybytes())


def write_split(data: ImageData, loc: Location, split: str, num_classes: int, rows_per_shard: int = 10_000) -> int:
    """Write one split as shards of ``rows_per_shard`` rows. Returns the number of shards."""
    starts = range(0, len(data), rows_per_shard)
    for index, start in enumerate(starts):
        write_shard(data.subset(slice(start, start + rows_per_shard)), loc, split, index, num_classes)
    return len(starts)


def shard_paths(loc: Location, split: str) -> list[str]:
    from pyarrow.fs import FileSelector

    infos = loc.fs.get_file_info(FileSelector(loc.join(split).path, allow_not_found=True))
    return sorted(i.path for i in infos if i.path.endswith(".parquet") and not i.base_name.startswith("."))


def read_meta(loc: Location, split: str) -> dict:
    """The format metadata of a split, read from its first shard's footer only."""
    paths = shard_paths(loc, split)
    if not paths:
        raise NotFoundError(f"no Parquet shards under {loc.join(split).uri}")
    try:
        with loc.fs.open_input_file(paths[0]) as f:
            meta = json.loads(pq.read_schema(f).metadata[b"raydd"])
    except (pa.ArrowInvalid, OSError, KeyError, TypeError) as e:
        raise CorruptError(f"corrupt Parquet shard {paths[0]}: {str(e).splitlines()[0]}") from e
    if meta.get("raydd.format") != FORMAT:
        raise CorruptError(f"{paths[0]}: not a {FORMAT} shard")
    return meta


def shard_labels(loc: Location, path: str, classes: list[int] | None = None) -> np.ndarray:
    """One shard's labels (only the label column is read), optionally only those in ``classes``."""
    try:
        with loc.fs.open_input_file(path) as f:
            labels = pq.read_table(f, columns=["label"]).column("label").to_numpy()
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptError(f"corrupt Parquet shard {path}: {str(e).splitlines()[0]}") from e
    return labels if classes is None else labels[np.isin(labels, classes)]


def read_split(loc: Location, split: str, classes: list[int] | None = None) -> ImageData:
    """Read a split (optionally only some classes, filtered at the Parquet level)."""
    meta = read_meta(loc, split)
    shape = (meta["channels"], meta["height"], meta["width"])
    images, labels = [], []
    for path in shard_paths(loc, split):
        try:
            with loc.fs.open_input_file(path) as f:
                table = pq.read_table(f, filters=[("label", "in", classes)] if classes is not None else None)
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptError(f"corrupt Parquet shard {path}: {str(e).splitlines()[0]}") from e
        buf = b"".join(table.column("image").to_pylist())
        images.append(np.frombuffer(buf, dtype=np.uint8).reshape(-1, *shape))
        labels.append(table.column("label").to_numpy())
    return ImageData(torch.from_numpy(np.concatenate(images).copy()), torch.from_numpy(np.concatenate(labels)))
