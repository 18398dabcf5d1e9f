"""Random (expert, epoch) read throughput of the trajectory store: local disk and a moto S3 server.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/trajectory_read.py            # the recorded run
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/trajectory_read.py --experts 2 --epochs 5 --reads 20  # smoke

Writes a full-form float32 store of ConvNet-3 width 128 on 32×32×3 (CIFAR-10 layout, 320,010
parameters = 1.28 MB per saved point; synthetic random-walk parameters), then times
``TrajectoryStore.params`` on uniformly random (expert, epoch) pairs with the LRU cache off,
so every call is a ranged read of one record batch plus its per-row sha256 check.
Writes ``benchmarks/results/experts_trajectory_read.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from raydd.core.images import DatasetSpec
from raydd.models.functional import ParamLayout, flatten_params
from raydd.models.registry import build_model
from raydd.storage.fs import Location, resolve
from raydd.storage.trajectory import (ShardRows, TrajectoryStore, add_entry, config_hash, open_manifest,
                                      write_manifest, write_shard)

CIFAR = DatasetSpec("cifar10", 10, 3, 32, (0.5,) * 3, (0.5,) * 3)
MODEL = {"name": "convnet", "depth": 3, "width": 128, "norm": "instance", "act": "relu", "pooling": "avg"}


def random_walk(init: torch.Tensor, epochs: int, seed: int) -> torch.Tensor:
    """Synthetic trajectory: init plus Gaussian steps that shrink over epochs."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(epochs, init.numel(), generator=g) * (0.02 * 0.95 ** torch.arange(epochs))[:, None]
    return torch.cat([init[None], init + steps.cumsum(0)])


def write_store(loc: Location, experts: int, epochs: int, dtype: str = "float32") -> int:
    torch.manual_seed(0)
    model = build_model(MODEL, CIFAR)
    config = {"benchmark": "trajectory_read", "epochs": epochs, "dtype": dtype}
    meta = {"form": "full", "dtype": dtype, "variant": "plain", "epochs": epochs, "dataset": {"name": "cifar10"},
            "model": MODEL, "layout": ParamLayout.of(model).to_json(), "zca": False,
            "config_hash": config_hash(config), "config": config}
    manifest = open_manifest(loc, meta)
    for i in range(experts):
        snaps = random_walk(flatten_params(model), epochs, i)
        rows = ShardRows(i, [float(e) for e in range(epochs + 1)], list(snaps), [None] * (epochs + 1),
                         [None] * (epochs + 1), [None] * (epochs + 1))
        add_entry(manifest, write_shard(loc, rows, {**meta, "seed": i}, dtype))
        write_manifest(loc, manifest)
    return sum(e["bytes"] for e in manifest["shards"])


def time_reads(loc: Location, reads: int, seed: int = 0) -> dict:
    store = TrajectoryStore.open(loc, cache_bytes=0)
    rng = random.Random(seed)
    pairs = [(rng.choice(store.experts), rng.randint(0, int(store.epochs))) for _ in range(reads)]
    first = time.perf_counter()
    for expert_id in store.experts:  # open every shard once (footer reads), timed apart
        store.params(expert_id, 0)
    opened, cpu = time.perf_counter(), time.process_time()
    nbytes = 0
    for expert_id, epoch in pairs:
        nbytes += store.params(expert_id, epoch).numel() * 4
    done, cpu = time.perf_counter(), time.process_time() - cpu
    return {"reads": reads, "mb": round(nbytes / 1e6, 1), "seconds": round(done - opened, 3),
            "mb_per_s": round(nbytes / 1e6 / (done - opened), 1), "reads_per_s": round(reads / (done - opened), 1),
            "cpu_seconds": round(cpu, 3), "mb_per_cpu_s": round(nbytes / 1e6 / cpu, 1),
            "open_all_shards_s": round(opened - first, 3)}


def moto_server() -> tuple[object, str]:
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return server, endpoint


def markdown(r: dict) -> str:
    lines = ["# Trajectory store: random (expert, epoch) reads", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']['cpus']} CPU cores (shared), load average at start {r['machine']['loadavg_start']}; "
             f"pyarrow ranged reads of Arrow IPC record batches, cache off.  ",
             f"Store: {r['experts']} experts × {r['epochs'] + 1} saved points, ConvNet-3 w128 on 32×32×3 "
             f"({r['params']:,} float32 params = {r['row_mb']:.2f} MB per point; synthetic random-walk values), "
             f"{r['store_mb']:.0f} MB in all.", "",
             "| storage | reads | MB read | wall s | MB/s (wall) | reads/s | CPU s of this process | MB per CPU-second | "
             "first open of all shards (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t in r["results"].items():
        lines.append(f"| {name} | {t['reads']} | {t['mb']} | {t['seconds']} | {t['mb_per_s']} | {t['reads_per_s']} | "
                     f"{t['cpu_seconds']} | {t['mb_per_cpu_s']} | {t['open_all_shards_s']} |")
    lines += ["", "Target: local disk >= 100 MB/s. Each read verifies the row's sha256. Wall-clock MB/s depends on "
              "how much of the 2 shared cores this process gets (see the load average); MB per CPU-second of the "
              "reading process much less. For S3 the moto server is a Python S3 emulator running in this same process "
              "(on 127.0.0.1), so both columns include the server's own work: a floor for the code path, not "
              "S3's speed."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--reads", type=int, default=200)
    p.add_argument("--s3-reads", type=int, default=60)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    report = {"command": "RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/trajectory_read.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
              "experts": a.experts, "epochs": a.epochs, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        local = resolve(str(Path(tmp) / "store"))
        report["store_mb"] = write_store(local, a.experts, a.epochs) / 1e6
        store = TrajectoryStore.open(local)
        report["params"] = store.layout.numel
        report["row_mb"] = store.layout.numel * 4 / 1e6
        report["results"]["local disk (ext4, page cache warm)"] = time_reads(local, a.reads)
    server, endpoint = moto_server()
    try:
        s3 = resolve("s3://bench/store", endpoint)
        write_store(s3, a.experts, a.epochs)
        report["results"]["moto S3 (127.0.0.1)"] = time_reads(s3, a.s3_reads)
    finally:
        server.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experts_trajectory_read.json").write_text(json.dumps(report, indent=2))
    (out / "experts_trajectory_read.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
