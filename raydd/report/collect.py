"""What a storage root holds, read into plain records for the report (missing pieces are None, not errors)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from raydd.storage.distilled import read_metadata
from raydd.storage.fs import Location
from raydd.storage.trajectory import MANIFEST, TrajectoryStore
from raydd.tune.report import trial_row


@dataclass
class SetRun:
    """``sets/<name>/``: the set's metadata, grid, per-iteration metrics and evaluation."""

    name: str
    meta: dict[str, Any] | None          # None: no set.parquet (the full baseline)
    grid: bytes | None
    metrics: pd.DataFrame | None         # distill_metrics.csv
    evaluation: dict[str, Any] | None    # eval.json


@dataclass
class ExpertRun:
    """``experts/<tag>/``: the store's meta and each expert's per-epoch metrics."""

    name: str
    meta: dict[str, Any]
    metrics: dict[int, dict[str, list]]


@dataclass
class Trial:
    trial: str
    params: dict[str, Any]
    history: pd.DataFrame                # one row per report: iteration, loss, eval_acc, ...
    status: str


@dataclass
class Sweep:
    """``tune/<name>/``: its trials' report histories, results table and plots."""

    name: str
    trials: list[Trial]
    results: pd.DataFrame | None
    plots: dict[str, bytes] = field(default_factory=dict)


def subdirs(loc: Location) -> list[str]:
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
        return []
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))


def files(loc: Location, suffix: str) -> list[str]:
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))


def read_optional(loc: Location) -> bytes | None:
    return loc.read_bytes() if loc.exists() else None


def read_csv(loc: Location) -> pd.DataFrame | None:
    data = read_optional(loc)
    return pd.read_csv(io.BytesIO(data)) if data else None


def read_json(loc: Location) -> Any:
    data = read_optional(loc)
    return json.loads(data) if data else None


def undigested(name: str) -> str:
    """A set folder's name without its settings digest (``sets/<run_name>-<digest>``)."""
    return re.sub(r"-[0-9a-f]{8}$", "", name)


def collect_sets(root: Location) -> list[SetRun]:
    """Every set under ``sets/`` and every evaluated set under ``evals/<set folder>-<digest>/`` (the full baseline
    has an evaluation but no set); a set's evaluation is its first under ``evals/``."""
    evaluated: dict[str, Location] = {}
    for name in subdirs(root.join("evals")):
        evaluated.setdefault(undigested(name), root.join("evals", name))
    runs = []
    for name in sorted(set(subdirs(root.join("sets"))) | set(evaluated)):
        loc = root.join("sets", name)
        meta = read_metadata(loc) if loc.join("set.parquet").exists() else None
        evaluation = read_json(evaluated[name].join("eval.json")) if name in evaluated else None
        if meta is None and evaluation is None:
            continue
        runs.append(SetRun(name, meta, read_optional(loc.join("grid.png")), read_csv(loc.join("distill_metrics.csv")),
                           evaluation))
    return runs


def baseline_names(name: str) -> tuple[str, str] | None:
    """The random-real set at the same IPC and the full set of a run named ``<method…>-ipc<K>-<dataset>-<model>``."""
    match = re.search(r"-ipc(\d+)-(.+)$", undigested(name))
    return (f"random-ipc{match.group(1)}-{match.group(2)}", f"full-{match.group(2)}") if match else None


def collect_experts(root: Location) -> list[ExpertRun]:
    runs = []
    for name in subdirs(root.join("experts")):
        loc = root.join("experts", name)
        if not loc.join(MANIFEST).exists():
            continue
        store = TrajectoryStore.open(loc)
        runs.append(ExpertRun(name, store.meta, {e: store.metrics(e) for e in store.experts}))
    return runs


def read_trial(loc: Location, statuses: dict[str, str]) -> Trial | None:
    """A Tune trial directory: ``result.json`` (one JSON line per report) and ``params.json``."""
    data = read_optional(loc.join("result.json"))
    if not data:
        return None
    reports = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    history = pd.DataFrame([{k: v for k, v in r.items() if k != "config"} for r in reports])
    params = read_json(loc.join("params.json")) or {}
    error = RuntimeError("trial failed") if loc.join("error.txt").exists() else None
    row = trial_row(params, history, reports[-1], error, [])
    return Trial(row["trial"], params, history, statuses.get(row["trial"], row["status"]))


def collect_sweeps(root: Location) -> list[Sweep]:
    sweeps = []
    for name in subdirs(root.join("tune")):
        loc = root.join("tune", name)
        results = read_csv(loc.join("results.csv"))
        statuses = dict(zip(results["trial"], results["status"])) if results is not None else {}
        trials = [t for d in subdirs(loc) if (t := read_trial(loc.join(d), statuses)) is not None]
        if trials:
            plots = {f: loc.join(f).read_bytes() for f in files(loc, ".png")}
            sweeps.append(Sweep(name, trials, results, plots))
    return sweeps
