"""``raydd evaluate``: evaluate a distilled set, or the random/full baseline, with K models per architecture."""

from __future__ import annotations

from typing import Any

from raydd.data.registry import dataset_spec, open_split
from raydd.evaluate.baselines import full_set, random_set
from raydd.evaluate.run import evaluate_set, format_summary, recipe, summarize, write_results
from raydd.runtime import init_ray, require_gpus
from raydd.specs import LoaderSpec, RunSpec
from raydd.storage.distilled import load_set, record_evaluation, save_set
from raydd.storage.fs import resolve
from raydd.storage.layout import evaluated_set, evaluation_location, set_location


def run(cfg: dict[str, Any], set_uri: str | None = None) -> dict[str, Any]:
    """Evaluate the set at ``set_uri`` (else ``evaluate.set``, else the method's set or baseline); metrics go
    under ``<storage.root>/evals/``, never into the evaluated set. Returns the ``set`` URI, the ``metrics``
    folder's URI (``eval.json``, ``eval.csv``) and the ``summary`` per architecture. Real images are read through
    ``open_split`` (the ``loader`` group): the baselines' training split, the test split of every evaluation."""
    spec, method = dataset_spec(cfg["dataset"]), cfg["method"]["name"]
    init_ray(cfg)
    loader = LoaderSpec.from_config(cfg["loader"])
    if set_uri or cfg["evaluate"].get("set"):
        loc = resolve(set_uri, cfg["storage"].get("endpoint_url")) if set_uri else evaluated_set(cfg)
        ds = load_set(loc)
    elif method == "random":
        loc = set_location(cfg)
        ds = random_set(open_split(cfg["dataset"], loader, "train"), spec, cfg["ipc"], cfg["seed"])
        if not loc.join("set.parquet").exists():
            save_set(ds, loc, spec)
    elif method == "full":
        loc, ds = set_location(cfg), full_set(open_split(cfg["dataset"], loader, "train"), spec)
    else:
        loc = set_location(cfg)
        ds = load_set(loc)
    require_gpus(cfg["evaluate"]["gpus_per_model"], "evaluate.gpus_per_model")
    run_spec = RunSpec.from_config(cfg)
    rows = evaluate_set(ds, run_spec, spec, open_split(cfg["dataset"], loader, "test"))
    summary = summarize(rows)
    out = evaluation_location(cfg, loc)
    write_results(out, rows, summary, {"method": ds.meta.get("method", method), "ipc": None if method == "full" else cfg["ipc"],
                                       "dataset": spec.name, "set": loc.uri, "set_size": len(ds)})
    if method != "full" and not (set_uri or cfg["evaluate"].get("set")):  # a set this config made (never a named one)
        record_evaluation(loc, {"recipe": recipe(run_spec, ds), "accuracy": summary})
    print(f"{method} ipc={cfg['ipc'] if method != 'full' else 'all'} on {spec.name}: {loc.uri} → {out.uri}")
    print(format_summary(summary))
    return {"set": loc.uri, "metrics": out.uri, "summary": summary}
