"""DDOQ on Fashion-MNIST: test accuracy against D4M and random real images, and quantize scaling.

    export RAY_AUTH_MODE=disabled
    nohup .venv/bin/python benchmarks/ddoq.py > /tmp/ddoq-bench.log 2>&1 &     # the full run
    .venv/bin/python benchmarks/ddoq.py --ipcs 1 --epochs 20 --models 1 --no-scaling   # a quick look

Accuracy: for each IPC, sets from ``raydd quantize`` (ddoq with the pixel, pca and autoencoder
encoders, decoded centroids or medoids; d4m: the same prototypes unweighted; a trailing number on
the encoder sets ``quantize.latent_dim``, e.g. ``ddoq-autoencoder16-medoid``) and the random-real baseline, each evaluated with
``raydd.evaluate.run.evaluate_set`` (ConvNet-3 at the embedded default width, DSA, K models). Scaling: the
pixel-encoder quantize stage at IPC 50 in a fresh process and Ray session per point, on
10k/30k/60k training images (Parquet subsets) with 1 and 2 CPUs, and on the full
Fashion-MNIST source. Writes ``benchmarks/results/ddoq.json`` and ``ddoq.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from raydd.config import compose

VARIANTS = ["random", "ddoq-pixel", "ddoq-pca", "ddoq-autoencoder", "d4m-pixel", "ddoq-pixel-medoid",
            "ddoq-autoencoder-medoid", "d4m-autoencoder-medoid", "ddoq-autoencoder16", "ddoq-autoencoder16-medoid",
            "d4m-autoencoder16-medoid"]
FASHION_MEAN, FASHION_STD = 0.2861, 0.3530
SCALING_IPC = 50


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--models", type=int, default=3, help="evaluation models per set")
    p.add_argument("--epochs", type=int, default=300, help="evaluation epochs")
    p.add_argument("--epochs-ipc50", type=int, default=None, help="evaluation epochs at IPC 50 (default: --epochs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 60_000])
    p.add_argument("--repeats", type=int, default=3, help="runs per scaling point (min and max are reported)")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--root", default="/tmp/raydd-bench-ddoq", help="storage.root for sets, encoders, subsets")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--render", action="store_true", help="only rewrite ddoq.md from ddoq.json")
    p.add_argument("--child", nargs=2, metavar=("CPUS", "DATASET_URI"), help=argparse.SUPPRESS)
    return p.parse_args()


def overrides(root: str, method: str, encoder: str, ipc: int, *extra: str, run_name: str | None = None,
              dataset: tuple[str, ...] = ("dataset=fashion_mnist",)) -> list[str]:
    return [*dataset, f"method={method}", f"ipc={ipc}", f"quantize.encoder={encoder}", f"storage.root={root}",
            f"run_name={run_name or f'{method}-{encoder}-ipc{ipc}'}", *extra]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "torch": torch.__version__, "loadavg": os.getloadavg()}


# ---------------------------------------------------------------- scaling (one fresh process per point)

def child(cpus: int, uri: str, root: str) -> None:
    """One quantize run in a fresh Ray session of ``cpus`` CPUs; prints a JSON line."""
    start = time.time()
    import ray

    from raydd.quantize.stage import run

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    if uri == "fashion_mnist":
        dataset: tuple[str, ...] = ("dataset=fashion_mnist",)
    else:
        dataset = ("dataset=parquet", f"dataset.uri={uri}", f"dataset.mean=[{FASHION_MEAN}]", f"dataset.std=[{FASHION_STD}]")
    cfg_overrides = overrides(root, "ddoq", "pixel", SCALING_IPC, dataset=dataset,
                              run_name=f"scaling-{Path(uri).name}-cpu{cpus}")
    out = run(compose(cfg_overrides))
    ray.shutdown()
    print(json.dumps({"stage_s": out["wall_s"], "process_s": round(time.time() - start, 2),
                      "images": sum(out["class_sizes"].values())}))


def write_subsets(root: str, sizes: list[int]) -> dict[int, str]:
    """Seeded random subsets of the Fashion-MNIST training split as raydd Parquet shards."""
    from raydd.data.parquet import write_split
    from raydd.data.registry import load_split
    from raydd.storage.fs import resolve

    train = load_split(compose(["dataset=fashion_mnist"])["dataset"], "train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    uris = {}
    for n in sizes:
        uri = f"{root}/subsets/fashion{n // 1000}k"
        if not (Path(uri) / "train").exists():
            write_split(train.subset(order[:n]), resolve(uri), "train", num_classes=10)
        uris[n] = uri
    return uris


def run_child(cpus: int, uri: str, root: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--root", root, "--child", str(cpus), uri],
                          capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    if proc.returncode:
        raise RuntimeError(f"scaling run cpus={cpus} {uri} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scaling(root: str, sizes: list[int], repeats: int) -> dict[str, Any]:
    """Each point ``repeats`` times, round-robin over the points so that load from other jobs spreads over all."""
    uris = {**write_subsets(root, sizes), "full": "fashion_mnist"}
    keys = [(n, cpus) for n in sizes for cpus in (1, 2)] + [("full", 2)]
    runs: dict[tuple, list] = {key: [] for key in keys}
    for _ in range(repeats):
        for n, cpus in keys:
            r = run_child(cpus, uris[n], root)
            runs[n, cpus].append(r)
            print(f"scaling: {n} images, {cpus} CPU(s): {r}", flush=True)

    def point(n: Any, cpus: int) -> dict[str, Any]:
        rs = runs[n, cpus]
        return {"images": rs[0]["images"], "cpus": cpus, "runs": rs,
                "min": {k: min(r["stage_s"][k] for r in rs) for k in ("survey", "kmeans", "total")}
                | {"process": min(r["process_s"] for r in rs)},
                "max": {"total": max(r["stage_s"]["total"] for r in rs), "process": max(r["process_s"] for r in rs)}}

    return {"ipc": SCALING_IPC, "encoder": "pixel", "repeats": repeats,
            "points": [point(n, cpus) for n, cpus in keys[:-1]], "full_fashion_mnist_2cpu": point("full", 2)}


# ---------------------------------------------------------------- accuracy

def variant_overrides(root: str, name: str, ipc: int) -> list[str]:
    """``<method>-<encoder>[<latent_dim>][-medoid]`` → quantize overrides (``ddoq-autoencoder16-medoid``)."""
    method, encoder, *rest = name.split("-")
    kind, dim = re.fullmatch(r"([a-z]+)(\d*)", encoder).groups()
    return overrides(root, method, kind, ipc, f"quantize.prototype={'medoid' if rest == ['medoid'] else 'centroid'}",
                     *([f"quantize.latent_dim={dim}"] if dim else []), run_name=f"{name}-ipc{ipc}")


def accuracy(args: argparse.Namespace) -> None:
    import ray

    from raydd.data.registry import dataset_spec, open_split
    from raydd.evaluate.baselines import random_set
    from raydd.evaluate.run import evaluate_set, summarize
    from raydd.specs import LoaderSpec, RunSpec
    from raydd.quantize.stage import run
    from raydd.storage.distilled import load_set
    from raydd.storage.fs import resolve

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    base = compose(overrides(args.root, "ddoq", "pixel", 1))
    spec, loader = dataset_spec(base["dataset"]), LoaderSpec.from_config(base["loader"])
    train, test = (open_split(base["dataset"], loader, split) for split in ("train", "test"))
    for ipc in args.ipcs:
        epochs = args.epochs_ipc50 if ipc == 50 and args.epochs_ipc50 else args.epochs
        sets, quantize_s = {}, {}
        for name in args.variants:
            if name == "random":
                sets[name] = random_set(train, spec, ipc, base["seed"])
                continue
            start = time.time()
            out = run(compose(variant_overrides(args.root, name, ipc)))
            quantize_s[name] = {"wall_s": round(time.time() - start, 2), "stages": out["wall_s"]}
            sets[name] = load_set(resolve(out["set"]))
        cfg = compose(overrides(args.root, "ddoq", "pixel", ipc, f"evaluate.num_models={args.models}",
                                f"evaluate.epochs={epochs}"))
        start = time.time()
        with ThreadPoolExecutor(len(sets)) as pool:  # keep both CPUs busy across sets
            rows = dict(zip(sets, pool.map(lambda ds: evaluate_set(ds, RunSpec.from_config(cfg), spec, test), sets.values())))
        eval_s = round(time.time() - start, 1)
        summary = {name: {**summarize(r)["convnet"], "epochs": epochs} for name, r in rows.items()}
        print(f"IPC {ipc}: " + ", ".join(f"{k} {v['mean']:.2f}±{v['std']:.2f}" for k, v in summary.items())
              + f" (eval {eval_s} s)", flush=True)
        write_partial(args, {"accuracy": {str(ipc): {
            "quantize": quantize_s, "summary": summary, "eval_runs": [{"variants": list(sets), "wall_s": eval_s}],
            "accuracies": {name: [x["accuracy"] for x in r] for name, r in rows.items()}}}})
    ray.shutdown()


# ---------------------------------------------------------------- results

def merge_accuracy(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Per IPC, a variant's newest result replaces its older one; the others stay."""
    merged = dict(old)
    for ipc, entry in new.items():
        prev = old.get(ipc, {})
        merged[ipc] = {key: {**prev.get(key, {}), **entry[key]} for key in ("quantize", "summary", "accuracies")}
        merged[ipc]["eval_runs"] = prev.get("eval_runs", []) + entry["eval_runs"]
    return dict(sorted(merged.items(), key=lambda kv: int(kv[0])))


