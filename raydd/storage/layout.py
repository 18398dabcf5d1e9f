"""Where each stage reads and writes under ``storage.root``."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from raydd.storage.fs import Location, resolve

EVALUATE_ORCHESTRATION_KEYS = ("set", "cpus_per_model", "gpus_per_model")


def root(cfg: dict[str, Any]) -> Location:
    return resolve(cfg["storage"]["root"], cfg["storage"].get("endpoint_url"))


def model_tag(model: dict[str, Any]) -> str:
    if model["name"] == "convnet":
        return f"convnet{model.get('depth', 3)}w{model.get('width', 128)}{'' if model.get('norm', 'instance') == 'instance' else model['norm']}"
    return model["name"]


def experts_location(cfg: dict[str, Any]) -> Location:
    """The trajectory store of the configured dataset, model and expert training variant."""
    e = cfg["experts"]
    if e.get("store"):
        return resolve(e["store"], cfg["storage"].get("endpoint_url"))
    tag = "-".join([cfg["dataset"]["name"], model_tag(cfg["model"]), e["variant"], *(["convex"] if e["form"] == "convex" else []),
                    *(["zca"] if cfg.get("zca") else [])])
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


def set_location(cfg: dict[str, Any]) -> Location:
    """Where the configured method writes its distilled (or baseline) set; never ``evaluate.set``."""
    return root(cfg).join("sets", run_name(cfg))


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
