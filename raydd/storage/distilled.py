"""The distilled-set format: ``set.parquet`` (raw float32 images, labels, weights) + ``grid.png``.

Columns: ``image`` (list<float32>, C·H·W values in model space: normalised, ZCA-whitened if
``zca``), ``label`` (int64 class), optional ``soft_label`` (list<float32>, logits) and
``weight`` (float32, DDOQ cluster masses). Schema metadata ``raydd`` (JSON, format
``raydd.distilled.v2``) makes a set usable without raydd: ``shape``, ``num_classes``,
``class_names``, ``mean``/``std`` (model space = (pixel/255 − mean)/std, then ZCA),
``zca`` (a ``zca.safetensors`` lies beside the set), the learned ``lr``,
``soft_label_temperature`` (targets are softmax(soft_label / T)), ``evaluation`` (the recipe
and accuracy of the last ``raydd evaluate``) and anything the producing stage adds.
v1 sets (no normalisation or class names) are read with those filled in from the dataset registry.
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

from raydd.core.images import DatasetSpec, denormalize
from raydd.core.zca import ZCA
from raydd.data.registry import DATASETS, class_names
from raydd.errors import CorruptError, NotFoundError
from raydd.storage.fs import Location

FORMAT = "raydd.distilled.v2"
V1 = "raydd.distilled.v1"


@dataclass
class DistilledSet:
    images: Tensor                      # N×C×H×W float32, model space
    labels: Tensor                      # N int64 hard labels (argmax of soft labels when present)
    soft_labels: Tensor | None = None   # N×K float32 logits
    weights: Tensor | None = None       # N float32 per-sample weights
    lr: float | None = None             # learned inner learning rate
    zca: ZCA | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0            # soft-label targets are softmax(soft_labels / temperature)

    def __len__(self) -> int:
        return self.images.shape[0]


def describe(spec: DatasetSpec) -> dict[str, Any]:
    """What a v2 set records about its data: enough to undo the normalisation and name the classes."""
    return {"dataset": spec.name, "num_classes": spec.num_classes,
            "class_names": class_names(spec.name, spec.num_classes), "mean": list(spec.mean), "std": list(spec.std)}


def spec_of(ds: DistilledSet) -> DatasetSpec:
    """The set's dataset spec from its metadata (mean/std, classes, shape)."""
    if ds.meta.get("mean") is None:
        raise ValueError("the set records no normalisation (mean/std): it was saved without a dataset spec")
    c, h, _ = ds.images.shape[1:]
    return DatasetSpec(ds.meta.get("dataset", "set"), ds.meta["num_classes"], c, h, tuple(ds.meta["mean"]),
                       tuple(ds.meta["std"]))


def metadata(ds: DistilledSet) -> dict[str, Any]:
    """The set's v2 metadata (what ``set.parquet`` carries and every export copies)."""
    return {**ds.meta, "format": FORMAT, "shape": list(ds.images.shape[1:]), "n": len(ds), "lr": ds.lr,
            "zca": ds.zca is not None, "soft_label_temperature": ds.temperature if ds.soft_labels is not None else None}


def _table(ds: DistilledSet) -> pa.Table:
    cols = {"image": pa.FixedSizeListArray.from_arrays(pa.array(ds.images.detach().float().reshape(-1).cpu().numpy()),
                                                       int(np.prod(ds.images.shape[1:]))),
            "label": pa.array(ds.labels.cpu().numpy().astype(np.int64))}
    if ds.soft_labels is not None:
        cols["soft_label"] = pa.FixedSizeListArray.from_arrays(
            pa.array(ds.soft_labels.detach().float().reshape(-1).cpu().numpy()), ds.soft_labels.shape[1])
    if ds.weights is not None:
        cols["weight"] = pa.array(ds.weights.detach().float().cpu().numpy())
    return pa.table(cols).replace_schema_metadata({b"raydd": json.dumps(metadata(ds)).encode()})


def save_set(ds: DistilledSet, loc: Location, spec: DatasetSpec | None = None) -> None:
    """Write the set (atomically, file by file; ``set.parquet`` last) and, given its dataset's spec, a PNG grid
    for people; the spec's normalisation and class names go into ``ds.meta`` and the file's metadata."""
    if spec is not None:
        ds.meta.update(describe(spec))
    if not torch.isfinite(ds.images).all():
        raise ValueError("refusing to write a distilled set with NaN/inf images")
    if ds.zca is not None:
        from safetensors.torch import save

        loc.join("zca.safetensors").write_bytes_atomic(save(ds.zca.to_tensors()))
    if spec is not None:
        loc.join("grid.png").write_bytes_atomic(grid_png(ds))
    _write_parquet(ds, loc)


