"""Where each stage reads and writes under ``storage.root``.

Stores and sets are named by what they are plus a short digest of the settings that define them, so a
changed setting gives a new folder and identical settings find the same one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from raydd.specs import ModelSpec
from raydd.storage.fs import Location, resolve

# Settings that decide where or how fast something runs, or where its input is read from, not what it
# makes: left out of the digests that name stores and sets.
EXPERTS_ORCHESTRATION_KEYS = ("num", "cpus_per_expert", "gpus_per_expert", "max_retries", "store")
DATA_LOCATION_KEYS = ("root", "endpoint_url")
DISTILL_ORCHESTRATION_KEYS = ("cpus_per_worker", "gpus_per_worker", "checkpoint_every", "max_failures", "log_every",
                              "eval_every", "eval_epochs", "eval_test_size", "heap", "kept_graphs")
QUANTIZE_ORCHESTRATION_KEYS = ("classes_per_task", "cpus_per_task", "gpus_per_task")
EVALUATE_ORCHESTRATION_KEYS = ("set", "cpus_per_model", "gpus_per_model")


def root(cfg: dict[str, Any]) -> Location:
    return resolve(cfg["storage"]["root"], cfg["storage"].get("endpoint_url"))


def model_tag(model: dict[str, Any]) -> str:
    return ModelSpec.from_config(model).tag


def store_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What determines an expert store's trajectories: expert training, dataset, model, seed and ZCA
    (not where or how fast the experts train, nor where the dataset is read from). ``experts.waypoints``
    counts only in a waypoints store and ``experts.lr_decay_epoch`` only when set, so stores keep the digests they
    had before those keys."""
    e = cfg["experts"]
    skip = (*EXPERTS_ORCHESTRATION_KEYS, *(["waypoints"] if e["form"] != "waypoints" else []),
            *(["lr_decay_epoch"] if e.get("lr_decay_epoch") is None else []))
    return {"experts": {k: v for k, v in e.items() if k not in skip},
            "dataset": {k: v for k, v in cfg["dataset"].items() if k not in DATA_LOCATION_KEYS},
            "model": cfg["model"], "seed": cfg["seed"], "zca": bool(cfg["zca"]),
            "shuffle_shards": cfg["loader"]["shuffle_shards"]}


def experts_location(cfg: dict[str, Any]) -> Location:
    """``experts.store``, else ``experts/<dataset>-<model>-<variant>[-<form>][-zca]-<digest of store_settings>``
    (no form tag for the full form)."""
    e = cfg["experts"]
    if e.get("store"):
        return resolve(e["store"], cfg["storage"].get("endpoint_url"))
    tag = "-".join([cfg["dataset"]["name"], model_tag(cfg["model"]), e["variant"], *([e["form"]] if e["form"] != "full" else []),
                    *(["zca"] if cfg.get("zca") else []), digest(store_settings(cfg))])
    return root(cfg).join("experts", tag)


def run_name(cfg: dict[str, Any]) -> str:
    """``run_name``, or method[-encoder[-medoid]][-ipcK]-dataset-model: the settings that make the set differ."""
    if cfg.get("run_name"):
        return cfg["run_name"]
    method, q = cfg["method"], cfg["quantize"]
    parts = [method["name"]]
    if method["stage"] == "quantize":
        parts += [q["encoder"], *(["medoid"] if q.get("prototype") == "medoid" else [])]
    if method["name"] != "full":  # the full baseline is the whole training set at any IPC
        parts.append(f"ipc{cfg['ipc']}")
    return "-".join([*parts, cfg["dataset"]["name"], model_tag(cfg["model"])])


def digest(settings: Any) -> str:
    """A short sha256 of ``settings`` in canonical JSON: the suffix that tells apart what they define."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def set_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What determines the configured method's set: its method, IPC, seed and data, plus the settings of
    the stage that makes it (distillation and its expert store, or quantization)."""
    method = cfg["method"]
    data = {k: v for k, v in cfg["dataset"].items() if k not in DATA_LOCATION_KEYS}
    if method["stage"] == "baseline":
        return {"method": method["name"], "dataset": data, **({} if method["name"] == "full" else {"ipc": cfg["ipc"], "seed": cfg["seed"]})}
    common = {"method": method["name"], "ipc": cfg["ipc"], "seed": cfg["seed"], "dataset": data}
    if method["stage"] == "quantize":
        return {**common, "quantize": {k: v for k, v in cfg["quantize"].items() if k not in QUANTIZE_ORCHESTRATION_KEYS}}
    return {**common, "model": cfg["model"], "experts": cfg["experts"].get("store") or store_settings(cfg),
            "distill": {k: v for k, v in cfg["distill"].items() if k not in DISTILL_ORCHESTRATION_KEYS}}


def set_location(cfg: dict[str, Any]) -> Location:
    """Where the configured method writes its set: ``sets/<run_name>-<digest of set_settings>``; never ``evaluate.set``."""
    return root(cfg).join("sets", f"{run_name(cfg)}-{digest(set_settings(cfg))}")


def evaluated_set(cfg: dict[str, Any]) -> Location:
    """The set ``raydd evaluate`` reads: ``evaluate.set``, else the configured method's own set."""
    if cfg["evaluate"].get("set"):
        return resolve(cfg["evaluate"]["set"], cfg["storage"].get("endpoint_url"))
    return set_location(cfg)


def evaluation_location(cfg: dict[str, Any], set_loc: Location) -> Location:
    """Where an evaluation of the set at ``set_loc`` writes its metrics: under ``storage.root``, never inside
    the set, named by the set and a digest of the set's URI and the evaluation settings."""
    settings = {"set": set_loc.uri, "seed": cfg["seed"], "model": cfg["model"],
                "evaluate": {k: v for k, v in cfg["evaluate"].items() if k not in EVALUATE_ORCHESTRATION_KEYS}}
    return root(cfg).join("evals", f"{set_loc.uri.rstrip('/').rsplit('/', 1)[-1]}-{digest(settings)}")
