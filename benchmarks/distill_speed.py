"""Seconds per outer iteration and peak memory of the unroll, and one expert epoch, side by side with the authors' MTT code.

    .venv/bin/python benchmarks/distill_speed.py --reference /path/to/mtt-distillation            # the recorded run
    .venv/bin/python benchmarks/distill_speed.py --reference /path/to/mtt-distillation --only 'plain 20 profile'  # the operator profile
    .venv/bin/python benchmarks/distill_speed.py --device cuda                                    # on a GPU (records its name)

Setup, as the issue fixes it: ConvNet-3 width 128 (instance norm), a 10-class 3×32×32 stand-in,
IPC 10 (100 images, the whole set per inner step), DSA on, ZCA off, one process. The reference
rows run the authors' own code from a checkout of GeorgeCazenavette/mtt-distillation
(``benchmarks/reference_mtt.py``) in the same run, as its users run it (glibc's default allocator).
raydd's rows run as its stages do: both unrolls on Ray's jemalloc (``distill.heap=auto``) in the
layout ``channels_last=auto`` picks (NCHW on CPU, NHWC on CUDA), the expert epoch after
``raydd.runtime.reuse_heap()``; other rows show NHWC on CPU and glibc's allocator, default and kept heap. Each point runs in a fresh subprocess so its peak is its own: the process's peak RSS
on CPU (everything: Python, torch, data), ``torch.cuda.max_memory_allocated`` on GPU.
``--only KEY ...`` re-runs some points into the recorded file; ``--repeat N`` runs them in N alternating
rounds and records each point's median run (and every run's seconds).
Writes ``benchmarks/results/distill_speed[_cuda].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).parent
KEPT = (10, 20)  # constant-memory points at syn_steps 40 with the last k steps' graphs kept (distill.kept_graphs)
BASELINES = {"reference plain 20": ("plain 20", "plain 20 nhwc", "plain 20 glibc", "plain 20 heap"),
             "plain 40": ("constant_memory 40", "plain 40 nhwc"), "plain 40 nhwc": ("constant_memory 40 nhwc",
                                                                          *(f"constant_memory 40 kept {k}" for k in KEPT))}


def unroll_point(unroll: str, steps: int, width: int, device: str, iters: int, threads: int, profile: bool,
                 channels_last: bool, kept: int = 0) -> dict:
    """Time ``iters`` outer iterations (after one warm-up) of the worker's gradient computation (``kept``: the
    constant-memory unroll's ``distill.kept_graphs``)."""
    import torch

    from raydd.config import compose
    from raydd.distill.sharding import ShardMap
    from raydd.distill.state import new_state
    from raydd.distill.step import compute_gradients, unroll_spec
    from raydd.distill.unroll import Targets
    from raydd.models.convnet import ConvNet
    from raydd.models.functional import FlatModel, flatten_params
    from raydd.specs import DistillSpec

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    net = ConvNet(3, 10, 32, width=width).to(device)
    fm, start = FlatModel(net, channels_last), flatten_params(net).to(device)
    target = start + 0.01 * torch.randn_like(start)
    labels = torch.arange(10).repeat_interleave(10)
    d = DistillSpec.from_config(compose([f"distill.syn_steps={steps}", "distill.batch_syn=null", "distill.lr_param=plain",
                                         f"distill.unroll={unroll}", f"distill.kept_graphs={kept}"])["distill"])
    state = new_state(torch.arange(100), torch.randn(100, 3, 32, 32), labels, None, d, torch.device(device))
    spec = unroll_spec(d)
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
    row = {"what": f"{unroll} unroll, {'NHWC' if channels_last else 'NCHW'}", "syn_steps": steps, "kept_graphs": kept,
           "seconds": seconds, "peak_mb": peak / 2**20,
           "grad_norm": float(state.images.grad.norm())}
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            once()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        row["profile"] = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
                           "calls": e.count} for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]
    return row


