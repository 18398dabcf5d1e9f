"""Full-width Fashion-MNIST on one GPU: experts, MTT at IPC 10, evaluation; seconds, GPU memory, accuracy.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/gpu_fmnist.py --root /tmp/raydd-gpu   # (gpu_check.sh runs it)

ConvNet-3 width 128 (instance norm), DSA, no ZCA. Experts train four at a time on the one GPU
(``experts.gpus_per_expert=0.25``); distillation runs on one Ray Train worker with the GPU;
three evaluation models share it. Writes ``benchmarks/results/gpu_fmnist.{json,md}`` with the GPU's name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/raydd-gpu")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-epochs", type=int, default=15)
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from raydd.config import compose
    from raydd.distill import stage as distill
    from raydd.evaluate import stage as evaluate
    from raydd.experts import stage as experts
    from raydd.storage.fs import resolve

    ray.init(include_dashboard=False, logging_level="ERROR")
    overrides = [f"storage.root={args.root}", "model.width=128", "ipc=10", f"experts.num={args.experts}",
                 f"experts.epochs={args.expert_epochs}", "experts.gpus_per_expert=0.25", "experts.cpus_per_expert=1",
                 f"distill.iterations={args.iterations}", "distill.syn_steps=20", "distill.max_start_epoch=10",
                 "distill.gpus_per_worker=1", "distill.cpus_per_worker=2", "distill.eval_every=250",
                 "distill.checkpoint_every=250", "evaluate.gpus_per_model=0.33", "run_name=gpu-fmnist-mtt-ipc10"]
    cfg = compose(overrides)
    tic = time.time()
    expert_summary = experts.run(cfg)
    t_experts = time.time() - tic
    out = distill.run(cfg, expert_summary["store"])["set"]
    curve = pd.read_csv(resolve(out).join("distill_metrics.csv").path)
    distilled = evaluate.run(cfg, out)["summary"]["convnet"]
    random = evaluate.run(compose([*overrides, "method=random", "run_name=gpu-fmnist-random-ipc10"]))["summary"]["convnet"]
    row = {"gpu": torch.cuda.get_device_name(), "experts": args.experts, "expert_epochs": args.expert_epochs,
           "experts_s": round(t_experts, 1), "expert_summary": expert_summary, "iterations": args.iterations,
           "s_per_iteration": statistics.median(curve["seconds"].tolist()[1:]), "gpu_mem_mb": float(curve["gpu_mem_mb"].max()),
           "rejected": int(curve["rejected"].iloc[-1]), "distilled": distilled, "random": random}
    meta = {"command": "python " + " ".join(sys.argv), "overrides": overrides}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_fmnist.json").write_text(json.dumps({"meta": meta, "row": row}, indent=2, default=str))
    text = "\n".join([
        f"# Full-width Fashion-MNIST on {row['gpu']}", "", f"Command: `{meta['command']}`  ",
        f"Overrides: `{' '.join(overrides)}`", "",
        "| experts (s) | s / outer iteration (median) | GPU memory (MB, peak) | rejected | MTT IPC 10 (%) | random real (%) |",
        "|---|---|---|---|---|---|",
        f"| {row['experts_s']} | {row['s_per_iteration']:.3f} | {row['gpu_mem_mb']:.0f} | {row['rejected']} / {args.iterations} | "
        f"{distilled['mean']:.2f} ± {distilled['std']:.2f} | {random['mean']:.2f} ± {random['std']:.2f} |"]) + "\n"
    (RESULTS / "gpu_fmnist.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
