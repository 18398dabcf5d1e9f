"""``raydd pipeline``: experts → distill → evaluate (or quantize → evaluate), against random-real, then the report."""

from __future__ import annotations

import json
from typing import Any

from raydd.distill import stage as distill_stage
from raydd.evaluate import stage as evaluate_stage
from raydd.experts import stage as experts_stage
from raydd.quantize import stage as quantize_stage
from raydd.report import stage as report_stage
from raydd.storage.fs import resolve


def run(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Make the method's set (or take ``evaluate.set`` as it is), evaluate it and the random-real baseline;
    each stage gets the URI the one before returned."""
    method = cfg["method"]
    set_uri = cfg["evaluate"].get("set")
    if not set_uri:
        if method["stage"] == "distill":
            store_uri = experts_stage.run(cfg)["store"]  # skips experts already in the store
            set_uri = distill_stage.run(cfg, store_uri)["set"]
        else:
            set_uri = quantize_stage.run(cfg)["set"]
    distilled = evaluate_stage.run(cfg, set_uri)
    baseline_cfg = {**cfg, "run_name": None, "method": {"name": "random", "stage": "baseline"},
                    "evaluate": {**cfg["evaluate"], "set": None}}
    baseline = evaluate_stage.run(baseline_cfg)["summary"]
    rows = [{"method": method["name"], "ipc": cfg["ipc"], "model": arch, "distilled": s["mean"], "distilled_std": s["std"],
             "random": baseline[arch]["mean"], "random_std": baseline[arch]["std"]}
            for arch, s in distilled["summary"].items()]
    metrics = resolve(distilled["metrics"], cfg["storage"].get("endpoint_url"))
    metrics.join("pipeline.json").write_bytes_atomic(json.dumps(rows, indent=2).encode())
    print(format_table(rows))
    report_stage.run(cfg)  # the HTML report over storage.root; prints its path
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | IPC | model | distilled acc (%) | random-real acc (%) | gain |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['ipc']} | {r['model']} | {r['distilled']:.2f} ± {r['distilled_std']:.2f} | "
              f"{r['random']:.2f} ± {r['random_std']:.2f} | {r['distilled'] - r['random']:+.2f} |" for r in rows]
    return "\n".join(lines)