def conv_gflop(unroll: str, steps: int, width: int, threads: int, kept: int = 0, channels_last: bool = True) -> float:
    """GFLOP of the convolutions (forward, backward, double backward) in one outer iteration, by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # the warm-up and one timed iteration
        unroll_point(unroll, steps, width, "cpu", 1, threads, False, channels_last, kept)
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if "conv" in str(op)) / 2 / 1e9


def conv_floor(width: int, threads: int) -> dict:
    """The convolutions' share of a plain 20-step outer iteration as a floor: their FLOPs at the rate this machine
    reaches on the iteration's largest convolution (100×128×16×16, 3×3, forward and backward)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    gflop = conv_gflop("plain", 20, width, threads)
    x = torch.randn(100, width, 16, 16, requires_grad=True).contiguous(memory_format=torch.channels_last)
    w = torch.randn(width, width, 3, 3, requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    tic, reps = time.perf_counter(), 10
    for _ in range(reps):
        F.conv2d(x, w, padding=1).sum().backward()
    rate = reps * 3 * 2 * 100 * 16 * 16 * width * width * 9 / (time.perf_counter() - tic)  # forward + 2 backward convs
    return {"what": "conv floor", "conv_gflop": gflop, "gflops_per_s": rate / 1e9, "floor_s": gflop * 1e9 / rate}


def conv_counts(width: int, threads: int) -> dict:
    """The convolutions' GFLOP of one outer iteration at syn_steps 40 by layout (``nchw``, ``nhwc``): plain,
    constant-memory and (NHWC, as their rows) each kept budget. Their ratio to plain is the time ratio's limit
    where convolutions dominate the time."""
    import torch

    torch.set_num_threads(threads)
    counts = {layout: {"plain": conv_gflop("plain", 40, width, threads, 0, layout == "nhwc"),
                       **{str(k): conv_gflop("constant_memory", 40, width, threads, k, layout == "nhwc") for k in kept}}
              for layout, kept in (("nchw", (0,)), ("nhwc", (0, *KEPT)))}
    return {"what": "conv counts", "syn_steps": 40, "gflop": counts}


def expert_epoch(width: int, device: str, threads: int, images: int) -> dict:
    """One plain expert epoch (batch 256, DSA, SGD, NCHW as the experts stage runs it) on ``images``
    random 3×32×32 uint8 images, decoded one batch at a time as the stage does."""
    import torch

    from raydd.config import compose
    from raydd.core.images import DatasetSpec, ImageData, to_model_space
    from raydd.data.split import Split
    from raydd.experts.train import train_expert
    from raydd.models.convnet import ConvNet
    from raydd.specs import ExpertsSpec, LoaderSpec

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    cfg = compose(["experts.epochs=1"])  # the default plain expert: batch 256, DSA
    loader = LoaderSpec.from_config(cfg["loader"])
    data = ImageData(torch.randint(256, (images, 3, 32, 32), dtype=torch.uint8), torch.randint(10, (images,)))
    train, test = Split.in_memory(data, loader), Split.in_memory(data.subset(torch.arange(min(1000, images))), loader)
    net = ConvNet(3, 10, 32, width=width).to(device)
    tic = time.perf_counter()
    spec = DatasetSpec("standin", 10, 3, 32, (0.5,) * 3, (0.5,) * 3)
    train_expert(net, train, test, lambda x: to_model_space(x.to(device), spec), ExpertsSpec.from_config(cfg["experts"]),
                 seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"what": "expert epoch", "images": images, "seconds": time.perf_counter() - tic, "peak_mb": peak / 2**20}


def in_subprocess(args: list[str], script: Path = Path(__file__), env: dict[str, str] | None = None, **extra) -> dict:
    """One point in a fresh process (its own peak memory), without this one's allocator settings, with ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True, text=True,
                         env={**clean, **(env or {})}).stdout
    row = {**json.loads(out.strip().splitlines()[-1]), **extra}
    print({k: v for k, v in row.items() if k != "profile"}, flush=True)
    return row


def median_row(runs: list[dict]) -> dict:
    """The run of median time (the lower middle of an even count) with every run's seconds beside it."""
    if len(runs) == 1:
        return runs[0]
    row = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
    return {**row, "seconds_runs": [r["seconds"] for r in runs]}


def paired(rows: dict[str, dict], runs: dict[str, list[dict]]) -> None:
    """Give each row of this run the row it is compared with where that was measured in the same run
    (``baseline``: the authors' plain 20 for raydd's, plain 40 for the constant-memory rows), so a row kept from
    an earlier run stays compared with the baseline of its own run."""
    for base, followers in BASELINES.items():
        if base in runs:
            for key in (k for k in followers if k in runs):
                rows[key] = {**rows[key], "baseline": {k: rows[base][k] for k in ("seconds", "seconds_runs", "peak_mb")
                                                       if k in rows[base]}}


def allocation(megabytes: int = 52, rounds: int = 100) -> dict:
    """Milliseconds to allocate and fill a fresh block of ``megabytes`` (the size of a width-128 activation of
    100 images at 32×32), and to fill one already in place."""
    import torch

    torch.set_num_threads(1)
    numel = megabytes * 2**20 // 4
    tic = time.perf_counter()
    for _ in range(rounds):
        torch.empty(numel).fill_(1.0)
    fresh = (time.perf_counter() - tic) / rounds
    block = torch.empty(numel).fill_(0.0)
    tic = time.perf_counter()
    for _ in range(rounds):
        block.fill_(1.0)
    return {"what": "allocation", "megabytes": megabytes, "fresh_ms": 1e3 * fresh,
            "fill_ms": 1e3 * (time.perf_counter() - tic) / rounds}


def layout(row: dict) -> str:
    """The row's tensor layout (rows before session 22 name only NCHW: the others ran NHWC)."""
    return "NCHW" if "NCHW" in row["what"] else "NHWC"


def secs(row: dict) -> str:
    """A row's seconds, with every run's where it is the median of several."""
    runs = row.get("seconds_runs")
    return f"{row['seconds']:.2f}" + (f" (runs: {', '.join(f'{r:.1f}' for r in runs)})" if runs else "")


def render(meta: dict, rows: list[dict]) -> str:
    by = {r["key"]: r for r in rows}
    lines = [f"# Distillation speed ({meta['device']})", "", "Commands: " + "; ".join(f"`{c}`" for c in meta["commands"]) + "  ",
             *([f"Note: {meta['note']}  "] if meta.get("note") else []), f"Machine: {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}.  ", f"Setup: {meta['setup']}.", ""]
    ref, mine = by.get("reference plain 20"), by.get("plain 20")
    cm40, plain40, cm40_heap = by.get("constant_memory 40"), by.get("plain 40"), by.get("constant_memory 40 heap")
    epoch, ref_epoch, epoch_default = by.get("epoch"), by.get("reference epoch"), by.get("epoch default allocator")
    epoch_je = by.get("epoch jemalloc")
    if ref:
        lines += ["| what | raydd | authors' MTT code, same run | raydd / authors' | target |", "|---|---|---|---|---|"]
        for row, what in ((mine, "plain unroll, syn_steps 20 (defaults: `channels_last=auto`, `distill.heap=auto`: Ray's jemalloc)"),
                          (by.get("plain 20 nhwc"), "plain unroll, syn_steps 20, `channels_last=true`"),
                          (by.get("plain 20 glibc"), "plain unroll, syn_steps 20, `distill.heap=default` (glibc's malloc)"),
                          (by.get("plain 20 heap"), "plain unroll, syn_steps 20, `distill.heap=reuse` (glibc's heap kept)")):
            if row:
                what = f"{what}, {layout(row)}"
                base = row.get("baseline", ref)
                lines.append(f"| {what}: s / outer iteration | {secs(row)} | {secs(base)} | "
                             f"{row['seconds'] / base['seconds']:.2f} | {'≤ 0.5' if row is mine else '–'} |")
                lines.append(f"| {what}: peak memory (MB) | {row['peak_mb']:.0f} | {base['peak_mb']:.0f} | "
                             f"{row['peak_mb'] / base['peak_mb']:.2f} | {'≤ 1' if row is mine else '–'} |")
        for row, what in ((epoch, "heap reuse, as raydd's expert tasks"), (epoch_default, "default allocator"),
                          (epoch_je, "on Ray's jemalloc (`jemalloc_env()`, not the expert tasks' default)")):
            if row and ref_epoch:
                lines.append(f"| expert epoch on {row['images']:,} images, {what} (s) | {row['seconds']:.0f} | "
                             f"{ref_epoch['seconds']:.0f} | {row['seconds'] / ref_epoch['seconds']:.2f} | "
                             f"{'≤ 1' if row is epoch else '–'} |")
        floor = by.get("conv floor")
        if floor:
            lines += ["", f"Floor: the convolutions alone of one plain 20-step iteration are {floor['conv_gflop']:.0f} GFLOP "
                      f"(forward, backward, double backward; `FlopCounterMode`); at the {floor['gflops_per_s']:.0f} GFLOP/s "
                      f"this machine reaches on the iteration's largest convolution they take {floor['floor_s']:.1f} s, "
                      f"{floor['floor_s'] / ref['seconds']:.2f}× the authors' whole iteration."]
        lines.append("")
    if cm40 and plain40:
        if cm40_heap:
            lines.append(f"Constant-memory at syn_steps 40 on glibc's kept heap (`distill.heap=reuse`, auto's choice where "
                         f"Ray has no jemalloc): {cm40_heap['seconds']:.2f} s / outer iteration, {cm40_heap['peak_mb']:.0f} MB peak.")
            lines.append("")
        counts = by.get("conv counts 40", {}).get("gflop")
        lines += ["| raydd, syn_steps 40 | s / outer iteration (lower median of the runs) | ratio to plain (of its run) | target | "
                  "peak MB | ratio to plain | convolutions' GFLOP: ratio to plain |", "|---|---|---|---|---|---|---|"]
        kept = [(by.get(f"constant_memory 40 kept {k}"), str(k), f"constant-memory, the last {k} steps' graphs kept "
                 f"(`distill.kept_graphs={k}`)") for k in KEPT]
        for row, count, what in [(plain40, "plain", "plain"), (cm40, "0", "constant-memory (`distill.kept_graphs=0`, the default)"),
                                 (by.get("plain 40 nhwc"), "plain", "plain, `channels_last=true`"),
                                 (by.get("constant_memory 40 nhwc"), "0", "constant-memory, `channels_last=true`"), *kept]:
            if row:
                what, base = f"{what}, {layout(row)}", row.get("baseline", plain40)
                of = counts.get(layout(row).lower(), {}) if counts else {}
                flops = f"{of[count]:.0f}: {of[count] / of['plain']:.2f}" if count in of else "–"
                lines.append(f"| {what} | {secs(row)} | {row['seconds'] / base['seconds']:.2f} | "
                             f"{'–' if count == 'plain' else '≤ 1.2'} | {row['peak_mb']:.0f} | "
                             f"{row['peak_mb'] / base['peak_mb']:.2f} | {flops} |")
        lines.append("")
    allocs = [r for r in rows if r["what"] == "allocation"]
    if allocs:
        lines += [f"Allocating and filling a {allocs[0]['megabytes']} MB block (one width-128 activation of 100 images), ms:", "",
                  "| allocator | allocate + fill, freed each time | fill a block in place |", "|---|---|---|"]
        lines += [f"| {r['env']} | {r['fresh_ms']:.1f} | {r['fill_ms']:.1f} |" for r in allocs]
        lines.append("")
    for r in rows:
        if r.get("profile"):
            lines += [f"## Profile: {r['what']}, syn_steps {r['syn_steps']} (one outer iteration, self CPU time)", "",
                      "| operator | self s | share | calls |", "|---|---|---|---|"]
            lines += [f"| `{p['op']}` | {p['self_s']:.2f} | {100 * p['share']:.1f}% | {p['calls']} |" for p in r["profile"]]
            lines.append("")
    return "\n".join(lines)


def points(args: argparse.Namespace) -> dict[str, tuple[list[str], Path, dict[str, str]]]:
    """Every point of the run by key: its arguments, script and environment. raydd's distill points run as its
    workers do by default (``distill.heap=auto``: Ray's jemalloc, ``raydd.runtime.jemalloc_env``); ``glibc``
    points on glibc's default allocator, ``heap`` ones after ``raydd.runtime.reuse_heap`` (``distill.heap=reuse``,
    and raydd's expert tasks)."""
    from raydd.runtime import jemalloc_env

    common = ["--width", str(args.width), "--device", args.device, "--threads", str(args.threads), "--iters", str(args.iters)]
    here, reference = Path(__file__), HERE / "reference_mtt.py"
    epoch = ["--epoch", *common, "--expert-images", str(args.expert_images)]
    cpu = args.device == "cpu"
    je = jemalloc_env()
    auto = "nhwc" if args.device == "cuda" else "nchw"  # what channels_last=auto lays out on the device
    table = {
        "allocation default": (["--allocation"], here, {}), "allocation heap": (["--allocation", "--heap"], here, {}),
        "allocation jemalloc": (["--allocation"], here, je),
        "reference plain 20": ([str(args.reference), "unroll", "20", str(args.iters), str(args.threads)], reference, {}),
        "plain 20": (["--point", "plain", "20", auto, *common], here, je),
        "plain 20 nhwc": (["--point", "plain", "20", "nhwc", *common], here, je),
        "plain 20 profile": (["--point", "plain", "20", auto, "--profile", *common], here, je),
        "plain 20 nhwc profile": (["--point", "plain", "20", "nhwc", "--profile", *common], here, je),
        "plain 20 glibc": (["--point", "plain", "20", "nhwc", *common], here, {}),
        "plain 20 heap": (["--point", "plain", "20", "nhwc", "--heap", *common], here, {}),
        "conv floor": (["--floor", *common], here, {}),
        "conv counts 40": (["--conv-counts", *common], here, {}),
        "constant_memory 40": (["--point", "constant_memory", "40", auto, *common], here, je),
        "constant_memory 40 nhwc": (["--point", "constant_memory", "40", "nhwc", *common], here, je),
        "constant_memory 40 heap": (["--point", "constant_memory", "40", "nhwc", "--heap", *common], here, {}),
        "plain 40": (["--point", "plain", "40", auto, *common], here, je),
        "plain 40 nhwc": (["--point", "plain", "40", "nhwc", *common], here, je),
        **{f"constant_memory 40 kept {k}": (["--point", "constant_memory", "40", "nhwc", "--kept", str(k), *common], here, je)
           for k in KEPT},
        "reference epoch": ([str(args.reference), "epoch", str(args.expert_images), str(args.threads)], reference, {}),
        "epoch": ([*epoch, *(["--heap"] if cpu else [])], here, {}),
        "epoch default allocator": (epoch, here, {}),
        "epoch jemalloc": (epoch, here, je),
    }
    skip = {k for k in table if (not cpu and any(w in k for w in ("heap", "glibc", "default", "allocation", "conv", "epoch jemalloc")))
            or (args.reference is None and k.startswith("reference"))
            or (args.skip_expert and "epoch" in k)
            or (not je and k in ("allocation jemalloc", "epoch jemalloc"))}
    return {k: v for k, v in table.items() if k not in skip}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--expert-images", type=int, default=60000)
    ap.add_argument("--reference", type=Path, help="a checkout of GeorgeCazenavette/mtt-distillation")
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--skip-expert", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over the points; each row keeps its median run")
    ap.add_argument("--only", nargs="+", metavar="KEY", help="run only these points; the others keep their recorded rows")
    ap.add_argument("--point", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--epoch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--allocation", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--conv-counts", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--heap", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kept", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference and not (args.reference / "distill.py").is_file():
        ap.error(f"--reference {args.reference}: not a checkout of GeorgeCazenavette/mtt-distillation (no distill.py)")
    if args.heap:
        from raydd.runtime import reuse_heap

        reuse_heap()
    if args.point:
        unroll, steps, layout = args.point
        print(json.dumps(unroll_point(unroll, int(steps), args.width, args.device, args.iters, args.threads,
                                      args.profile, layout == "nhwc", args.kept)))
        return
    if args.epoch:
        print(json.dumps(expert_epoch(args.width, args.device, args.threads, args.expert_images)))
        return
    if args.allocation:
        from raydd.runtime import allocator

        label = "jemalloc, `jemalloc_env()`" if allocator() == "jemalloc" else "`reuse_heap()`" if args.heap else "glibc's default"
        print(json.dumps({**allocation(), "env": label}))
        return
    if args.floor:
        print(json.dumps(conv_floor(args.width, args.threads)))
        return
    if args.conv_counts:
        print(json.dumps(conv_counts(args.width, args.threads)))
        return
    name = "distill_speed" if args.device == "cpu" else f"distill_speed_{args.device}"
    table = points(args)
    unknown = set(args.only or ()) - set(table)
    if unknown:
        ap.error(f"--only: unknown points {sorted(unknown)}; choose from {sorted(table)}")
    recorded = json.loads((RESULTS / f"{name}.json").read_text()) if args.only else {"rows": []}
    rows = {r["key"]: r for r in recorded["rows"]}
    import torch

    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    meta = {**recorded.get("meta", {}), "device": args.device, "machine": machine, "threads": args.threads,
            "torch": torch.__version__,
            "commands": list(dict.fromkeys([*recorded.get("meta", {}).get("commands", []), shlex.join(["python", *sys.argv])])),
            "setup": f"ConvNet-3 width {args.width} instance norm, IPC 10 × 10 classes of 3×32×32, whole set per inner step, "
                     f"DSA on, ZCA off, {args.iters} timed outer iterations after one warm-up; expert epoch: batch 256, DSA"}
    RESULTS.mkdir(exist_ok=True)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):  # rounds alternate the points, so a slow spell of the machine hits them alike
        for key, (argv, script, env) in table.items():
            if not args.only or key in args.only:
                runs.setdefault(key, []).append(in_subprocess(argv, script=script, env=env, key=key))
                rows[key] = median_row(runs[key])
                paired(rows, runs)
                ordered = [rows[k] for k in table if k in rows]  # saved after every point: a failed one loses only itself
                (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": ordered}, indent=2))
                (RESULTS / f"{name}.md").write_text(render(meta, ordered))
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
