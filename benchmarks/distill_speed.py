"""Seconds per outer iteration and peak memory of the unroll, and one expert epoch, beside the reference MTT code.

    .venv/bin/python benchmarks/distill_speed.py                 # the recorded run (CPU, 2 threads)
    .venv/bin/python benchmarks/distill_speed.py --profile       # + the operator profile that guided the changes
    .venv/bin/python benchmarks/distill_speed.py --device cuda   # on a GPU (records its name)

Setup, as the issue fixes it: ConvNet-3 width 128 (instance norm), a 10-class 3×32×32 stand-in,
IPC 10 (100 images, the whole set per inner step), DSA on, ZCA off, one process. Each point runs
in a fresh subprocess so its peak is its own: the process's peak RSS on CPU (everything: Python,
torch, data), ``torch.cuda.max_memory_allocated`` on GPU. The reference figures are those of the
papers' MTT code measured on this machine kind (2 cores) and quoted by the issue: 21.8 s per outer
iteration, about 8 GB peak, 3.6 min per expert epoch on 60k images with 2 threads.
Writes ``benchmarks/results/distill_speed[_cuda].{json,md}``.
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
REFERENCE = {"plain_s": 21.8, "plain_peak_mb": 8000, "expert_epoch_s": 3.6 * 60}


def unroll_point(unroll: str, steps: int, width: int, device: str, iters: int, threads: int, profile: bool,
                 channels_last: bool) -> dict:
    """Time ``iters`` outer iterations (after one warm-up) of the worker's gradient computation."""
    import torch

    from raydd.config import compose
    from raydd.distill.sharding import ShardMap
    from raydd.distill.state import new_state
    from raydd.distill.step import compute_gradients
    from raydd.distill.unroll import Targets, UnrollSpec
    from raydd.models.convnet import ConvNet
    from raydd.models.functional import FlatModel, flatten_params
    from raydd.specs import DistillSpec

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    net = ConvNet(3, 10, 32, width=width).to(device)
    fm, start = FlatModel(net, channels_last), flatten_params(net).to(device)
    target = start + 0.01 * torch.randn_like(start)
    labels = torch.arange(10).repeat_interleave(10)
    d = DistillSpec.from_config(compose([f"distill.syn_steps={steps}", "distill.lr_param=plain"])["distill"])
    state = new_state(torch.arange(100), torch.randn(100, 3, 32, 32), labels, None, d, torch.device(device))
    spec = UnrollSpec(keep_graph=unroll == "plain")
    gen, shards = torch.Generator().manual_seed(0), ShardMap.of(labels, 1)

    def once() -> None:
        compute_gradients(state, shards, labels, 0, fm, start, Targets(start, [steps], [target], [1.0]), d, spec, gen,
                          lambda t: t)

    once()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    for _ in range(iters):
        once()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - tic) / iters
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"what": f"{unroll} unroll" + ("" if channels_last else ", NCHW"), "syn_steps": steps, "seconds": seconds, "peak_mb": peak / 2**20,
           "grad_norm": float(state.images.grad.norm())}
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            once()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        row["profile"] = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
                           "calls": e.count} for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]
    return row


def expert_epoch(width: int, device: str, threads: int, images: int) -> dict:
    """One plain expert epoch (batch 256, DSA, SGD, NCHW as the experts stage runs it) on ``images``
    random 3×32×32 images."""
    import torch

    from raydd.config import compose
    from raydd.experts.train import train_expert
    from raydd.models.convnet import ConvNet
    from raydd.specs import ExpertsSpec

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    x = torch.randn(images, 3, 32, 32, device=device)
    y = torch.randint(10, (images,), device=device)
    net = ConvNet(3, 10, 32, width=width).to(device)
    tic = time.perf_counter()
    spec = ExpertsSpec.from_config(compose(["experts.epochs=1"])["experts"])  # the default plain expert: batch 256, DSA
    train_expert(net, x, y, x[:1000], y[:1000], spec, seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"what": "expert epoch", "images": images, "seconds": time.perf_counter() - tic, "peak_mb": peak / 2**20}


def in_subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print({k: v for k, v in row.items() if k != "profile"}, flush=True)
    return row


