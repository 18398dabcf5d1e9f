"""``raydd export set=<uri> format=pt|imagefolder|hf out=<uri>``: a distilled set for the tools people already use.

On a local disk the files are written into a temporary sibling of ``out`` and renamed into place
together, so ``out`` is either complete or absent; an ``out`` that already has content is refused.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pyarrow.fs as pafs

from raydd.specs import ConfigError
from raydd.export.hf import hf_files
from raydd.export.imagefolder import imagefolder_files
from raydd.export.pixels import round_trip_error
from raydd.export.pt import pt_files
from raydd.storage.distilled import DistilledSet, load_set, metadata
from raydd.storage.fs import Location, resolve

WRITERS = {"pt": pt_files, "imagefolder": imagefolder_files, "hf": hf_files}
PNG_FORMATS = ("imagefolder", "hf")


def has_content(loc: Location) -> bool:
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        return False
    return info.type != pafs.FileType.Directory or bool(loc.fs.get_file_info(pafs.FileSelector(loc.path)))


def check_options(cfg: dict[str, Any]) -> tuple[Location, Location]:
    """The set and output locations, after checking both before any work."""
    e, endpoint = cfg["export"], cfg["storage"].get("endpoint_url")
    if not e.get("set"):
        raise ConfigError("raydd export needs set=<uri of a distilled set> (a directory holding set.parquet)")
    if e["format"] not in WRITERS:
        raise ConfigError(f"unknown export format {e['format']!r}; choose one of {', '.join(WRITERS)}")
    if not e.get("out"):
        raise ConfigError("raydd export needs out=<uri> (a new or empty directory)")
    src, out = resolve(e["set"], endpoint), resolve(e["out"], endpoint)
    if not src.join("set.parquet").exists():
        raise ConfigError(f"no distilled set at {src.uri} (missing set.parquet)")
    if has_content(out):
        raise ConfigError(f"out {out.uri} already has content; export into a new or empty directory")
    return src, out


def write_all(files: dict[str, bytes], out: Location) -> None:
    """Write ``files`` under ``out``: on a local disk into a sibling directory that is then renamed into place;
    on an object store (no directories to rename) object by object, each appearing whole."""
    if not isinstance(out.fs, pafs.LocalFileSystem):
        for name, data in files.items():
            out.join(name).write_bytes_atomic(data)
        return
    suffix = f".tmp-{uuid.uuid4().hex[:8]}"
    tmp = Location(out.fs, out.path.rstrip("/") + suffix, out.uri.rstrip("/") + suffix)
    for name, data in files.items():
        tmp.join(name).write_bytes_atomic(data)
    if out.exists():
        out.fs.delete_dir(out.path)  # empty (checked): the rename needs the name free
    out.fs.move(tmp.path, out.path)


def export_files(ds: DistilledSet, fmt: str) -> dict[str, bytes]:
    """The export's files, with the set's metadata as ``raydd.json`` in every format."""
    if ds.meta.get("mean") is None:
        raise ConfigError("the set records no normalisation (mean/std), so it cannot be exported: re-save it with "
                          "its dataset spec")
    return {**WRITERS[fmt](ds), "raydd.json": json.dumps(metadata(ds), indent=2).encode()}


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    src, out = check_options(cfg)
    fmt = cfg["export"]["format"]
    try:
        ds = load_set(src)
    except ValueError as e:  # corrupt, or a format this raydd does not read
        raise ConfigError(str(e)) from e
    files = export_files(ds, fmt)
    write_all(files, out)
    size = sum(len(b) for b in files.values())
    print(f"exported {src.uri} ({len(ds)} images) as {fmt} → {out.uri}: {len(files)} files, {size / 1e6:.2f} MB")
    result = {"out": out.uri, "format": fmt, "files": len(files), "bytes": size}
    if fmt in PNG_FORMATS:
        result["round_trip_error"] = err = round_trip_error(ds)
        print("8-bit PNG round trip: " + ("exact (every image is on the 8-bit grid)" if err == 0 else
              f"lossy, max |Δ| = {err:.3g} in model space (learned images are rounded to 1/255 and clipped to [0, 1])"))
    if fmt == "imagefolder" and (ds.soft_labels is not None or ds.weights is not None):
        print("note: an ImageFolder carries hard labels only; the pt and hf exports keep soft labels and weights")
    return result
