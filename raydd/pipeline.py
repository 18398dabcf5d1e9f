"""``raydd pipeline``: experts → distill → evaluate (or quantize → evaluate), against random-real, then the report."""

from __future__ import annotations

import importlib
import json
from typing import Any

from raydd.evaluate import stage as evaluate_stage
from raydd.storage.layout import set_location


def run(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    method = cfg["method"]
    if method["stage"] == "distill":
        importlib.import_module("raydd.experts.stage").run(cfg)  # skips experts already in the store
        importlib.import_module("raydd.distill.stage").run(cfg)
    else:
        importlib.import_module("raydd.quantize.stage").run(cfg)
    distilled = evaluate_stage.run(cfg)
    baseline_cfg = {**cfg, "run_name": None, "method": {"name": "random", "stage": "baseline"}}
    baseline = evaluate_stage.run(baseline_cfg)
    rows = [{"method": method["name"], "ipc": cfg["ipc"], "model": arch, "distilled": distilled[arch]["mean"],
             "distilled_std": distilled[arch]["std"], "random": baseline[arch]["mean"], "random_std": baseline[arch]["std"]}
            for arch in distilled]
    set_location(cfg).join("pipeline.json").write_bytes_atomic(json.dumps(rows, indent=2).encode())
    print(format_table(rows))
    importlib.import_module("raydd.report.stage").run(cfg)  # the HTML report over storage.root; prints its path
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | IPC | model | distilled acc (%) | random-real acc (%) | gain |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['ipc']} | {r['model']} | {r['distilled']:.2f} ± {r['distilled_std']:.2f} | "
              f"{r['random']:.2f} ± {r['random_std']:.2f} | {r['distilled'] - r['random']:+.2f} |" for r in rows]
    return "\n".join(lines)
