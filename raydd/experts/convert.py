"""Convert a full-form trajectory store into a compressed form (waypoints or convex), shard by shard."""

from __future__ import annotations

import copy
from typing import Any

import torch

from raydd.experts.train import ExpertRun
from raydd.experts.worker import shard_rows
from raydd.specs import FORM_POINTS
from raydd.storage.fs import Location, resolve
from raydd.storage.trajectory import (ZCA_FILE, TrajectoryStore, add_entry, committed, config_hash, open_manifest,
                                      write_manifest, write_shard)


def converted_meta(meta: dict[str, Any], form: str, points: int, dtype: str) -> dict[str, Any]:
    """The converted store's meta: same experts, ``form``; its config hash is what ``raydd experts
    experts.form=<form> experts.<waypoints|convex_points>=<points>`` computes."""
    key = FORM_POINTS[form]
    config = copy.deepcopy(meta["config"])
    config["experts"].update({"form": form, key: points, "dtype": dtype})
    return {**meta, **{k: None for k in FORM_POINTS.values()}, "form": form, key: points, "dtype": dtype,
            "config": config, "config_hash": config_hash(config)}


def convert_store(full_store_loc: Location | str, out_loc: Location | str, form: str, points: int,
                  dtype: str | None = None) -> dict[str, Any]:
    """Compress every expert of a full store into another store of ``form`` (``waypoints``: ``points`` the
    reference's num_interpolation; ``convex``: interior knots). Resumable: committed experts are skipped."""
    if form not in FORM_POINTS:
        raise ValueError(f"cannot convert into form {form!r}; choose {' or '.join(FORM_POINTS)}")
    src = TrajectoryStore.open(full_store_loc)
    dst = resolve(out_loc) if isinstance(out_loc, str) else out_loc
    if src.form != "full":
        raise ValueError(f"{src.loc.uri} is already a {src.form} store")
    meta = converted_meta(src.meta, form, points, dtype or src.meta["dtype"])
    manifest = open_manifest(dst, meta)
    done = committed(dst, manifest)
    if src.meta.get("zca") and not dst.join(ZCA_FILE).exists():
        dst.join(ZCA_FILE).write_bytes_atomic(src.loc.join(ZCA_FILE).read_bytes())
    for expert_id in src.experts:
        if expert_id in done:
            continue
        rows = src.read(expert_id)
        run = ExpertRun(torch.stack(rows.params), rows.train_loss, rows.test_acc)
        entry = write_shard(dst, shard_rows(expert_id, run, form, points, src.layout),
                            {**meta, "seed": src.shard_meta(expert_id)["seed"]}, meta["dtype"])
        add_entry(manifest, entry)
        write_manifest(dst, manifest)
    return {"store": dst.uri, "experts": len(manifest["shards"]),
            "bytes": sum(e["bytes"] for e in manifest["shards"]),
            "full_bytes": sum(e["bytes"] for e in src.manifest["shards"])}
