"""``raydd evaluate``: evaluate a distilled set, or the random/full baseline, with K models per architecture."""

from __future__ import annotations

from typing import Any

from raydd.data.registry import load_dataset
from raydd.evaluate.baselines import full_set, random_set
from raydd.evaluate.run import evaluate_set, format_summary, recipe, summarize, write_results
from raydd.runtime import init_ray
from raydd.storage.distilled import load_set, record_evaluation, save_set
from raydd.storage.layout import set_location


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    spec, train, test = load_dataset(cfg["dataset"])
    loc = set_location(cfg)
    method = cfg["method"]["name"]
    if method == "random":
        ds = random_set(train, spec, cfg["ipc"], cfg["seed"])
        save_set(ds, loc, spec)
    elif method == "full":
        ds = full_set(train, spec)
    else:
        ds = load_set(loc)
    init_ray(cfg)
    rows = evaluate_set(ds, cfg, spec, test)
    summary = summarize(rows)
    write_results(loc, rows, summary, {"method": method, "ipc": None if method == "full" else cfg["ipc"],
                                       "dataset": spec.name, "set": loc.uri, "set_size": len(ds)})
    if method != "full":  # the full baseline has no set.parquet
        record_evaluation(loc, {"recipe": recipe(cfg, ds), "accuracy": summary})
    print(f"{method} ipc={cfg['ipc'] if method != 'full' else 'all'} on {spec.name} → {loc.uri}")
    print(format_summary(summary))
    return summary
