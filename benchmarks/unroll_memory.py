"""Seconds per outer iteration and peak memory of the plain vs constant-memory unroll, against syn_steps.

    .venv/bin/python benchmarks/unroll_memory.py                      # the recorded run (CPU)
    .venv/bin/python benchmarks/unroll_memory.py --device cuda --width 128

Each (unroll, syn_steps) point runs in a fresh subprocess so its peak is its own: peak RSS
growth over the process's state after warm-up on CPU, ``torch.cuda.max_memory_allocated`` on
GPU. Setup: IPC 10 on a 10-class 32×32×3 stand-in (100 images, whole set per inner step),
ConvNet-3 (instance norm), DSA on, MTT loss. Writes ``benchmarks/results/unroll_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(unroll: str, steps: int, width: int, device: str, iters: int) -> dict:
    import torch

    from raydd.distill.state import ShardState
    from raydd.distill.step import compute_gradients
    from raydd.distill.unroll import Targets, UnrollSpec
    from raydd.models.convnet import ConvNet
    from raydd.models.functional import FlatModel, flatten_params

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = ConvNet(3, 10, 32, width=width).to(device)
    fm = FlatModel(net)
    start = flatten_params(net).to(device)
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(100, 3, 32, 32, device=device, requires_grad=True)
    state = ShardState(torch.arange(100), images, torch.arange(10).repeat_interleave(10).to(device), None,
                       torch.tensor(0.01, device=device, requires_grad=True), None)
    d = {"syn_steps": steps, "batch_syn": None, "unroll": unroll}
    gen = torch.Generator().manual_seed(0)
    targets = Targets(start, [steps], [target], [1.0])
    compute_gradients(state, fm, start, Targets(start, [2], [target], [1.0]), {**d, "syn_steps": 2}, UnrollSpec(), gen)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tic = time.perf_counter()
    for _ in range(iters):
        compute_gradients(state, fm, start, targets, d, UnrollSpec(), gen)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024
    return {"unroll": unroll, "syn_steps": steps, "s_per_iter": (time.perf_counter() - tic) / iters,
            "peak_mb": peak / 2**20, "grad_norm": float(images.grad.norm())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.width, args.device, args.iters)))
        return
    rows = []
    for steps in args.steps:
        for unroll in ("plain", "constant_memory"):
            out = subprocess.run([sys.executable, __file__, "--one", unroll, str(steps), "--width", str(args.width),
                                  "--device", args.device, "--iters", str(args.iters)],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    by = {(r["unroll"], r["syn_steps"]): r for r in rows}
    for s in args.steps:
        p, c = by["plain", s], by["constant_memory", s]
        c["memory_vs_plain"] = c["peak_mb"] / p["peak_mb"]
        c["time_vs_plain"] = c["s_per_iter"] / p["s_per_iter"]
        c["grad_rel_diff"] = abs(c["grad_norm"] - p["grad_norm"]) / p["grad_norm"]
    name = "unroll_memory" if args.device == "cpu" else f"unroll_memory_{args.device}"
    RESULTS.mkdir(exist_ok=True)
    import torch

    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    meta = {"command": " ".join(["python", *sys.argv]), "device": args.device, "machine": machine, "torch": torch.__version__,
            "setup": f"IPC10 ×10 classes, 32×32×3, ConvNet-3 width {args.width}, full set per step, DSA on, {args.iters} iterations"}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Plain vs constant-memory unroll ({args.device})", "", f"Command: `{meta['command']}`  ", f"Setup: {meta['setup']}.  ",
             f"Machine: {machine}, torch {torch.__version__}.", "",
             "| unroll | syn_steps | s / outer iteration | peak MB | memory vs plain | time vs plain |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['unroll']} | {r['syn_steps']} | {r['s_per_iter']:.2f} | {r['peak_mb']:.0f} | "
                     f"{r.get('memory_vs_plain', 1):.2f} | {r.get('time_vs_plain', 1):.2f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
