"""imagenet1k_standin: images/s per core, bytes per image on disk, and whether a small ConvNet learns it.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/standin.py               # the recorded run (about a minute)
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/standin.py --shards 1 --epochs 1  # smoke

Speed: ``--shards`` train shards of the 200-per-class dataset (1000 classes, 64 px, 10,000 rows each)
generated in this one process (one core), then written as ``raydd data`` writes them (zstd Parquet);
the first shard is a warm-up and left out. Learnability: ConvNet-3 (width 32, instance norm) trained
with SGD (lr 0.01, momentum 0.9, batch 128, no augmentation) on 100 classes × 100 images at 32 px,
tested on their 10 test images per class after each epoch. Writes ``benchmarks/results/standin.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from raydd.data import standin
from raydd.data.parquet import write_shard
from raydd.data.registry import IMAGENET_MEAN, IMAGENET_STD
from raydd.models.convnet import ConvNet
from raydd.storage.fs import resolve

FULL = {"num_classes": 1000, "image_size": 64, "images_per_class": 200, "test_per_class": 10, "seed": 0}
ROWS_PER_SHARD = 10_000
LEARN = {"num_classes": 100, "image_size": 32, "images_per_class": 100, "test_per_class": 10, "seed": 0}


def speed(shards: int, tmp: str) -> dict:
    """Generation and generation + write rates of train shards 0 … shards (shard 0 a warm-up)."""
    rows = []
    for index in range(shards + 1):
        start = time.perf_counter()
        data = standin.generate_shard(FULL, "train", index, ROWS_PER_SHARD)
        generated = time.perf_counter()
        write_shard(data, resolve(tmp), "train", index, FULL["num_classes"])
        written = time.perf_counter()
        size = Path(tmp, "train", f"part-{index:05d}.parquet").stat().st_size
        rows.append({"generate_s": generated - start, "write_s": written - generated, "bytes": size})
    timed = rows[1:]
    n = ROWS_PER_SHARD * len(timed)
    return {"images": n, "generate_images_per_s": round(n / sum(r["generate_s"] for r in timed)),
            "generate_and_write_images_per_s": round(n / sum(r["generate_s"] + r["write_s"] for r in timed)),
            "bytes_per_image": round(sum(r["bytes"] for r in timed) / n),
            "train_gb_at_200_per_class": round(sum(r["bytes"] for r in timed) / n * 200_000 / 1e9, 2)}


def learnability(epochs: int) -> list[float]:
    """Test accuracy of a small ConvNet after each epoch on the LEARN stand-in."""
    torch.manual_seed(0)
    train, test = (standin.generate_shard(LEARN, split, 0, 10**9) for split in ("train", "test"))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    net = ConvNet(3, LEARN["num_classes"], LEARN["image_size"], width=32, depth=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    accuracies = []
    for _ in range(epochs):
        for batch in torch.randperm(len(train)).split(128):
            loss = torch.nn.functional.cross_entropy(net((train.images[batch] / 255 - mean) / std), train.labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracies.append((net((test.images / 255 - mean) / std).argmax(1) == test.labels).float().mean().item())
    return accuracies


def markdown(r: dict) -> str:
    s, acc = r["speed"], r["accuracy_per_epoch"]
    return "\n".join([
        "# imagenet1k_standin: generation speed, size on disk, learnability", "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpus']} CPU cores (shared with other work), one process.", "",
        "| what | measured |", "|---|---|",
        f"| images/s per core, generating (1000 classes, 64 px, {s['images']:,} images) | {s['generate_images_per_s']:,} |",
        f"| images/s per core, generating + writing zstd Parquet | {s['generate_and_write_images_per_s']:,} |",
        f"| bytes per image on disk (raw: 12,288) | {s['bytes_per_image']:,} |",
        f"| train shards at 200 per class | {s['train_gb_at_200_per_class']} GB |",
        *(f"| ConvNet-3 w32 test accuracy after epoch {e + 1} (100 classes × 100, 32 px; chance 0.01) | {a:.3f} |"
          for e, a in enumerate(acc)),
    ]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    torch.set_num_threads(1)
    report = {"command": "RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/standin.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    with tempfile.TemporaryDirectory() as tmp:
        report["speed"] = speed(a.shards, tmp)
    report["accuracy_per_epoch"] = learnability(a.epochs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "standin.json").write_text(json.dumps(report, indent=2))
    (out / "standin.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
