"""Streaming an ImageNet-1K-shaped dataset through Ray Data: peak memory per task, images/s, bytes read.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/streaming.py --baseline-repo /tmp/raydd-before  # the recorded run
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/streaming.py --per-class 4 --classes 50 --fmnist-epochs 0 \
        --memory-limit-gb 0.001 --out /tmp/smoke  # smoke

For each ``--per-class`` size (default 50 and 200 images per class, 1000 classes, 3×64×64): writes the
stand-in with ``raydd data dataset=imagenet1k_standin``, then on a local Ray with 2 CPUs runs the
stages in this process, each in a fresh Ray session: ``experts`` (2 in parallel, 1 CPU each), ``quantize method=ddoq`` (medoid, IPC 10,
two tasks of half the classes each),
a short ``distill`` (MTT, IPC 1, 100 synthetic images per inner step) and ``evaluate`` of that set. A sampler reads every process's resident
memory (``/proc/<pid>/status``) every 0.2 s and keeps the peak per Ray task name and stage; expert
tasks also report their own peak (``getrusage``). ``loader.memory_limit_gb`` stays at its default
(2 GB), so every training split here is streamed. With ``--baseline-repo`` (a checkout of the code
before streaming), one Fashion-MNIST expert is timed with both checkouts, alternately, to show the
in-memory path is as fast as before. Writes ``benchmarks/results/streaming.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import ray
import torch

from raydd.cli import main as raydd
from raydd.config import compose
from raydd.distill import stage as distill_stage
from raydd.evaluate import stage as evaluate_stage
from raydd.experts import stage as experts_stage
from raydd.quantize import stage as quantize_stage

REPO = Path(__file__).resolve().parents[1]


class MemorySampler(threading.Thread):
    """Peak resident memory (MB) per (stage, process title), from /proc every ``period`` seconds."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.stage, self.peaks, self.parts = period, "idle", defaultdict(float), {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                mb = {k: int(v) / 1024 for k, v in re.findall(r"(VmRSS|RssAnon|RssFile|RssShmem):\s+(\d+) kB", status)}
                if "VmRSS" in mb and title.startswith("ray::") and "IDLE" not in title:
                    key = (self.stage, title.split(" ")[0])
                    if mb["VmRSS"] > self.peaks[key]:
                        self.peaks[key], self.parts[key] = mb["VmRSS"], mb

    def split_of(self, stage: str, title: str) -> dict[str, int]:
        """At the sampled peak of ``title`` in ``stage``: private (anon), shared-library (file) and object-store (shmem) MB."""
        return {k: round(v) for k, v in self.parts.get((stage, title), {}).items()}

    def table(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for (stage, title), mb in sorted(self.peaks.items()):
            out[stage][title] = round(mb)
        return dict(out)


def timed(sampler: MemorySampler, stage: str, fn, *args):
    """``fn(*args)`` in a fresh local Ray (2 CPUs), so no worker carries an earlier stage's peak; with its seconds."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    sampler.stage = stage
    start = time.time()
    try:
        result = fn(*args)
    finally:
        seconds = round(time.time() - start, 1)
        sampler.stage = "idle"
        ray.shutdown()
    return result, seconds


def one_size(per_class: int, a: argparse.Namespace, tmp: Path) -> dict:
    data, root = tmp / f"standin-{per_class}", tmp / f"runs-{per_class}"
    common = ["dataset=imagenet1k_standin", f"dataset.num_classes={a.classes}", f"dataset.images_per_class={per_class}",
              f"storage.root={root}", "model=convnet4", f"model.width={a.width}", "seed=0",
              f"loader.memory_limit_gb={a.memory_limit_gb}"]
    cfg = compose([*common, f"dataset.uri={data}", "experts.num=2", "experts.epochs=1", "experts.cpus_per_expert=1",
                   "method=mtt", "ipc=1", "distill.iterations=3", "distill.syn_steps=4", "distill.expert_epochs=1",
                   "distill.max_start_epoch=1", "distill.batch_syn=100", "distill.eval_every=0", "evaluate.epochs=5", "evaluate.num_models=1"])
    train_rows = a.classes * per_class
    sampler = MemorySampler()
    sampler.start()
    try:
        code, gen_s = timed(sampler, "data", raydd, ["data", *common, f"data.out={data}"])
        assert code == 0
        on_disk = sum(f.stat().st_size for f in (data / "train").iterdir())
        experts, experts_s = timed(sampler, "experts", experts_stage.run, cfg)
        qcfg = compose([*common, f"dataset.uri={data}", "method=ddoq", f"ipc={min(10, per_class)}",
                        "quantize.prototype=medoid", f"quantize.classes_per_task={a.classes // 2}"])
        _, quantize_s = timed(sampler, "quantize", quantize_stage.run, qcfg)
        distilled, distill_s = timed(sampler, "distill", distill_stage.run, cfg, experts["store"])
        evaluated, evaluate_s = timed(sampler, "evaluate", evaluate_stage.run, cfg, distilled["set"])
    finally:
        sampler.stopped.set()
    return {"per_class": per_class, "classes": a.classes, "train_images": train_rows,
            "generate_s": gen_s, "generate_images_per_s": round(train_rows / gen_s), "train_bytes_on_disk": on_disk,
            "experts_s": experts_s, "expert_task_peak_rss_mb": round(experts["peak_rss_mb"]),
            "experts_images_per_s": round(2 * train_rows / experts["seconds"]), "experts_bytes_read": experts["bytes_read"],
            "quantize_s": quantize_s, "distill_s": distill_s, "evaluate_s": evaluate_s,
            "eval_acc": evaluated["summary"], "peak_rss_mb_by_task": sampler.table(),
            "expert_task_at_peak": sampler.split_of("experts", "ray::train_and_commit")}


def fmnist_expert_seconds(repo: Path, root: Path, epochs: int) -> float:
    """One Fashion-MNIST expert (in memory) trained by ``raydd experts`` from ``repo``: the stage's seconds."""
    out = subprocess.run([sys.executable, "-m", "raydd", "experts", "experts.num=1", f"experts.epochs={epochs}",
                          f"storage.root={root}"],
                         env={**os.environ, "PYTHONPATH": str(repo), "RAYDD_CONFIG_DIR": str(repo / "raydd" / "configs")}, cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"MB written in (\d+) s", out).group(1))


