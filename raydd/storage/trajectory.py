"""The trajectory store: one Arrow IPC file per expert plus ``manifest.json``.

Shard ``expert-00000.arrow`` holds one record batch per saved point, so one epoch is one
ranged read (``pyarrow.ipc.open_file`` on a random-access file, also on S3). Columns:
``expert_id`` int32, ``epoch`` float32, ``params`` list<float32|float16> (null on rows that
hold no vector: convex knots, waypoints-form epochs between waypoints), ``params_sha256``
(per-row check for random reads), ``alpha`` float32 (convex form: α of the point; else null),
``train_loss`` and ``test_acc`` float32 (null where not measured), and in waypoints-form shards
only a last column ``layer_alpha`` list<float32> (per-layer α of every saved epoch), so full and
convex shards are as before. Schema metadata ``raydd`` (JSON): format, form (``full`` |
``waypoints`` | ``convex``), dataset, model, layout, seed, config hash, dtype, row epochs and
``checksum`` (sha256 of all params bytes in row order).

``manifest.json`` lists committed shards (expert_id, file, bytes, checksum, file_sha256,
rows) and the store meta. Shards are written under a temporary name and moved into place;
only the driver writes the manifest, atomically, after a shard is committed.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import torch
from torch import Tensor

from raydd.core.convex import ConvexTrajectory
from raydd.core.waypoints import WaypointTrajectory
from raydd.core.zca import ZCA
from raydd.errors import CorruptError, NotFoundError, RayddError
from raydd.models.functional import ParamLayout
from raydd.specs import FLOAT_EPOCH_FORMS
from raydd.storage.fs import Location, resolve

FORMAT = "raydd.trajectory.v1"
MANIFEST = "manifest.json"
ZCA_FILE = "zca.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
METRIC_COLUMNS = ("epoch", "train_loss", "test_acc")


class CorruptShardError(CorruptError):
    """A shard (or manifest) that cannot be trusted; the message names the file."""


class StoreMismatchError(RayddError, ValueError):
    """An existing store was written with a different configuration."""


def shard_name(expert_id: int) -> str:
    return f"expert-{expert_id:05d}.arrow"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a config dict in canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class ShardRows:
    """One expert's saved points, as written and as a whole-shard read returns them."""

    expert_id: int
    epoch: list[float]
    params: list[Tensor | None]
    alpha: list[float | None]
    train_loss: list[float | None]
    test_acc: list[float | None]
    layer_alpha: list[Tensor] | None = None  # waypoints form: per-layer α of each row; None in the other forms


def _schema(dtype: str, meta: dict[str, Any], layer_alpha: bool = False) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([("expert_id", pa.int32()), ("epoch", pa.float32()), ("params", pa.list_(value)),
                      ("params_sha256", pa.string()), ("alpha", pa.float32()), ("train_loss", pa.float32()),
                      ("test_acc", pa.float32()), *([("layer_alpha", pa.list_(pa.float32()))] if layer_alpha else [])],
                     metadata={b"raydd": json.dumps(meta).encode()})


METRIC_FIELDS = [_schema("float32", {}).get_field_index(c) for c in METRIC_COLUMNS]


