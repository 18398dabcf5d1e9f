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
    set_uri, experts_acc = cfg["evaluate"].get("set"), None
    if not set_uri:
        if method["stage"] == "distill":
            store_uri = experts_stage.run(cfg)["store"]  # skips experts already in the store
            made = distill_stage.run(cfg, store_uri)
            set_uri, experts_acc = made["set"], made.get("experts_test_acc")
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
    weak = weak_experts(experts_acc, cfg["model"]["name"], rows)
    if weak:
        print(f"warning: {weak}")
    report_stage.run(cfg)  # the HTML report over storage.root; prints its path
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | IPC | model | distilled acc (%) | random-real acc (%) | gain |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['ipc']} | {r['model']} | {r['distilled']:.2f} ± {r['distilled_std']:.2f} | "
              f"{r['random']:.2f} ± {r['random_std']:.2f} | {r['distilled'] - r['random']:+.2f} |" for r in rows]
    return "\n".join(lines)


def weak_experts(experts_acc: float | None, arch: str, rows: list[dict[str, Any]]) -> str | None:
    """What to tell the user when the experts (test accuracy ``experts_acc``, a fraction, on ``arch``) end below
    random real on that architecture: a set matching them is capped near them."""
    random = next((r["random"] for r in rows if r["model"] == arch), None)
    if experts_acc is None or random is None or 100 * experts_acc > random:
        return None
    return (f"the experts end at {100 * experts_acc:.2f}% test accuracy, under random real's {random:.2f}% at this IPC: "
            "a set matching them seldom gets past them; train them longer or at a higher experts.lr "
            "(benchmarks/results/large_ipc.md)")
