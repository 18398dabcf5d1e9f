"""The learned inner lr: the reference's plain parameterisation vs log(lr), with the back-off guard.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/distill_lr.py --root runs

A. The issue's example, `raydd distill dataset=digits method=mtt ipc=1 distill.iterations=5` with
   the default settings, on 1 and 2 Ray Train workers: rejected steps, the final lr, the outcome.
B. The F-MNIST demo (the embedded default: ConvNet-3 width 16, 4 experts × 6 epochs, MTT IPC 10,
   100 iterations) distilled with each parameterisation and evaluated like `make demo`
   (3 ConvNets × 300 epochs), against random real images. Reuses the demo's expert store under --root.
Writes ``benchmarks/results/distill_lr.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def digits_example(root: str, lr_param: str, workers: int) -> dict:
    from raydd.config import compose
    from raydd.distill import stage as distill
    from raydd.errors import RayddError
    from raydd.experts import stage as experts
    from raydd.storage.fs import resolve

    cfg = compose(["dataset=digits", "method=mtt", "ipc=1", "distill.iterations=5", f"workers={workers}",
                   f"distill.lr_param={lr_param}", f"storage.root={root}", f"run_name=lr-{lr_param}-w{workers}"])
    store = experts.run(cfg)["store"]
    row = {"part": "digits ipc 1", "lr_param": lr_param, "workers": workers}
    try:
        out = resolve(distill.run(cfg, store)["set"])
        curve = pd.read_csv(out.join("distill_metrics.csv").path)
        row |= {"rejected": int(curve["rejected"].iloc[-1]), "steps": len(curve), "final_lr": float(curve["lr"].iloc[-1]),
                "outcome": "set written"}
    except RayddError as e:
        row |= {"outcome": f"error: {str(e)[:160]}"}
    return row


def demo(root: str, lr_param: str) -> dict:
    from raydd.config import compose
    from raydd.distill import stage as distill
    from raydd.evaluate import stage as evaluate
    from raydd.experts import stage as experts
    from raydd.storage.fs import resolve

    cfg = compose([f"storage.root={root}", f"distill.lr_param={lr_param}", f"run_name=demo-lr-{lr_param}"])
    out = distill.run(cfg, experts.run(cfg)["store"])["set"]
    curve = pd.read_csv(resolve(out).join("distill_metrics.csv").path)
    acc = evaluate.run(cfg, out)["summary"]["convnet"]
    return {"part": "fmnist demo", "lr_param": lr_param, "workers": 1, "rejected": int(curve["rejected"].iloc[-1]),
            "steps": len(curve), "final_lr": float(curve["lr"].iloc[-1]), "acc": acc["mean"], "acc_std": acc["std"],
            "outcome": "set written"}


def random_real(root: str) -> dict:
    from raydd.config import compose
    from raydd.evaluate import stage as evaluate

    acc = evaluate.run(compose([f"storage.root={root}", "method=random", "run_name=demo-lr-random"]))["summary"]["convnet"]
    return {"part": "fmnist demo", "lr_param": "random real", "acc": acc["mean"], "acc_std": acc["std"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs")
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows = [digits_example(args.root, p, w) for p in ("plain", "log") for w in (1, 2)]
    if not args.skip_demo:
        rows += [demo(args.root, p) for p in ("plain", "log")] + [random_real(args.root)]
    for r in rows:
        print(r, flush=True)
    meta = {"command": "python " + " ".join(sys.argv), "machine": f"{os.cpu_count()} CPU cores, no GPU"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill_lr.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# The learned inner lr: plain (reference) vs log(lr)", "", f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}.  ", "Both with the back-off guard (a step rolled back for its lr halves the lr's "
             "own learning rate); log(lr) starts with the step plain SGD would take (lr_lr / lr_init²).", "",
             "| run | lr_param | workers | rejected / steps | final lr | accuracy (%) | outcome |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['acc']:.2f} ± {r['acc_std']:.2f}" if "acc" in r else "–"
        steps = f"{r['rejected']} / {r['steps']}" if "steps" in r else "–"
        lr = f"{r['final_lr']:.4g}" if "final_lr" in r else "–"
        lines.append(f"| {r['part']} | {r['lr_param']} | {r.get('workers', '–')} | {steps} | {lr} | {acc} | {r.get('outcome', '')} |")
    (RESULTS / "distill_lr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