def render(meta: dict, rows: list[dict]) -> str:
    by = {(r["what"], r.get("syn_steps")): r for r in rows}
    plain20, plain40, cm40 = by.get(("plain unroll", 20)), by.get(("plain unroll", 40)), by.get(("constant_memory unroll", 40))
    nchw = by.get(("plain unroll, NCHW", 20))
    epoch = by.get(("expert epoch", None))
    lines = [f"# Distillation speed ({meta['device']})", "", f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}.  ", f"Setup: {meta['setup']}.", "",
             "| what | raydd | reference MTT code | raydd / reference | target |", "|---|---|---|---|---|"]
    if plain20:
        lines.append(f"| plain unroll, syn_steps 20: s / outer iteration | {plain20['seconds']:.2f} | {REFERENCE['plain_s']} | "
                     f"{plain20['seconds'] / REFERENCE['plain_s']:.2f} | ≤ 0.5 |")
        lines.append(f"| plain unroll, syn_steps 20: peak memory (MB) | {plain20['peak_mb']:.0f} | ~{REFERENCE['plain_peak_mb']} | "
                     f"{plain20['peak_mb'] / REFERENCE['plain_peak_mb']:.2f} | ≤ 1 |")
    if nchw and plain20:
        lines.append(f"| plain unroll, syn_steps 20, NCHW (before `distill.channels_last`): s / outer iteration | "
                     f"{nchw['seconds']:.2f} | {REFERENCE['plain_s']} | {nchw['seconds'] / REFERENCE['plain_s']:.2f} | – |")
    if plain40 and cm40:
        lines.append(f"| constant-memory / plain time, syn_steps 40 | {cm40['seconds']:.2f} s / {plain40['seconds']:.2f} s | – | "
                     f"{cm40['seconds'] / plain40['seconds']:.2f} | ≤ 1.2 |")
        lines.append(f"| constant-memory / plain peak memory, syn_steps 40 | {cm40['peak_mb']:.0f} MB / {plain40['peak_mb']:.0f} MB | – | "
                     f"{cm40['peak_mb'] / plain40['peak_mb']:.2f} | – |")
    if epoch:
        lines.append(f"| expert epoch on {epoch['images']:,} images (s) | {epoch['seconds']:.0f} | {REFERENCE['expert_epoch_s']:.0f} | "
                     f"{epoch['seconds'] / REFERENCE['expert_epoch_s']:.2f} | ≤ 1 |")
    for r in rows:
        if r.get("profile"):
            lines += ["", f"## Profile: {r['what']}, syn_steps {r['syn_steps']} (one outer iteration, self CPU time)", "",
                      "| operator | self s | share | calls |", "|---|---|---|---|"]
            lines += [f"| `{p['op']}` | {p['self_s']:.2f} | {100 * p['share']:.1f}% | {p['calls']} |" for p in r["profile"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--expert-images", type=int, default=60000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--skip-expert", action="store_true")
    ap.add_argument("--point", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--epoch", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        unroll, steps, layout = args.point
        print(json.dumps(unroll_point(unroll, int(steps), args.width, args.device, args.iters, args.threads,
                                      args.profile and steps == "20", layout == "nhwc")))
        return
    if args.epoch:
        print(json.dumps(expert_epoch(args.width, args.device, args.threads, args.expert_images)))
        return
    common = ["--width", str(args.width), "--device", args.device, "--threads", str(args.threads), "--iters", str(args.iters)]
    points = [("plain", 20, "nchw"), ("plain", 20, "nhwc"), ("plain", 40, "nhwc"), ("constant_memory", 40, "nhwc")]
    rows = [in_subprocess(["--point", unroll, str(steps), layout, *common, *(["--profile"] if args.profile else [])])
            for unroll, steps, layout in points]
    if not args.skip_expert:
        rows.append(in_subprocess(["--epoch", *common, "--expert-images", str(args.expert_images)]))
    import torch

    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    meta = {"command": " ".join(["python", *sys.argv]), "device": args.device, "machine": machine, "threads": args.threads,
            "torch": torch.__version__,
            "setup": f"ConvNet-3 width {args.width} instance norm, IPC 10 × 10 classes of 3×32×32, whole set per inner step, "
                     f"DSA on, ZCA off, {args.iters} timed outer iterations after one warm-up; expert epoch: batch 256, DSA"}
    name = "distill_speed" if args.device == "cpu" else f"distill_speed_{args.device}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "reference": REFERENCE, "rows": rows}, indent=2))
    text = render(meta, rows)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
