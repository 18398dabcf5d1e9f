"""Where each stage reads and writes under ``storage.root``."""

from __future__ import annotations

from typing import Any

from raydd.storage.fs import Location, resolve


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


def set_location(cfg: dict[str, Any]) -> Location:
    """Where the configured method's distilled (or baseline) set lives."""
    if cfg["evaluate"].get("set"):
        return resolve(cfg["evaluate"]["set"], cfg["storage"].get("endpoint_url"))
    return root(cfg).join("sets", run_name(cfg))
