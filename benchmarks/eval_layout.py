"""Seconds per evaluation epoch in NCHW and in NHWC (channels-last): the measurement behind ``channels_last=auto``.

    .venv/bin/python benchmarks/eval_layout.py              # the recorded run
    .venv/bin/python benchmarks/eval_layout.py --epochs 1 --rounds 1 --archs convnet  # smoke

One evaluation model as an ``evaluate`` task trains it on CPU (``raydd.evaluate.run.train_and_test``: one
thread, ``reuse_heap()``, the protocol's ``train_on_set``: batch 256, DSA, SGD with momentum) on a set of
``--ipc`` images per class of Fashion-MNIST's shape (1×28×28, 10 classes; the values do not change the
time), for ConvNet-3, ResNet-18 and VGG-11 at ``--width`` 16 (the large-IPC runs' width), instance norm.
Each point runs in a fresh subprocess; rounds alternate the layouts. Writes
``benchmarks/results/eval_layout.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LAYOUTS = {"nchw": False, "nhwc": True}


def epoch_seconds(arch: str, nhwc: bool, width: int, ipc: int, epochs: int) -> float:
    """Seconds per epoch of the evaluation protocol on a random ``ipc``-per-class set (after one warm-up epoch)."""
    import torch

    from raydd.core.images import DatasetSpec
    from raydd.core.train import TrainSpec, train_on_set
    from raydd.models.registry import build_model
    from raydd.runtime import reuse_heap
    from raydd.specs import ModelSpec

    reuse_heap()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = DatasetSpec("fashion_mnist", 10, 1, 28, (0.286,), (0.353,))
    model = build_model(ModelSpec(name=arch, norm="instance", width=width), spec)
    images, labels = torch.randn(10 * ipc, 1, 28, 28), torch.arange(10).repeat_interleave(ipc)
    train_on_set(model, images, labels, TrainSpec(epochs=1, channels_last=nhwc), 0)
    tic = time.perf_counter()
    train_on_set(model, images, labels, TrainSpec(epochs=epochs, channels_last=nhwc), 1)
    return (time.perf_counter() - tic) / epochs


def render(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Evaluation epoch: NCHW against NHWC ({meta['machine']}, 1 thread, torch {meta['torch']})", "",
             f"Command: `{meta['command']}`  ", f"Setup: {meta['setup']}.", "",
             "| model | NCHW s / epoch | NHWC s / epoch | NHWC / NCHW |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['nchw_s']:.3f} (runs: {', '.join(f'{s:.3f}' for s in r['nchw_runs'])}) | "
                     f"{r['nhwc_s']:.3f} (runs: {', '.join(f'{s:.3f}' for s in r['nhwc_runs'])}) | "
                     f"{r['nhwc_s'] / r['nchw_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", nargs="+", default=["convnet", "resnet18", "vgg11"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--ipc", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--point", nargs=2, metavar=("ARCH", "LAYOUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        arch, layout = args.point
        print(json.dumps(epoch_seconds(arch, LAYOUTS[layout], args.width, args.ipc, args.epochs)))
        return
    common = ["--width", str(args.width), "--ipc", str(args.ipc), "--epochs", str(args.epochs)]
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for arch in args.archs:
            for layout in LAYOUTS:
                out = subprocess.run([sys.executable, __file__, "--point", arch, layout, *common], check=True,
                                     capture_output=True, text=True).stdout
                runs.setdefault((arch, layout), []).append(json.loads(out.strip().splitlines()[-1]))
                print(arch, layout, runs[(arch, layout)], flush=True)
    import torch

    rows = [{"arch": a, **{f"{lay}_s": statistics.median(runs[(a, lay)]) for lay in LAYOUTS},
             **{f"{lay}_runs": runs[(a, lay)] for lay in LAYOUTS}} for a in args.archs]
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "command": " ".join(["python", *sys.argv]),
            "setup": f"width {args.width}, instance norm, {10 * args.ipc} images of 1×28×28 (IPC {args.ipc}), batch 256, DSA, "
                     f"{args.epochs} timed epochs after one warm-up, median of {args.rounds} alternating rounds"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_layout.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "eval_layout.md").write_text(render(meta, rows))
    print(render(meta, rows))


if __name__ == "__main__":
    main()