def encode_shard(rows: ShardRows, meta: dict[str, Any], dtype: str) -> tuple[bytes, dict[str, Any]]:
    """The shard's bytes and its full schema metadata (``meta`` plus format, dtype, checksum, row epochs)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown trajectory dtype {dtype!r}; choose {' or '.join(DTYPES)}")
    values = [None if p is None else p.detach().to("cpu", DTYPES[dtype]).contiguous().numpy() for p in rows.params]
    total = hashlib.sha256()
    row_sums: list[str | None] = []
    for v in values:
        total.update(b"" if v is None else v)
        row_sums.append(None if v is None else hashlib.sha256(v).hexdigest())
    meta = {**meta, "format": FORMAT, "dtype": dtype, "expert_id": rows.expert_id,
            "row_epochs": [float(e) for e in rows.epoch], "checksum": total.hexdigest()}
    schema = _schema(dtype, meta, rows.layer_alpha is not None)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema) as writer:
        for i, v in enumerate(values):
            params = (pa.array([None], schema.field("params").type) if v is None
                      else pa.ListArray.from_arrays(pa.array([0, v.size], pa.int32()), pa.array(v)))
            layer_alpha = [] if rows.layer_alpha is None else [pa.array([rows.layer_alpha[i].float().numpy()],
                                                                         schema.field("layer_alpha").type)]
            writer.write_batch(pa.record_batch([
                pa.array([rows.expert_id], pa.int32()), pa.array([rows.epoch[i]], pa.float32()), params,
                pa.array([row_sums[i]], pa.string()), pa.array([rows.alpha[i]], pa.float32()),
                pa.array([rows.train_loss[i]], pa.float32()), pa.array([rows.test_acc[i]], pa.float32()),
                *layer_alpha], schema=schema))
    return sink.getvalue().to_pybytes(), meta


def write_shard(store: Location, rows: ShardRows, meta: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Commit one expert's shard (temp name, then move); returns its manifest entry."""
    data, full_meta = encode_shard(rows, meta, dtype)
    name = shard_name(rows.expert_id)
    store.join(name).write_bytes_atomic(data)
    return {"expert_id": rows.expert_id, "file": name, "bytes": len(data), "checksum": full_meta["checksum"],
            "file_sha256": hashlib.sha256(data).hexdigest(), "rows": len(rows.epoch)}


READ_ERRORS = (pa.ArrowException, OSError, KeyError, ValueError)  # what reading a broken shard raises


def _corrupt(uri: str, reason: str) -> CorruptShardError:
    return CorruptShardError(f"corrupt trajectory shard {uri}: {reason}")


def _checked_params(batch: pa.RecordBatch, uri: str) -> np.ndarray | None:
    """The batch's params vector after its per-row sha256 check (None on MCT knot rows)."""
    column = batch.column("params")
    if batch.num_rows != 1:
        raise _corrupt(uri, f"record batch has {batch.num_rows} rows, expected 1")
    if column.null_count:
        return None
    values = column.flatten().to_numpy(zero_copy_only=False)
    if hashlib.sha256(values).hexdigest() != batch.column("params_sha256")[0].as_py():
        raise _corrupt(uri, f"params checksum mismatch at epoch {batch.column('epoch')[0].as_py()}")
    return values


def _as_tensor(values: np.ndarray) -> Tensor:
    return torch.from_numpy(values.astype(np.float32))


def _schema_meta(schema: pa.Schema) -> dict[str, Any]:
    meta = json.loads(schema.metadata[b"raydd"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} shard (format {meta.get('format')!r})")
    return meta


def decode_shard(data: bytes, uri: str) -> tuple[ShardRows, dict[str, Any]]:
    """Read a whole shard, verifying every row's and the shard's params checksum."""
    try:
        reader = ipc.open_file(pa.BufferReader(data))
        meta = _schema_meta(reader.schema)
        total = hashlib.sha256()
        rows = ShardRows(meta["expert_id"], [], [], [], [], [],
                         [] if reader.schema.get_field_index("layer_alpha") >= 0 else None)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            values = _checked_params(batch, uri)
            total.update(b"" if values is None else values)
            rows.epoch.append(batch.column("epoch")[0].as_py())
            rows.params.append(None if values is None else _as_tensor(values))
            for name in ("alpha", "train_loss", "test_acc"):
                getattr(rows, name).append(batch.column(name)[0].as_py())
            if rows.layer_alpha is not None:
                alphas = batch.column("layer_alpha").flatten().to_numpy(zero_copy_only=False)
                rows.layer_alpha.append(torch.from_numpy(alphas.astype(np.float32)))
    except CorruptShardError:
        raise
    except READ_ERRORS as e:
        raise _corrupt(uri, f"{type(e).__name__}: {e}") from e
    if total.hexdigest() != meta["checksum"]:
        raise _corrupt(uri, "params checksum does not match the schema's")
    return rows, meta


def read_manifest(store: Location) -> dict[str, Any] | None:
    """The store's manifest, or None when there is no store yet."""
    target = store.join(MANIFEST)
    if not target.exists():
        return None
    try:
        manifest = json.loads(target.read_bytes())
    except ValueError as e:
        raise CorruptShardError(f"corrupt trajectory manifest {target.uri}: {e}") from e
    if manifest.get("format") != FORMAT:
        raise CorruptShardError(f"corrupt trajectory manifest {target.uri}: not a {FORMAT} manifest")
    return manifest


def write_manifest(store: Location, manifest: dict[str, Any]) -> None:
    manifest["shards"].sort(key=lambda e: e["expert_id"])
    store.join(MANIFEST).write_bytes_atomic(json.dumps(manifest, indent=1).encode())


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} in the store, {new!r} now"]


