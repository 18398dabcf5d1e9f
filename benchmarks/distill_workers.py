"""Synthetic images updated per second with 1 vs 2 Ray Train workers (IPC 50, Fashion-MNIST).

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/distill_workers.py --root runs/bench

Trains (or reuses) a ConvNet-3 width-16 expert store under ``--root`` (the demo's by default:
4 experts × 6 epochs). The exact sharded objective: each worker owns a class-stratified half of
the 500 images, both follow one student trajectory, and every inner step's whole-set mini-batch
is split between them (one all-reduce of the network's gradient per step forward, one of the
adjoint per step backward). Throughput = images / (mean seconds per outer iteration, first
iteration excluded), from the run's own per-iteration timings; the all-reduce volume per
iteration is the run's own count. Writes ``benchmarks/results/distill_workers.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--syn-steps", type=int, default=10)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--expert-epochs", type=int, default=6)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from raydd.config import compose
    from raydd.distill import stage as distill
    from raydd.experts import stage as experts
    from raydd.storage.fs import resolve

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows = []
    for workers in (1, 2):
        cfg = compose(["dataset=fashion_mnist", f"model.width={args.width}", f"storage.root={args.root}", "ipc=50",
                       f"experts.num={args.experts}", f"experts.epochs={args.expert_epochs}", f"workers={workers}",
                       f"distill.iterations={args.iterations}", f"distill.syn_steps={args.syn_steps}",
                       "distill.batch_syn=null", "distill.max_start_epoch=4", "distill.eval_every=0", f"distill.checkpoint_every={args.iterations}",
                       "distill.cpus_per_worker=1", f"run_name=workers{workers}-ipc50"])
        experts.run(cfg)
        out = resolve(distill.run(cfg)["set"])
        curve = pd.read_csv(out.join("distill_metrics.csv").path)
        per_iter = statistics.fmean(curve["seconds"].tolist()[1:])
        rows.append({"workers": workers, "images": 500, "s_per_iteration": per_iter, "images_per_s": 500 / per_iter,
                     "allreduce_mb": float(curve["allreduce_mb"].mean())})
        print(rows[-1], flush=True)
    rows[1]["speedup"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    meta = {"command": "python " + " ".join(sys.argv), "machine": f"{os.cpu_count()} CPU cores, no GPU",
            "setup": f"Fashion-MNIST IPC 50 (500 images), ConvNet-3 width {args.width}, syn_steps {args.syn_steps}, "
                     f"whole set per inner step (split between the workers), {args.iterations} iterations, "
                     "1 CPU and 1 torch thread per worker, gloo, exact sharded objective"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill_workers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Distillation throughput vs Ray Train workers", "", f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}  ", f"Setup: {meta['setup']}.", "",
             "| workers | s / outer iteration | images updated / s | speed-up | all-reduce MB / iteration / worker |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['s_per_iteration']:.2f} | {r['images_per_s']:.1f} | {r.get('speedup', 1.0):.2f} | "
              f"{r['allreduce_mb']:.2f} |" for r in rows]
    (RESULTS / "distill_workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