def markdown(r: dict) -> str:
    lines = ["# Streaming an ImageNet-1K-shaped dataset through Ray Data", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']['cpus']} CPU cores, {r['machine']['memory_gb']} GB, no GPU. One local Ray with 2 CPUs.  ",
             f"Data: `raydd data dataset=imagenet1k_standin` ({r['sizes'][0]['classes']} classes, 3×64×64 uint8, "
             "Parquet shards of 10,000 rows); every training split here is over `loader.memory_limit_gb=2`, so it is "
             f"streamed. Models: ConvNet-4 width {r['width']}.", "",
             "| images per class | train images | on disk | generate (images/s) | experts: 2 × 1 epoch, s | "
             "images/s (2 experts) | expert task peak RSS | bytes read by experts | DDOQ s | distill s | evaluate s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["sizes"]:
        lines.append(f"| {s['per_class']} | {s['train_images']:,} | {s['train_bytes_on_disk'] / 1e9:.2f} GB | "
                     f"{s['generate_s']} s ({s['generate_images_per_s']:,}) | {s['experts_s']} | {s['experts_images_per_s']:,} | "
                     f"{s['expert_task_peak_rss_mb']:,} MB | {s['experts_bytes_read'] / 1e9:.2f} GB | {s['quantize_s']} | "
                     f"{s['distill_s']} | {s['evaluate_s']} |")
    lines += ["", "An expert task at its sampled peak (MB): "
              + "; ".join(f"{s['per_class']}/class: " + ", ".join(f"{k} {v:,}" for k, v in s["expert_task_at_peak"].items())
                          for s in r["sizes"])
              + " (RssAnon: the task's own memory; RssFile: shared libraries such as libtorch; RssShmem: pages of "
              "Ray's object store it has mapped: the blocks it streams, each dropped from the task's page tables once consumed).", "",
              "Peak resident memory (MB) per Ray process title and stage (sampled every 0.2 s):", ""]
    for s in r["sizes"]:
        for stage, titles in s["peak_rss_mb_by_task"].items():
            lines.append(f"- {s['per_class']}/class, {stage}: " + ", ".join(f"`{t}` {mb:,}" for t, mb in titles.items()))
    if r.get("fmnist"):
        f = r["fmnist"]
        lines += ["", f"Fashion-MNIST in memory (one expert, {f['epochs']} epochs, width 16, stage seconds, alternating): "
                  f"before streaming {f['before']} s, now {f['now']} s; ratio now/before **{f['ratio']:.2f}**."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, nargs="+", default=[50, 200])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--memory-limit-gb", type=float, default=2.0)
    p.add_argument("--baseline-repo", type=Path, default=None)
    p.add_argument("--fmnist-epochs", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    report = {"command": "RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/streaming.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "ray": ray.__version__, "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)},
              "width": a.width}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part: a later failure keeps what was measured
        (out / "streaming.json").write_text(json.dumps(report, indent=2))
        (out / "streaming.md").write_text(markdown(report))

    with tempfile.TemporaryDirectory() as tmp:
        report["sizes"] = []
        for n in a.per_class:
            report["sizes"].append(one_size(n, a, Path(tmp)))
            save()
        if a.baseline_repo and a.fmnist_epochs:
            times = {"before": [], "now": []}
            for k in range(2):
                for name, repo in (("before", a.baseline_repo), ("now", REPO)):
                    times[name].append(fmnist_expert_seconds(repo, Path(tmp) / f"fm-{name}-{k}", a.fmnist_epochs))
            report["fmnist"] = {"epochs": a.fmnist_epochs, "before": times["before"], "now": times["now"],
                                "ratio": sum(times["now"]) / sum(times["before"])}
    save()
    print(markdown(report))


if __name__ == "__main__":
    main()