def write_partial(args: argparse.Namespace, data: dict[str, Any]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "ddoq.json").read_text()) if (out / "ddoq.json").exists() else {}
    if "accuracy" in data:  # variants and IPCs of earlier (or interrupted) runs are kept
        data = {**data, "accuracy": merge_accuracy(previous.get("accuracy", {}), data["accuracy"])}
    command = " ".join(["python", *sys.argv])
    commands = previous.get("commands", [])
    merged = {**previous, **data, "commands": [*[c for c in commands if c != command], command], "machine": machine(),
              "protocol": {"dataset": "fashion_mnist (60k train / 10k test)", "model": f"ConvNet-3 width {compose([])['model']['width']}, instance norm",
                           "evaluate": "SGD lr 0.01 momentum 0.9 wd 5e-4, lr x0.1 at half, batch 256, DSA",
                           "quantize": "k-means++ (seeded) + Lloyd, max_iters 100, tol 1e-6, "
                           "latent_dim 64 for pca/autoencoder unless the encoder name ends in another (autoencoder16: 16), autoencoder 5 epochs on 20k images (trained once, reused); "
                           "-medoid: the training image nearest each centroid instead of the decoded centroid"}}
    (out / "ddoq.json").write_text(json.dumps(merged, indent=2))
    (out / "ddoq.md").write_text(markdown(merged))


