"""A directory ``datasets.load_dataset(<dir>)`` reads, written without the ``datasets`` package.

``data/train-00000-of-00001.parquet`` holds ``image`` (struct<bytes, path>: PNG, de-normalised and
un-whitened), ``label`` (int64) and, when the set has them, ``soft_label`` (list<float32> logits)
and ``weight``. The Arrow schema metadata key ``huggingface`` declares the features (``Image``,
``ClassLabel`` with the class names, ``Sequence``/``Value``), as ``datasets`` writes them itself;
``README.md`` is the dataset card.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from raydd.export.pixels import png
from raydd.storage.distilled import DistilledSet, to_pixels

DATA_FILE = "data/train-00000-of-00001.parquet"
FLOAT = {"dtype": "float32", "_type": "Value"}


def features(ds: DistilledSet) -> dict:
    """The ``datasets`` feature spec of the exported columns."""
    out = {"image": {"_type": "Image"}, "label": {"names": list(ds.meta["class_names"]), "_type": "ClassLabel"}}
    if ds.soft_labels is not None:
        out["soft_label"] = {"feature": FLOAT, "_type": "Sequence"}
    if ds.weights is not None:
        out["weight"] = FLOAT
    return out


def hf_table(ds: DistilledSet) -> pa.Table:
    images = pa.array([{"bytes": png(p), "path": None} for p in to_pixels(ds)],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    cols = {"image": images, "label": pa.array(ds.labels.cpu().numpy())}
    if ds.soft_labels is not None:
        cols["soft_label"] = pa.array(list(ds.soft_labels.detach().cpu().float().numpy()), type=pa.list_(pa.float32()))
    if ds.weights is not None:
        cols["weight"] = pa.array(ds.weights.detach().cpu().float().numpy())
    meta = {"info": {"features": features(ds)}}
    return pa.table(cols).replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})


def card(ds: DistilledSet) -> str:
    """The dataset card: the data files and what a user needs to train on the images like raydd does."""
    m = ds.meta
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train", "    path: data/train-*",
             "---", f"# {m.get('method', 'distilled')} set: {m.get('dataset', '')}, {m.get('ipc', '')} images per class", "",
             f"{len(ds)} images, classes: {', '.join(m['class_names'])}.",
             f"To train as raydd does: pixels / 255, then (x − mean) / std with mean {m['mean']}, std {m['std']}"
             + ("; then ZCA whitening (the `pt` export's zca.pt)." if ds.zca is not None else "."),
             f"Learned learning rate: {ds.lr}." if ds.lr is not None else "",
             "Soft labels are logits; targets are softmax(soft_label / "
             f"{ds.temperature})." if ds.soft_labels is not None else "",
             "`raydd.json` holds the set's metadata, including the evaluation recipe."]
    return "\n".join(lines) + "\n"


def hf_files(ds: DistilledSet) -> dict[str, bytes]:
    sink = pa.BufferOutputStream()
    pq.write_table(hf_table(ds), sink)
    return {DATA_FILE: sink.getvalue().to_pybytes(), "README.md": card(ds).encode()}