def open_manifest(store: Location, meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the store made by ``meta`` (created empty if new); another config's store is an error."""
    manifest = read_manifest(store)
    if manifest is None:
        manifest = {"format": FORMAT, "meta": meta, "shards": []}
        write_manifest(store, manifest)
        return manifest
    if manifest["meta"]["config_hash"] != meta["config_hash"]:
        diff = _differences(manifest["meta"].get("config"), meta.get("config")) or ["config hash"]
        raise StoreMismatchError(f"trajectory store {store.uri} was written with a different configuration "
                                 f"({'; '.join(diff)}): choose another experts.store or storage.root, or delete it")
    return manifest


def committed(store: Location, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Manifest entries whose shard file is present with the recorded size."""
    out = {}
    for entry in manifest["shards"]:
        info = store.fs.get_file_info(store.join(entry["file"]).path)
        if info.type == pafs.FileType.File and info.size == entry["bytes"]:
            out[entry["expert_id"]] = entry
    return out


def add_entry(manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    manifest["shards"] = [e for e in manifest["shards"] if e["expert_id"] != entry["expert_id"]] + [entry]


def remove_temp_files(store: Location) -> list[str]:
    """Delete temporary files left by writers that died before their move (call when none is running)."""
    infos = store.fs.get_file_info(pafs.FileSelector(store.path, allow_not_found=True))
    stale = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(".tmp-")]
    for path in stale:
        store.fs.delete_file(path)
    return stale


def waypoint_trajectory(rows: ShardRows, layout: ParamLayout) -> WaypointTrajectory:
    """A waypoints-form shard's trajectory: the rows with a vector are the waypoints; every row has its α."""
    if rows.layer_alpha is None or rows.epoch != [float(e) for e in range(len(rows.epoch))]:
        raise ValueError("a waypoints-form shard has one row per saved epoch 0..E, each with its layer_alpha")
    index = [i for i, p in enumerate(rows.params) if p is not None]
    return WaypointTrajectory(tuple(index), torch.stack([rows.params[i] for i in index]), torch.stack(rows.layer_alpha),
                              layout.sizes)


def convex_trajectory(rows: ShardRows) -> ConvexTrajectory:
    """A convex-form shard's trajectory: first and last rows are θ_start and θ_end, the rows between its knots."""
    knots = [i for i, p in enumerate(rows.params) if p is None]
    return ConvexTrajectory(rows.params[0], rows.params[-1], tuple(rows.epoch[i] for i in knots),
                            tuple(rows.alpha[i] for i in knots), rows.epoch[-1])


class _LRU:
    """A byte-bounded least-recently-used cache."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def get(self, key: Any) -> Any:
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key][0]

    def put(self, key: Any, value: Any, nbytes: int) -> bool:
        """Keep ``value`` (evicting the oldest as needed); False when it is too big or already kept."""
        if nbytes > self.max_bytes or key in self.items:
            return False
        self.items[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            _, (_, n) = self.items.popitem(last=False)
            self.bytes -= n
        return True


class TrajectoryStore:
    """Read access to a store: ``TrajectoryStore.open(uri).params(expert_id, epoch)``."""

    MAX_OPEN_FILES = 64

    def __init__(self, loc: Location, manifest: dict[str, Any], cache_bytes: int = 1 << 30) -> None:
        self.loc = loc
        self.manifest = manifest
        self.meta: dict[str, Any] = manifest["meta"]
        self.layout = ParamLayout.from_json(self.meta["layout"])
        self._entries = {e["expert_id"]: e for e in manifest["shards"]}
        self._cache = _LRU(cache_bytes)
        self._readers: OrderedDict[int, tuple[Any, ipc.RecordBatchFileReader, dict]] = OrderedDict()
        self._lock = threading.Lock()
        self._zca: ZCA | None = None

    @classmethod
    def open(cls, loc: Location | str, cache_bytes: int = 1 << 30, endpoint_url: str | None = None) -> TrajectoryStore:
        """Open the store at ``loc`` (a Location, local path or ``s3://`` URI) by its manifest."""
        loc = resolve(loc, endpoint_url) if isinstance(loc, str) else loc
        manifest = read_manifest(loc)
        if manifest is None:
            raise NotFoundError(f"no trajectory store at {loc.uri} (missing {MANIFEST}): run `raydd experts` first")
        return cls(loc, manifest, cache_bytes)

    @property
    def experts(self) -> list[int]:
        return sorted(self._entries)

    @property
    def epochs(self) -> float:
        return float(self.meta["epochs"])

    @property
    def form(self) -> str:
        return self.meta["form"]

    def shard_uri(self, expert_id: int) -> str:
        return self.loc.join(self._entry(expert_id)["file"]).uri

    def zca(self) -> ZCA | None:
        """The store's ZCA whitening (experts trained on whitened data), or None."""
        if not self.meta.get("zca"):
            return None
        if self._zca is None:
            from safetensors.torch import load

            self._zca = ZCA.from_tensors(load(self.loc.join(ZCA_FILE).read_bytes()))
        return self._zca

    def params(self, expert_id: int, epoch: float) -> Tensor:
        """float32 parameters of an expert at ``epoch`` (full form: an integer epoch, the saved checkpoint;
        waypoints and convex forms: any float in [0, E], reconstructed as ``trajectory`` reads it)."""
        if self.form in FLOAT_EPOCH_FORMS:
            return self.trajectory(expert_id).params(float(epoch))
        if float(epoch) != int(epoch) or not 0 <= epoch <= self.epochs:
            raise ValueError(f"a full-form store holds integer epochs 0..{self.epochs:g}, got {epoch}; "
                             "use a waypoints or convex store (experts.form) for float epochs")
        key = (expert_id, int(epoch))
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached.clone()
        params = self._read_row(expert_id, float(epoch))
        with self._lock:
            kept = self._cache.put(key, params, params.numel() * 4)
        return params.clone() if kept else params

    def trajectory(self, expert_id: int) -> WaypointTrajectory | ConvexTrajectory:
        """An expert's compressed trajectory (waypoints or convex stores only), from its whole shard; cached."""
        if self.form not in FLOAT_EPOCH_FORMS:
            raise ValueError(f"store {self.loc.uri} holds full trajectories; convert it with raydd.experts.convert")
        with self._lock:
            cached = self._cache.get(("trajectory", expert_id))
        if cached is None:
            rows = self.read(expert_id)
            try:
                cached = waypoint_trajectory(rows, self.layout) if self.form == "waypoints" else convex_trajectory(rows)
            except (ValueError, RuntimeError) as e:
                raise _corrupt(self.shard_uri(expert_id), str(e)) from e
            with self._lock:
                self._cache.put(("trajectory", expert_id), cached, cached.nbytes)
        return cached

    def shard_meta(self, expert_id: int) -> dict[str, Any]:
        """The shard's schema metadata (store meta plus seed, row epochs, checksum); reads the footer only."""
        try:
            return self._reader(expert_id)[1]
        except READ_ERRORS as e:
            self._drop_reader(expert_id)
            raise _corrupt(self.shard_uri(expert_id), f"{type(e).__name__}: {e}") from e

    def metrics(self, expert_id: int) -> dict[str, list[float | None]]:
        """``epoch``, ``train_loss`` and ``test_acc`` of the saved points (reads only those columns)."""
        path = self.loc.join(self._entry(expert_id)["file"]).path
        try:
            with self.loc.fs.open_input_file(path) as f:
                table = ipc.open_file(f, options=ipc.IpcReadOptions(included_fields=METRIC_FIELDS)).read_all()
        except (pa.ArrowException, OSError) as e:
            raise _corrupt(self.shard_uri(expert_id), f"{type(e).__name__}: {e}") from e
        return {c: table.column(c).to_pylist() for c in METRIC_COLUMNS}

    def final_test_accuracy(self) -> float | None:
        """The experts' mean test accuracy (a fraction) at their last measured point; None when none was measured."""
        last = [next((a for a in reversed(self.metrics(i)["test_acc"]) if a is not None), None) for i in self.experts]
        measured = [a for a in last if a is not None]
        return sum(measured) / len(measured) if measured else None

    def read(self, expert_id: int) -> ShardRows:
        """The whole shard, checked against the manifest (size, file sha256) and its params checksum."""
        entry, uri = self._entry(expert_id), self.shard_uri(expert_id)
        try:
            data = self.loc.join(entry["file"]).read_bytes()
        except FileNotFoundError as e:
            raise _corrupt(uri, "file is missing") from e
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["file_sha256"]:
            raise _corrupt(uri, f"{len(data)} bytes do not match the manifest's {entry['bytes']} bytes / sha256")
        rows, meta = decode_shard(data, uri)
        if meta["checksum"] != entry["checksum"]:
            raise _corrupt(uri, "params checksum does not match the manifest's")
        return rows

    def verify(self) -> int:
        """Check every shard's checksums; raises CorruptShardError naming each bad shard. Returns the count."""
        bad = []
        for expert_id in self.experts:
            try:
                self.read(expert_id)
            except CorruptShardError as e:
                bad.append(str(e))
        if bad:
            raise CorruptShardError("; ".join(bad))
        return len(self.experts)

    def check_openable(self) -> None:
        """Open every shard's Arrow file (its footer; no parameter rows are read), so a truncated or foreign
        shard is named before any work; row checksums are checked as rows are read (``verify`` reads all)."""
        for expert_id in self.experts:
            try:
                self._reader(expert_id)
            except READ_ERRORS as e:
                self._drop_reader(expert_id)
                raise _corrupt(self.shard_uri(expert_id), f"{type(e).__name__}: {e}") from e

    def _entry(self, expert_id: int) -> dict[str, Any]:
        if expert_id not in self._entries:
            raise KeyError(f"expert {expert_id} is not in store {self.loc.uri} (experts: {self.experts})")
        return self._entries[expert_id]

    def _reader(self, expert_id: int) -> tuple[ipc.RecordBatchFileReader, dict[str, Any]]:
        with self._lock:
            if expert_id in self._readers:
                self._readers.move_to_end(expert_id)
                return self._readers[expert_id][1:]
        f = self.loc.fs.open_input_file(posixpath.join(self.loc.path, self._entry(expert_id)["file"]))
        reader = ipc.open_file(f)
        opened = (f, reader, _schema_meta(reader.schema))
        with self._lock:
            self._readers[expert_id] = opened
            while len(self._readers) > self.MAX_OPEN_FILES:
                self._readers.popitem(last=False)[1][0].close()
        return opened[1:]

    def _read_row(self, expert_id: int, epoch: float) -> Tensor:
        uri = self.shard_uri(expert_id)
        try:
            reader, meta = self._reader(expert_id)
            if epoch not in meta["row_epochs"]:
                raise _corrupt(uri, f"no saved point at epoch {epoch:g}")
            values = _checked_params(reader.get_batch(meta["row_epochs"].index(epoch)), uri)
        except CorruptShardError:
            self._drop_reader(expert_id)
            raise
        except READ_ERRORS as e:
            self._drop_reader(expert_id)
            raise _corrupt(uri, f"{type(e).__name__}: {e}") from e
        if values is None or values.size != self.layout.numel:
            count = 0 if values is None else values.size
            raise _corrupt(uri, f"epoch {epoch:g} has {count} params, the layout needs {self.layout.numel}")
        return _as_tensor(values)

    def _drop_reader(self, expert_id: int) -> None:
        with self._lock:
            opened = self._readers.pop(expert_id, None)
        if opened is not None:
            opened[0].close()
