"""``raydd experts``: train ``experts.num`` experts in parallel Ray tasks into the trajectory store.

The driver checks the store, trains only the experts not yet committed (one task each,
retried when its worker dies), adds each finished shard to the manifest, and prints a
summary. ``zca=true`` fits a ZCA on the training set and stores it beside the shards.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import ray
from safetensors.torch import load, save
from tqdm import tqdm

from raydd.core.images import DatasetSpec, normalize
from raydd.core.zca import ZCA
from raydd.data.registry import dataset_spec, open_split
from raydd.data.split import Split
from raydd.errors import RayddError, RunError
from raydd.experts.progress import start_progress, wait_for_experts
from raydd.experts.worker import train_and_commit
from raydd.models.functional import ParamLayout
from raydd.models.registry import build_model
from raydd.runtime import init_ray, require_gpus
from raydd.specs import FORM_POINTS, ExpertsSpec, LoaderSpec
from raydd.storage.fs import Location, check_reachable, s3_endpoint
from raydd.storage.layout import experts_location, store_settings
from raydd.storage.trajectory import (ZCA_FILE, TrajectoryStore, add_entry, committed, config_hash,
                                      open_manifest, remove_temp_files, write_manifest)
from raydd.tracking import log_experts

_train_and_commit = ray.remote(train_and_commit)


def store_meta(cfg: dict[str, Any], spec: DatasetSpec, layout: ParamLayout) -> dict[str, Any]:
    """The store's metadata (manifest ``meta``; every shard's schema carries it too)."""
    e, config = cfg["experts"], store_settings(cfg)
    return {"form": e["form"], "dtype": e["dtype"], "variant": e["variant"], "epochs": e["epochs"],
            **{key: e[key] if e["form"] == form else None for form, key in FORM_POINTS.items()},
            "dataset": dataclasses.asdict(spec), "model": cfg["model"], "layout": layout.to_json(),
            "zca": config["zca"], "config_hash": config_hash(config), "config": config}


def prepare_zca(cfg: dict[str, Any], store: Location, spec: DatasetSpec, train: Split) -> ZCA | None:
    """The store's ZCA (fitted on the normalised training set, reg 0.1, once, in batches), or None without ``zca``."""
    if not cfg["zca"]:
        return None
    target = store.join(ZCA_FILE)
    if target.exists():
        return ZCA.from_tensors(load(target.read_bytes()))
    zca = ZCA.fit_batches(lambda: (normalize(b.images, spec) for b in train.batches(4096)), reg=0.1)
    target.write_bytes_atomic(save(zca.to_tensors()))
    return zca


def train_missing(cfg: dict[str, Any], store: Location, manifest: dict[str, Any], todo: list[int]) -> dict[int, Any]:
    """Train the ``todo`` experts as Ray tasks; commit each to the manifest as it finishes."""
    e = ExpertsSpec.from_config(cfg["experts"])
    spec, loader = dataset_spec(cfg["dataset"]), LoaderSpec.from_config(cfg["loader"])
    train, test = open_split(cfg["dataset"], loader, "train"), open_split(cfg["dataset"], loader, "test")
    zca = prepare_zca(cfg, store, spec, train)
    progress = start_progress()
    task = _train_and_commit.options(num_cpus=e.resources.cpus, num_gpus=e.resources.gpus, max_retries=e.max_retries)
    train_ref, test_ref, zca_ref = ray.put(train), ray.put(test), ray.put(zca)
    endpoint = s3_endpoint(cfg["storage"].get("endpoint_url"))
    jobs = {task.remote(i, cfg, store.uri, endpoint, spec, train_ref, test_ref, zca_ref, manifest["meta"], progress): i
            for i in todo}
    results: dict[int, Any] = {}

    def commit(expert_id: int, result: dict[str, Any]) -> None:
        add_entry(manifest, result["entry"])
        write_manifest(store, manifest)
        results[expert_id] = result
        tqdm.write(f"expert {expert_id}: final test accuracy {100 * result['test_acc']:.2f}%, "
                   f"{result['seconds']:.0f} s, {result['entry']['bytes'] / 1e6:.1f} MB → {result['entry']['file']}")

    failures = wait_for_experts(jobs, progress, e.epochs, commit)
    ray.kill(progress)
    remove_temp_files(store)
    for expert_id, error in sorted(failures.items()):
        if isinstance(error, RayddError):  # bad input: the same error line, naming the expert
            raise type(error)(f"expert {expert_id}: {str(error).splitlines()[0]} (no shard was written for it; "
                              f"{len(manifest['shards'])} committed experts are kept)")
    if failures:
        raise RunError(f"{len(failures)} expert(s) failed after {e.max_retries} retries (committed experts are "
                           f"kept; re-run to resume): " + "; ".join(f"expert {i}: {m}" for i, m in sorted(failures.items())))
    return results


def summarize(store: Location, manifest: dict[str, Any], results: dict[int, Any], skipped: int, seconds: float) -> dict[str, Any]:
    written = sum(r["entry"]["bytes"] for r in results.values())
    return {"store": store.uri, "experts": len(manifest["shards"]), "trained": len(results), "skipped": skipped,
            "epochs": manifest["meta"]["epochs"], "form": manifest["meta"]["form"], "dtype": manifest["meta"]["dtype"],
            "bytes_written": written, "store_bytes": sum(s["bytes"] for s in manifest["shards"]),
            "seconds": round(seconds, 2), "experts_per_hour": len(results) * 3600 / seconds if results else 0.0,
            "mb_per_s": written / 1e6 / seconds if results else 0.0,
            "cpu_seconds_per_expert": statistics.fmean(r["cpu_seconds"] for r in results.values()) if results else None,
            "peak_rss_mb": max((r["peak_rss_mb"] for r in results.values()), default=None),
            "bytes_read": sum(r["bytes_read"] for r in results.values()),
            "test_acc_final_mean": TrajectoryStore.open(store).final_test_accuracy()}


def format_summary(s: dict[str, Any]) -> str:
    acc = "n/a" if s["test_acc_final_mean"] is None else f"{100 * s['test_acc_final_mean']:.2f}%"
    return (f"experts: {s['experts']} in {s['store']} ({s['trained']} trained, {s['skipped']} already committed), "
            f"{s['form']} {s['dtype']}, {s['epochs']} epochs; {s['bytes_written'] / 1e6:.1f} MB written in "
            f"{s['seconds']:.0f} s: {s['experts_per_hour']:.1f} experts/hour, {s['mb_per_s']:.3f} MB/s; "
            f"final test accuracy {acc} (mean over experts)")


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train the experts not yet in the store; returns its URI as ``store`` and a summary."""
    store = experts_location(cfg)
    check_reachable(store)
    spec = dataset_spec(cfg["dataset"])
    manifest = open_manifest(store, store_meta(cfg, spec, ParamLayout.of(build_model(cfg["model"], spec))))
    done = committed(store, manifest)
    manifest["shards"] = list(done.values())
    todo = [i for i in range(cfg["experts"]["num"]) if i not in done]
    started = time.time()
    results = {}
    if todo:
        init_ray(cfg)
        require_gpus(cfg["experts"]["gpus_per_expert"], "experts.gpus_per_expert")
        results = train_missing(cfg, store, manifest, todo)
        log_experts(cfg, store, sorted(results))
    summary = summarize(store, manifest, results, cfg["experts"]["num"] - len(todo), time.time() - started)
    print(format_summary(summary))
    return summary
