"""The distilled-set format: ``set.parquet`` (raw float32 images, labels, weights) + ``grid.png``.

Columns: ``image`` (list<float32>, C·H·W values in model space: normalised, ZCA-whitened if
``zca``), ``label`` (int64 class), optional ``soft_label`` (list<float32>, logits) and
``weight`` (float32, DDOQ cluster masses). Schema metadata ``raydd`` (JSON): format, method,
ipc, dataset, shape, num_classes, mean/std, learned ``lr``, ``zca`` (a ``zca.safetensors``
lies beside the set) and anything the producing stage adds.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from raydd.core.zca import ZCA
from raydd.errors import CorruptError, NotFoundError
from raydd.storage.fs import Location

FORMAT = "raydd.distilled.v1"


@dataclass
class DistilledSet:
    images: Tensor                      # N×C×H×W float32, model space
    labels: Tensor                      # N int64 hard labels (argmax of soft labels when present)
    soft_labels: Tensor | None = None   # N×K float32 logits
    weights: Tensor | None = None       # N float32 per-sample weights
    lr: float | None = None             # learned inner learning rate
    zca: ZCA | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]


def _table(ds: DistilledSet) -> pa.Table:
    n = len(ds)
    cols = {"image": pa.FixedSizeListArray.from_arrays(pa.array(ds.images.detach().float().reshape(-1).cpu().numpy()),
                                                       int(np.prod(ds.images.shape[1:]))),
            "label": pa.array(ds.labels.cpu().numpy().astype(np.int64))}
    if ds.soft_labels is not None:
        cols["soft_label"] = pa.FixedSizeListArray.from_arrays(
            pa.array(ds.soft_labels.detach().float().reshape(-1).cpu().numpy()), ds.soft_labels.shape[1])
    if ds.weights is not None:
        cols["weight"] = pa.array(ds.weights.detach().float().cpu().numpy())
    meta = {**ds.meta, "format": FORMAT, "shape": list(ds.images.shape[1:]), "n": n, "lr": ds.lr, "zca": ds.zca is not None}
    return pa.table(cols).replace_schema_metadata({b"raydd": json.dumps(meta).encode()})


def save_set(ds: DistilledSet, loc: Location, grid_spec=None) -> None:
    """Write the set (atomically, file by file; ``set.parquet`` last) and a PNG grid for people."""
    if not torch.isfinite(ds.images).all():
        raise ValueError("refusing to write a distilled set with NaN/inf images")
    if ds.zca is not None:
        from safetensors.torch import save

        loc.join("zca.safetensors").write_bytes_atomic(save(ds.zca.to_tensors()))
    if grid_spec is not None:
        loc.join("grid.png").write_bytes_atomic(grid_png(ds, grid_spec))
    sink = pa.BufferOutputStream()
    pq.write_table(_table(ds), sink, compression="zstd")
    loc.join("set.parquet").write_bytes_atomic(sink.getvalue().to_pybytes())


def load_set(loc: Location) -> DistilledSet:
    """Read a set written by :func:`save_set`; a missing or corrupt file is named in the error."""
    target = loc.join("set.parquet")
    if not target.exists():
        raise NotFoundError(f"no distilled set at {loc.uri} (missing set.parquet): make it first (raydd distill, "
                            "raydd quantize) or name an existing one with evaluate.set")
    try:
        table = pq.read_table(pa.BufferReader(target.read_bytes()))
        meta = json.loads(table.schema.metadata[b"raydd"])
    except (pa.ArrowInvalid, KeyError, TypeError, ValueError, OSError) as e:
        raise CorruptError(f"corrupt distilled set {target.uri}: {str(e).splitlines()[0]}") from e
    shape = meta.pop("shape")
    images = torch.from_numpy(table.column("image").combine_chunks().flatten().to_numpy().copy()).view(-1, *shape)
    soft = None
    if "soft_label" in table.column_names:
        k = table.schema.field("soft_label").type.list_size
        soft = torch.from_numpy(table.column("soft_label").combine_chunks().flatten().to_numpy().copy()).view(-1, k)
    weights = torch.from_numpy(table.column("weight").to_numpy().copy()) if "weight" in table.column_names else None
    zca = None
    if meta.pop("zca"):
        from safetensors.torch import load

        zca = ZCA.from_tensors(load(loc.join("zca.safetensors").read_bytes()))
    meta.pop("format"), meta.pop("n")
    return DistilledSet(images, torch.from_numpy(table.column("label").to_numpy().copy()), soft, weights,
                        meta.pop("lr"), zca, meta)


def grid_png(ds: DistilledSet, spec) -> bytes:
    """A class-by-row grid of (at most 10 per class) images, un-whitened and de-normalised."""
    import torchvision.utils as vutils

    from raydd.core.images import denormalize

    images = ds.images.detach().cpu()
    if ds.zca is not None:
        images = ds.zca.inverse(images)
    rows = []
    for c in ds.labels.unique(sorted=True):
        rows.append(images[ds.labels == c][:10])
    per_row = max(r.shape[0] for r in rows)
    padded = [torch.cat([r, r.new_ones(per_row - r.shape[0], *r.shape[1:]) * r.min()]) for r in rows]
    grid = vutils.make_grid(denormalize(torch.cat(padded), spec), nrow=per_row, padding=1)
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).squeeze()).save(buf, format="PNG")
    return buf.getvalue()
