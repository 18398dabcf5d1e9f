"""A Ray Tune sweep on Fashion-MNIST through ``raydd tune``'s own code path: IPC {1, 10} x AST's
intermediate-matching loss weight, ASHA within each IPC, each trial a Ray Train distillation + evaluation.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/tune_sweep.py              # the recorded run
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/tune_sweep.py --iterations 20 --eval-every 10 \\
        --models 1 --eval-epochs 20 --name tune_smoke --out /tmp/tune-smoke     # smoke

It reads an existing expert store (``--store``; trials only read it) when its manifest is there,
else ``raydd tune`` trains one first under ``--root``. Writes ``tune_fashion_mnist.{csv,md,json}``,
the plots and the exported best config into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import ray
import torch

from raydd.config import compose, validate
from raydd.runtime import init_ray
from raydd.storage.layout import root
from raydd.tune import stage


def overrides(args: argparse.Namespace, store: Path | None) -> list[str]:
    """The ``raydd tune`` command line of this sweep."""
    weights = ",".join(str(w) for w in args.weights)
    ipcs = ",".join(str(i) for i in sorted(args.ipcs, reverse=True))
    return [
        "dataset=fashion_mnist", "method=ast", f"model.width={args.width}", f"storage.root={args.root}",
        # AST's distillation on plain (MTT) experts: the store that exists; AST's smooth experts need their own
        "experts.variant=plain", "experts.momentum=0.0", "experts.weight_decay=0.0", "experts.clip_epochs=0",
        "experts.gradient_penalty=0.0", f"experts.num={args.experts}", f"experts.epochs={args.expert_epochs}",
        *([f"experts.store={store}"] if store else []),
        f"distill.iterations={args.iterations}", f"distill.syn_steps={args.syn_steps}", "distill.expert_epochs=2",
        f"distill.max_start_epoch={args.expert_epochs - 4}", f"distill.eval_every={args.eval_every}",
        f"distill.eval_epochs={args.fast_eval_epochs}", f"distill.checkpoint_every={args.eval_every}",
        f"evaluate.num_models={args.models}", f"evaluate.epochs={args.eval_epochs}",
        f"tune.name={args.name}", f"tune.grace_period={args.eval_every}", "tune.reduction_factor=2",
        f"tune.space={{ipc:{{grid:[{ipcs}]}},distill.intermediate_weight:{{grid:[{weights}]}}}}",
    ]


def markdown(report: dict, table: str) -> str:
    m = report["machine"]
    lines = [
        "# Ray Tune sweep: Fashion-MNIST, AST intermediate-matching weight x IPC", "",
        f"Command: `{report['command']}`  ",
        f"Equivalent: `{report['raydd_command']}`  ",
        f"Machine: {m['cpus']} CPU cores (shared with other work), no GPU; torch {m['torch']}, ray {m['ray']}; "
        f"load average at start {m['loadavg_start']}; wall time of this invocation {report['wall_s']} s"
        + (" (it resumed a sweep that an earlier, interrupted invocation started, whose time is not included)"
           if report["resumed"] else "")
        + f"; trial time, all trials: {report['trial_s']} s.", "",
        *report["notes"], "",
        *table.split("\n", 2)[2].splitlines(),  # the stage's table without its title
        "", "Plots: `tune_fashion_mnist_acc_vs_ipc.png`, `tune_fashion_mnist_acc_vs_distill.intermediate_weight.png`; "
        "best config: `tune_fashion_mnist_best.yaml`.", "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="runs/bench/experts/fashion_mnist-convnet3w16-plain")
    p.add_argument("--root", default="runs", help="storage.root of the sweep (trials, sets, checkpoints)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--experts", type=int, default=4, help="experts to train when --store has none")
    p.add_argument("--expert-epochs", type=int, default=10)
    p.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5], help="distill.intermediate_weight values")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--syn-steps", type=int, default=15)
    p.add_argument("--eval-every", type=int, default=50, help="fast evaluation period = ASHA grace period")
    p.add_argument("--fast-eval-epochs", type=int, default=100)
    p.add_argument("--models", type=int, default=2, help="final evaluation models per trial")
    p.add_argument("--eval-epochs", type=int, default=300, help="final evaluation epochs")
    p.add_argument("--name", default="tune_fashion_mnist")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()

    store = Path(args.store) if (Path(args.store) / "manifest.json").exists() else None
    if store:  # every committed expert of the store (trials read them all)
        args.experts = len(json.loads((store / "manifest.json").read_text())["shards"]) or args.experts
    argv = overrides(args, store)
    cfg = compose(argv)
    validate(cfg, "tune")
    report = {
        "command": "RAY_AUTH_MODE=disabled .venv/bin/python " + " ".join(
            ["benchmarks/tune_sweep.py", *map(shlex.quote, sys.argv[1:])]),
        "raydd_command": "raydd tune " + " ".join(map(shlex.quote, argv)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "ray": ray.__version__,
                    "loadavg_start": [round(v, 2) for v in os.getloadavg()]},
        "experts": {"store": str(store) if store else "trained by the sweep", "num": args.experts,
                    "epochs": args.expert_epochs, "model": f"ConvNet-3 width {args.width}"},
    }
    init_ray(cfg)
    report["resumed"] = stage.can_restore(root(cfg).join("tune", args.name))
    start = time.time()
    out = stage.run(cfg)
    report["wall_s"] = round(time.time() - start, 1)
    report["trial_s"] = round(sum(r["time_s"] for r in out["rows"] if not math.isnan(r["time_s"])), 1)
    ray.shutdown()

    sweep, dest = Path(out["sweep"]), Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    d = cfg["distill"]
    report["notes"] = [
        f"Each trial: `raydd distill` (AST: k-means init, balanced inner loss, 1 intermediate matching point, "
        f"weight perturbation, student momentum) for {d['iterations']} iterations, syn_steps {d['syn_steps']}, "
        f"expert_epochs {d['expert_epochs']}, start epochs 0-{d['max_start_epoch'] - 1}, on 1 Ray Train worker; "
        f"a fast evaluation (1 ConvNet, {d['eval_epochs']} epochs, 2,000 test images) every {d['eval_every']} "
        f"iterations feeds ASHA; a finished trial is evaluated like `raydd evaluate` ({args.models} ConvNets, "
        f"{args.eval_epochs} epochs, all 10,000 test images): test acc.",
        f"Experts: {report['experts']['store']} ({args.experts} plain experts x {args.expert_epochs} epochs, "
        f"ConvNet-3 width {args.width}, instance norm); width {args.width} instead of 32 to reuse the store built "
        "on this shared machine (about a quarter of the width-32 cost).",
        "ASHA ranks trials only within the same IPC (`tune.compare_within=[ipc]`), grace = fast-eval period, "
        "reduction factor 2; trials run one at a time (2 CPUs: each trial takes 0.01 CPU + 1 CPU Train worker).",
    ]
    table = (sweep / "results.md").read_text()
    (dest / "tune_fashion_mnist.csv").write_text((sweep / "results.csv").read_text())
    (dest / "tune_fashion_mnist.md").write_text(markdown(report, table))
    for png in out["plots"]:
        (dest / f"tune_fashion_mnist_{png}").write_bytes((sweep / png).read_bytes())
    if out["best_yaml"]:
        (dest / "tune_fashion_mnist_best.yaml").write_text((sweep / "best.yaml").read_text())
    rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in out["rows"]]
    report.update({k: out[k] for k in ("completed", "stopped", "error", "unfinished", "best", "command")},
                  sweep=out["sweep"], rows=rows)
    (dest / "tune_fashion_mnist.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(markdown(report, table))


if __name__ == "__main__":
    main()