def _write_parquet(ds: DistilledSet, loc: Location) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(_table(ds), sink, compression="zstd")
    loc.join("set.parquet").write_bytes_atomic(sink.getvalue().to_pybytes())


def record_evaluation(loc: Location, evaluation: dict[str, Any]) -> None:
    """Store the recipe and accuracy of an evaluation in the set's metadata (a v1 set is rewritten as v2)."""
    ds = load_set(loc)
    ds.meta["evaluation"] = evaluation
    _write_parquet(ds, loc)


def _upgrade_v1(meta: dict[str, Any]) -> dict[str, Any]:
    """A v1 set's metadata with the v2 description from the registry (mean/std as the dataset's defaults)."""
    entry = DATASETS.get(meta.get("dataset"))
    known = {"num_classes": entry.num_classes, "class_names": class_names(meta["dataset"], entry.num_classes),
             "mean": list(entry.mean), "std": list(entry.std)} if entry else {}
    return {"num_classes": None, "class_names": None, "mean": None, "std": None, **known, **meta}


def _parse_meta(schema: pa.Schema, uri: str) -> dict[str, Any]:
    """The schema's ``raydd`` metadata as v2 (a v1 set's filled in from the registry)."""
    meta = json.loads(schema.metadata[b"raydd"])
    if meta.get("format") == V1:  # v1 sets trained soft labels at temperature 1
        return {**_upgrade_v1(meta), "soft_label_temperature": 1.0 if "soft_label" in schema.names else None}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{uri}: unknown set format {meta.get('format')!r} (this raydd reads {V1} and {FORMAT})")
    return meta


def read_metadata(loc: Location) -> dict[str, Any]:
    """The set's metadata, from the Parquet footer only."""
    target = loc.join("set.parquet")
    try:
        with loc.fs.open_input_file(target.path) as f:
            return _parse_meta(pq.read_schema(f), target.uri)
    except (pa.ArrowInvalid, KeyError, OSError, TypeError, ValueError) as e:
        raise CorruptError(f"corrupt distilled set {target.uri}: {str(e).splitlines()[0]}") from e


def load_set(loc: Location) -> DistilledSet:
    """Read a set written by :func:`save_set` (or a v1 set); a missing or corrupt file is named in the error."""
    target = loc.join("set.parquet")
    if not target.exists():
        raise NotFoundError(f"no distilled set at {loc.uri} (missing set.parquet): make it first (raydd distill, "
                            "raydd quantize) or name an existing one with evaluate.set")
    try:
        table = pq.read_table(pa.BufferReader(target.read_bytes()))
        meta = _parse_meta(table.schema, target.uri)
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
    temperature = meta.pop("soft_label_temperature")
    return DistilledSet(images, torch.from_numpy(table.column("label").to_numpy().copy()), soft, weights,
                        meta.pop("lr"), zca, meta, 1.0 if temperature is None else temperature)


def to_pixels(ds: DistilledSet) -> Tensor:
    """The images as uint8 N×C×H×W pixels: un-whitened, de-normalised, clipped to [0, 1], rounded to 1/255."""
    x = ds.images.detach().cpu().float()
    if ds.zca is not None:
        x = ds.zca.inverse(x)
    return (denormalize(x, spec_of(ds)) * 255).round().to(torch.uint8)


def grid_png(ds: DistilledSet) -> bytes:
    """A class-by-row grid of (at most 10 per class) of the set's pixels."""
    import torchvision.utils as vutils
    from PIL import Image

    pixels = to_pixels(ds)
    rows = [pixels[ds.labels == c][:10] for c in ds.labels.unique(sorted=True)]
    per_row = max(r.shape[0] for r in rows)
    padded = [torch.cat([r, r.new_zeros(per_row - r.shape[0], *r.shape[1:])]) for r in rows]
    grid = vutils.make_grid(torch.cat(padded).float() / 255, nrow=per_row, padding=1)
    buf = io.BytesIO()
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).squeeze()).save(buf, format="PNG")
    return buf.getvalue()
