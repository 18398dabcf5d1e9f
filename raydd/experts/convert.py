"""Convert a full-form trajectory store into the convex (MCT) form, shard by shard."""

from __future__ import annotations

import copy
from typing import Any

import torch

from raydd.experts.train import ExpertRun
from raydd.experts.worker import shard_rows
from raydd.storage.fs import Location, resolve
from raydd.storage.trajectory import (ZCA_FILE, TrajectoryStore, add_entry, committed, config_hash, open_manifest,
                                      write_manifest, write_shard)


def convex_meta(meta: dict[str, Any], points: int, dtype: str) -> dict[str, Any]:
    """The convex store's meta: same experts, ``form=convex``; its config hash is what
    ``raydd experts experts.form=convex experts.convex_points=<points>`` computes."""
    config = copy.deepcopy(meta["config"])
    config["experts"].update(form="convex", convex_points=points, dtype=dtype)
    return {**meta, "form": "convex", "convex_points": points, "dtype": dtype, "config": config,
            "config_hash": config_hash(config)}


def convert_store(full_store_loc: Location | str, convex_store_loc: Location | str, points: int = 2,
                  dtype: str | None = None) -> dict[str, Any]:
    """Convexify every expert of a full store into another store (resumable: committed experts are skipped)."""
    src = TrajectoryStore.open(full_store_loc)
    dst = resolve(convex_store_loc) if isinstance(convex_store_loc, str) else convex_store_loc
    if src.form != "full":
        raise ValueError(f"{src.loc.uri} is already a {src.form} store")
    meta = convex_meta(src.meta, points, dtype or src.meta["dtype"])
    manifest = open_manifest(dst, meta)
    done = committed(dst, manifest)
    if src.meta.get("zca") and not dst.join(ZCA_FILE).exists():
        dst.join(ZCA_FILE).write_bytes_atomic(src.loc.join(ZCA_FILE).read_bytes())
    for expert_id in src.experts:
        if expert_id in done:
            continue
        rows = src.read(expert_id)
        run = ExpertRun(torch.stack(rows.params), rows.train_loss, rows.test_acc)
        entry = write_shard(dst, shard_rows(expert_id, run, "convex", points),
                            {**meta, "seed": src.shard_meta(expert_id)["seed"]}, meta["dtype"])
        add_entry(manifest, entry)
        write_manifest(dst, manifest)
    return {"store": dst.uri, "experts": len(manifest["shards"]),
            "bytes": sum(e["bytes"] for e in manifest["shards"]),
            "full_bytes": sum(e["bytes"] for e in src.manifest["shards"])}