def margins(accuracies: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Each variant's mean minus random-real's, in points, with the standard error of that difference."""
    def mean_var(xs: list[float]) -> tuple[float, float]:
        return 100 * statistics.fmean(xs), (100 * statistics.stdev(xs)) ** 2 / len(xs) if len(xs) > 1 else 0.0

    m0, v0 = mean_var(accuracies["random"])
    return {n: (m - m0, (v + v0) ** 0.5) for n, (m, v) in ((n, mean_var(xs)) for n, xs in accuracies.items() if n != "random")}


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = ["# DDOQ on Fashion-MNIST", "",
             "Commands (results merge per IPC and variant): "
             + "; ".join(f"`RAY_AUTH_MODE=disabled {c}`" for c in r["commands"])
             + f". Machine: {m['cpus']} CPU cores ({m['platform']}, torch {m['torch']}); load average at "
             f"write time {tuple(round(x, 1) for x in m['loadavg'])}"
             + (" (above the core count: other work shared the cores, wall times are upper bounds)."
                if max(m["loadavg"]) > m["cpus"] else " (a quiet machine)."), "",
             f"Protocol: {r['protocol']['model']}; {r['protocol']['evaluate']}.", ""]
    acc = r.get("accuracy", {})
    if acc:
        names = [n for n in VARIANTS if any(n in v["summary"] for v in acc.values())]
        usual = statistics.mode(s["n"] for v in acc.values() for s in v["summary"].values())
        lines[-2] += (f" {usual} models per set unless a cell says n= (mean ± population std, %). "
                      f"Quantize: {r['protocol']['quantize']}.")
        margin = {(ipc, n): ms for ipc, v in acc.items() if "random" in v["accuracies"]
                  for n, ms in margins(v["accuracies"]).items()}
        beats = {key for key, (m, se) in margin.items() if m > 2 * se}
        cell = {(ipc, n): f"{s['mean']:.2f} ± {s['std']:.2f}" + (f" (n={s['n']})" if s["n"] != usual else "")
                for ipc, v in acc.items() for n, s in v["summary"].items()}
        lines += ["## Test accuracy (%; bold: above random-real by more than two standard errors of the difference)", "",
                  "| IPC | epochs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for ipc, v in acc.items():
            cells = [("**" + cell[ipc, n] + "**" if (ipc, n) in beats else cell[ipc, n]) if (ipc, n) in cell else "–"
                     for n in names]
            epochs = "/".join(str(e) for e in sorted({x["epochs"] for x in v["summary"].values()}))
            lines.append(f"| {ipc} | {epochs} | " + " | ".join(cells) + " |")
        quantized = [n for n in names if n != "random"]
        short = {n: [ipc for ipc in acc if (ipc, n) in margin and (ipc, n) not in beats] for n in quantized}
        lines += ["", "Above random-real by more than two standard errors at every IPC: "
                  + (", ".join(n for n in quantized if not short[n]) or "none") + ". Not: "
                  + (", ".join(f"{n} (IPC {', '.join(short[n])})" for n in quantized if short[n]) or "none") + ".",
                  "", "Margin over random-real (difference of means ± its standard error, from the per-model accuracies):", ""]
        lines += [f"- IPC {ipc}: " + ", ".join(f"{n} {margin[ipc, n][0]:+.2f} ± {margin[ipc, n][1]:.2f}"
                                             for n in quantized if (ipc, n) in margin) for ipc in acc]
        lines += ["", "## Wall time (s): quantize `run()` per set in a warm 2-CPU Ray session (the autoencoder's "
                  "includes its training at the first IPC); evaluation of all sets of a run in parallel", "",
                  "| IPC | " + " | ".join(quantized) + " | evaluation runs |", "|---|" + "---|" * (len(quantized) + 1)]
        for ipc, v in acc.items():
            walls = [f"{v['quantize'][n]['wall_s']:.1f}" if n in v["quantize"] else "–" for n in quantized]
            runs = "; ".join(f"{e['wall_s']:.0f} ({len(e['variants'])} sets)" for e in v["eval_runs"])
            lines.append(f"| {ipc} | " + " | ".join(walls) + f" | {runs} |")
    sc = r.get("scaling")
    if sc:
        lines += ["", f"## Quantize scaling (pixel encoder, IPC {sc['ipc']}; a fresh process and Ray session per run; "
                  f"best of {sc['repeats']} runs, slowest stage total in brackets)", "",
                  "| training images | CPUs | survey s | k-means s | stage total s | process s (incl. Ray start) |",
                  "|---|---|---|---|---|---|"]
        for p in sc["points"]:
            lo, hi = p["min"], p["max"]
            lines.append(f"| {p['images']} | {p['cpus']} | {lo['survey']} | {lo['kmeans']} | {lo['total']} "
                         f"({hi['total']}) | {lo['process']} ({hi['process']}) |")
        f = sc["full_fashion_mnist_2cpu"]
        ok = "meets" if f["max"]["process"] <= 120 else "misses"
        lines += ["", f"Full Fashion-MNIST source (60k images, IPC {sc['ipc']}), 2 CPUs: stage {f['min']['total']} s "
                  f"best / {f['max']['total']} s slowest; whole process incl. Ray start {f['min']['process']} s best / "
                  f"{f['max']['process']} s slowest — {ok} the ≤ 2 min target."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], args.root)
        return
    if args.render:
        out = Path(args.out)
        (out / "ddoq.md").write_text(markdown(json.loads((out / "ddoq.json").read_text())))
        return
    if not args.no_scaling:
        write_partial(args, {"scaling": scaling(args.root, args.sizes, args.repeats)})
    if not args.no_accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
