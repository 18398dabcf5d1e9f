"""Seconds per evaluation epoch, eager NCHW against NHWC (channels-last: the measurement behind
``channels_last=auto``) and against a compiled training forward (``evaluate.compile``).

    .venv/bin/python benchmarks/eval_speed.py              # the recorded run
    .venv/bin/python benchmarks/eval_speed.py --epochs 1 --rounds 1 --archs convnet  # smoke

One evaluation model as an ``evaluate`` task trains it on CPU (``raydd.evaluate.run.train_and_test``: one
thread, ``reuse_heap()``, the protocol's ``train_on_set``: batch 256, DSA, SGD with momentum) on a set of
``--ipc`` images per class of Fashion-MNIST's shape (1×28×28, 10 classes; the values do not change the
time), for ConvNet-3, ResNet-18 and VGG-11 at ``--width`` 16 (the large-IPC runs' width), instance norm.
Each point runs in a fresh subprocess and times ``--epochs`` epochs after a first one, whose seconds (the compile
included) are kept apart; rounds alternate the variants. Writes ``benchmarks/results/eval_speed.{json,md}``.
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
VARIANTS = {"nchw": {}, "nhwc": {"channels_last": True}, "compile": {"compile": True}}


def epoch_seconds(arch: str, variant: str, width: int, ipc: int, epochs: int) -> tuple[float, float]:
    """The first epoch's seconds and the mean of the next ``epochs`` epochs' of the evaluation protocol on a random
    ``ipc``-per-class set."""
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
    ends = [time.perf_counter()]
    train_on_set(model, images, labels, TrainSpec(epochs=1 + epochs, **VARIANTS[variant]), 0,
                 on_epoch=lambda _: ends.append(time.perf_counter()))
    return ends[1] - ends[0], (ends[-1] - ends[1]) / epochs


def render(meta: dict, rows: list[dict]) -> str:
    variants = [v for v in VARIANTS if f"{v}_s" in rows[0]]
    lines = [f"# Evaluation epoch: eager NCHW, NHWC and a compiled forward ({meta['machine']}, 1 thread, "
             f"torch {meta['torch']})", "", f"Command: `{meta['command']}`  ", f"Setup: {meta['setup']}.", "",
             "| model | " + " | ".join(f"{v} s / epoch" for v in variants) + " | "
             + " | ".join(f"{v} / nchw" for v in variants[1:]) + " | first epoch (s): " + ", ".join(variants) + " |",
             "|---|" + "---|" * (2 * len(variants))]
    for r in rows:
        cells = [f"{r[f'{v}_s']:.3f} (runs: {', '.join(f'{s:.3f}' for s in r[f'{v}_runs'])})" for v in variants]
        ratios = [f"{r[f'{v}_s'] / r['nchw_s']:.2f}" for v in variants[1:]]
        first = ", ".join(f"{r[f'{v}_first_s']:.1f}" for v in variants)
        lines.append(f"| {r['arch']} | " + " | ".join(cells + ratios) + f" | {first} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", nargs="+", default=["convnet", "resnet18", "vgg11"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--ipc", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--point", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        arch, variant = args.point
        print(json.dumps(epoch_seconds(arch, variant, args.width, args.ipc, args.epochs)))
        return
    variants = ["nchw", *(v for v in args.variants if v != "nchw")]
    common = ["--width", str(args.width), "--ipc", str(args.ipc), "--epochs", str(args.epochs)]
    runs: dict[tuple[str, str], list[list[float]]] = {}
    for _ in range(args.rounds):
        for arch in args.archs:
            for variant in variants:
                out = subprocess.run([sys.executable, __file__, "--point", arch, variant, *common], check=True,
                                     capture_output=True, text=True).stdout
                runs.setdefault((arch, variant), []).append(json.loads(out.strip().splitlines()[-1]))
                print(arch, variant, runs[(arch, variant)], flush=True)
    import torch

    rows = [{"arch": a, **{f"{v}_s": statistics.median(e for _, e in runs[(a, v)]) for v in variants},
             **{f"{v}_runs": [e for _, e in runs[(a, v)]] for v in variants},
             **{f"{v}_first_s": statistics.median(f for f, _ in runs[(a, v)]) for v in variants}} for a in args.archs]
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "command": " ".join(["python", *sys.argv]),
            "setup": f"width {args.width}, instance norm, {10 * args.ipc} images of 1×28×28 (IPC {args.ipc}), batch 256, DSA, "
                     f"{args.epochs} timed epochs after a first (compile included: its seconds in the last column), median of "
                     f"{args.rounds} alternating rounds"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "eval_speed.md").write_text(render(meta, rows))
    print(render(meta, rows))


if __name__ == "__main__":
    main()
