"""Experts per hour of ``raydd experts`` with 1 and with 2 parallel Ray workers.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/experts_throughput.py --train 10000  # the recorded run
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/experts_throughput.py --train 2000 --experts 2 --epochs 1  # smoke

Runs the stage's own ``run(cfg)`` on a Fashion-MNIST subset (the first ``--train`` training and
``--test`` test images, written as raydd Parquet shards so the stage reads them like any
dataset), ConvNet-3 at ``--width`` (16, the embedded default), ``cpus_per_expert=1`` (one torch thread per expert), once in a
Ray session with 1 CPU (experts run one after another) and once with 2 CPUs (two at a time).
Target: 2 workers >= 1.6× the experts/hour of 1 on this 2-core machine.
Writes ``benchmarks/results/experts_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from raydd.config import compose
from raydd.data.parquet import write_split
from raydd.data.registry import load_dataset
from raydd.experts.stage import run
from raydd.storage.fs import resolve


def write_subset(root: Path, train: int, test: int) -> str:
    spec, tr, te = load_dataset(compose([])["dataset"])
    loc = resolve(str(root / "fmnist-subset"))
    write_split(tr.subset(torch.arange(train)), loc, "train", spec.num_classes)
    write_split(te.subset(torch.arange(test)), loc, "test", spec.num_classes)
    return loc.uri


def one_setting(workers: int, data_uri: str, root: Path, a: argparse.Namespace) -> dict:
    cfg = compose(["dataset=fashion_mnist", f"dataset.uri={data_uri}", f"model.width={a.width}", f"storage.root={root / f'w{workers}-{time.time_ns()}'}",
                   f"experts.num={a.experts}", f"experts.epochs={a.epochs}", "experts.cpus_per_expert=1"])
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
    load = [round(x, 2) for x in os.getloadavg()]
    start = time.time()
    try:
        summary = run(cfg)
    finally:
        ray.shutdown()
    return {"workers": workers, "wall_s": round(time.time() - start, 1), "loadavg_start": load,
            "experts_per_hour": round(summary["experts_per_hour"], 1), "stage_seconds": summary["seconds"],
            "cpu_seconds_per_expert": round(summary["cpu_seconds_per_expert"], 1),
            "test_acc_final_mean": summary["test_acc_final_mean"], "bytes_written": summary["bytes_written"]}


def markdown(r: dict) -> str:
    lines = ["# Expert training throughput: 1 vs 2 parallel workers", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']['cpus']} CPU cores (load averages below: other work on the machine slows both settings), no GPU.  ",
             f"Workload: `raydd experts` stage, {r['experts']} experts × {r['epochs']} epochs of ConvNet-3 width {r['width']} on the "
             f"first {r['train']:,} Fashion-MNIST training images (test accuracy on {r['test']:,} test images after every "
             "epoch), DSA on, batch 256, cpus_per_expert=1 (torch threads 1).", "",
             f"The two settings alternate, {r['repeats']} run(s) each, so that changing load from other work hits both.", "",
             "| run | Ray CPUs (parallel experts) | stage seconds | experts/hour | CPU s per expert (task) | "
             "load avg at start (1, 5, 15 min) |",
             "|---|---|---|---|---|---|"]
    for k, t in enumerate(r["results"]):
        lines.append(f"| {k + 1} | {t['workers']} | {t['stage_seconds']} | {t['experts_per_hour']} | "
                     f"{t['cpu_seconds_per_expert']} | {t['loadavg_start']} |")
    lines += ["", f"Mean experts/hour: 1 worker {r['mean_experts_per_hour']['1']:.1f}, "
              f"2 workers {r['mean_experts_per_hour']['2']:.1f}; measured speed-up **{r['speedup']:.2f}×** "
              "(target >= 1.6×).  ",
              f"CPU seconds per expert: 1 worker {r['cpu_per_expert']['1']:.1f}, 2 workers {r['cpu_per_expert']['2']:.1f}: "
              f"on two otherwise idle cores 2 workers would give 2 × {r['cpu_per_expert']['1']:.1f} / "
              f"{r['cpu_per_expert']['2']:.1f} = **{r['cpu_bound_speedup']:.2f}×** (the tasks share nothing but the "
              "cores; the wall-clock figure is lower when other work holds the cores — Ray runs its workers at "
              "nice 15, so they yield to every other process)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    report = {"command": "RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/experts_throughput.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "ray": ray.__version__},
              "width": a.width, "train": a.train, "test": a.test, "experts": a.experts, "epochs": a.epochs, "repeats": a.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        data_uri = write_subset(Path(tmp), a.train, a.test)
        report["results"] = [one_setting(w, data_uri, Path(tmp), a) for _ in range(a.repeats) for w in (1, 2)]
    means = {str(w): statistics.fmean(t["experts_per_hour"] for t in report["results"] if t["workers"] == w) for w in (1, 2)}
    report["mean_experts_per_hour"] = means
    report["speedup"] = means["2"] / means["1"]
    cpu = {str(w): statistics.fmean(t["cpu_seconds_per_expert"] for t in report["results"] if t["workers"] == w)
           for w in (1, 2)}
    report["cpu_per_expert"] = cpu
    report["cpu_bound_speedup"] = 2 * cpu["1"] / cpu["2"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experts_throughput.json").write_text(json.dumps(report, indent=2))
    (out / "experts_throughput.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
