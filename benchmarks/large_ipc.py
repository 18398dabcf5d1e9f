"""Large IPC on Fashion-MNIST: DATM's per-IPC recipes against random real, DDOQ's medoids, another trajectory
matcher and the full training set, on ConvNet and (``--archs``) other architectures.

    RAY_AUTH_MODE=disabled nohup .venv/bin/python benchmarks/large_ipc.py --root runs/large_ipc > runs/large_ipc.log &
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/large_ipc.py --root /tmp/smoke --results /tmp/smoke/results \
        --ipcs 1 --archs convnet --models 1 --eval-epochs 5 --full-epochs 1 \
        --smoke experts.num=2 experts.epochs=3 distill.iterations=3 quantize.ae_epochs=1  # smoke

Per IPC: ``random`` (real images), ``ddoq`` (``experiment=fmnist_ddoq``: autoencoder latent, medoids, cluster
weights), ``datm`` (``experiment=fmnist_datm_ipc<K>``: its window from method=datm's difficulty rule) and
``--other`` (default mct: the same recipe and window rule on MCT's waypoint store, and the recipe's start where it
is not DATM's); ``full``: the whole training
set at the same width, trained with DSA for ``--full-epochs``. Every set: ``--models`` fresh networks per
architecture of ``--archs`` (ResNet-18 and VGG-11 at first-stage width 16, as narrow as the ConvNet), 300 epochs,
DSA, final accuracy. Rows are kept in the results JSON and skipped on a rerun, except that a kept set missing one of
``--archs`` is evaluated on it (the full-data row is not: ~hours per architecture on 2 cores); ``--eval-lr LR``
instead evaluates the kept sets on ``--archs`` at evaluation lr LR (the learned lr of a set tuned on the ConvNet
need not suit another architecture); after each row it writes ``benchmarks/results/large_ipc.{json,md}`` and the accuracy-vs-IPC plot ``large_ipc.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WIDTH = 16  # every architecture's width: the ConvNet's channels, ResNet-18's / VGG-11's first stage
RECIPE_KEYS = ("iterations", "syn_steps", "expert_epochs", "batch_syn", "lr_img", "lr_init", "window", "eval_every")


def overrides(args: argparse.Namespace, kind: str, ipc: int | None) -> list[str]:
    """The config overrides of one row: the kind's experiment (or method), the shared width and evaluation."""
    from raydd.config import compose

    shared = [f"storage.root={args.root}", "seed=0", f"evaluate.num_models={args.models}", *args.smoke,
              f"evaluate.models=[{','.join(args.archs)}]", f"evaluate.width={WIDTH}",
              f"distill.cpus_per_worker={args.cpus}", "workers=1"]
    if kind == "full":
        return ["method=full", f"model.width={WIDTH}", f"evaluate.epochs={args.full_epochs}", "evaluate.dsa=true", *shared]
    per_ipc = [f"ipc={ipc}", f"evaluate.epochs={args.eval_epochs}", *shared]
    if kind == "random":
        return ["method=random", f"model.width={WIDTH}", *per_ipc]
    if kind == "ddoq":
        return ["experiment=fmnist_ddoq", f"model.width={WIDTH}", *per_ipc]
    recipe = [f"experiment=fmnist_datm_ipc{ipc}", *per_ipc]
    if kind == "datm":
        return recipe
    cfg = compose(recipe)  # the same recipe for another method: its width, experts and distill keys
    d, e = cfg["distill"], cfg["experts"]
    start = [f"distill.init={d['init']}"] if d["init"] != compose(["method=datm"])["distill"]["init"] else []
    return [f"method={kind}", f"model.width={cfg['model']['width']}", f"experts.num={e['num']}", f"experts.epochs={e['epochs']}",
            f"experts.lr={e['lr']}",
            *(f"distill.{k}={'null' if d[k] is None else d[k]}" for k in RECIPE_KEYS), *start, *per_ipc]


def evaluation(args: argparse.Namespace) -> list[str]:
    """How this command runs its evaluation models, not what they measure (so not in a row's overrides; its
    command keeps them): ``--compile`` (their training forward through torch.compile) and ``--eval-cpus`` (CPUs per
    model: below 1, more models at once than cores)."""
    return [*([f"evaluate.compile=[{','.join(args.compile)}]"] if args.compile else []),
            *([f"evaluate.cpus_per_model={args.eval_cpus:g}"] if args.eval_cpus is not None else [])]


def accuracy_of(summary: dict[str, dict]) -> dict[str, dict]:
    """Mean, std and model count per architecture from an evaluation's summary."""
    return {arch: {"mean": s["mean"], "std": s["std"], "n": s["n"]} for arch, s in summary.items()}


def run_row(args: argparse.Namespace, kind: str, ipc: int | None) -> dict:
    """Make the row's set through raydd's stages (experts → distill, or quantize) and evaluate it."""
    from raydd.config import compose, validate
    from raydd.distill import stage as distill
    from raydd.evaluate import stage as evaluate
    from raydd.experts import stage as experts
    from raydd.quantize import stage as quantize

    cfg = compose([*overrides(args, kind, ipc), *evaluation(args)])
    tic, set_uri, made = time.time(), None, {}
    if kind == "ddoq":
        validate(cfg, "quantize")
        set_uri = quantize.run(cfg)["set"]
    elif kind not in ("random", "full"):
        validate(cfg, "distill")
        made = distill.run(cfg, experts.run(cfg)["store"])
        set_uri = made["set"]
    made_s = time.time() - tic
    summary = evaluate.run(cfg, set_uri)["summary"]
    return {"key": f"{kind}-{ipc}", "kind": kind, "ipc": ipc, "overrides": overrides(args, kind, ipc),
            "accuracy": accuracy_of(summary),
            "make_s": round(made_s, 1), "wall_s": round(time.time() - tic, 1), "learned_lr": made.get("lr"),
            "start_window": made.get("start_window")}


def evaluate_kept(row: dict, archs: list[str], extra: tuple[str, ...] = ()) -> tuple[dict, float]:
    """The kept set of ``row`` (found again from the row's overrides; a random row's real images drawn again by its
    seed where they are not on disk) evaluated on ``archs`` under ``extra`` overrides: the accuracy per architecture
    and the wall seconds."""
    from raydd.config import compose
    from raydd.evaluate import stage as evaluate
    from raydd.storage.layout import set_location

    cfg = compose([*row["overrides"], f"evaluate.models=[{','.join(archs)}]", f"evaluate.width={WIDTH}", *extra])
    tic = time.time()
    loc = set_location(cfg)
    drawn = row["kind"] == "random" and not loc.join("set.parquet").exists()
    summary = evaluate.run(cfg, None if drawn else loc.uri)["summary"]
    return accuracy_of(summary), round(time.time() - tic, 1)


def add_archs(row: dict, archs: list[str], extra: tuple[str, ...] = ()) -> dict:
    """``row`` with its kept set also evaluated on ``archs`` (under ``extra`` overrides), each with its wall time."""
    accuracy, seconds = evaluate_kept(row, archs, extra)
    return {**row, "accuracy": {**row["accuracy"], **accuracy},
            "arch_wall_s": {**row.get("arch_wall_s", {}), ",".join(archs): seconds}}


def add_fixed_lr(row: dict, archs: list[str], lr: float, command: str, extra: tuple[str, ...] = ()) -> dict:
    """``row`` with its kept set also evaluated on ``archs`` at evaluation lr ``lr`` instead of the set's learned lr
    (``row["at_lr"][lr][arch]``: the accuracy, wall time and command)."""
    accuracy, seconds = evaluate_kept(row, archs, ("evaluate.use_set_lr=false", f"evaluate.lr={lr}", *extra))
    at = row.get("at_lr", {})
    done = {arch: {**a, "wall_s": seconds, "command": command} for arch, a in accuracy.items()}
    return {**row, "at_lr": {**at, f"{lr:g}": {**at.get(f"{lr:g}", {}), **done}}}


def strongest(got: dict[str, dict | None], kinds: tuple[str, ...]) -> dict | None:
    """The accuracy with the highest mean among ``kinds`` that have one."""
    return max((got[k] for k in kinds if got.get(k)), key=lambda a: a["mean"], default=None)


def margin(best: dict | None, got: dict[str, dict | None]) -> str:
    """The best distilled set's lead over the stronger baseline, and whether it is more than two standard errors
    of the difference (each mean's standard error from its models' std)."""
    base = strongest(got, ("random", "ddoq"))
    if best is None or base is None:
        return "–"
    lead = best["mean"] - base["mean"]
    two_se = 2 * math.sqrt(best["std"] ** 2 / best["n"] + base["std"] ** 2 / base["n"])
    return f"{lead:+.2f} ({'>' if lead > two_se else '≤'} 2 SE = {two_se:.2f})"


def measured_ipcs(rows: dict[str, dict]) -> list[int]:
    """Every IPC the table has a current row of (whichever ``--ipcs`` made them)."""
    return sorted({r["ipc"] for r in rows.values() if r["ipc"] is not None and not r.get("note")})


def wall(row: dict, arch: str) -> str:
    """`` (N s)``: the row's wall time (making its set and evaluating it on ``--archs``), or that of the later
    evaluation that added ``arch``."""
    added = [t for archs, t in row.get("arch_wall_s", {}).items() if arch in archs.split(",")]
    return f" ({(added or [row['wall_s']])[0]:.0f} s)"


def learned(row: dict, arch: str) -> str:
    """The row's learned lr and its accuracy on ``arch`` at that lr (``–`` where it has neither)."""
    a = row["accuracy"].get(arch)
    lr = "–" if row.get("learned_lr") is None else f"{row['learned_lr']:.3f}"
    return f"{lr}: " + ("–" if a is None else f"{a['mean']:.2f} ± {a['std']:.2f}")


def markdown(args: argparse.Namespace, rows: dict[str, dict]) -> str:
    kinds = ["random", "ddoq", "datm", args.other]
    full = rows.get("full-None")
    commands = dict.fromkeys(c for r in rows.values() for c in (r.get("command", args.command), *arch_commands(r),
                                                                 *(a["command"] for per in r.get("at_lr", {}).values() for a in per.values())))
    lines = ["# Large IPC, Fashion-MNIST, ConvNet-3 width 16", "", "Commands (each row keeps its own in the JSON):", "",
             *(f"    {c}" for c in commands), "",
             f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU  ",
             f"Setup: per IPC the rows of `benchmarks/large_ipc.py` (recipes in `raydd/configs/experiment/fmnist_datm_ipc*.yaml`, "
             f"`fmnist_ddoq.yaml`); {args.models} models per architecture, 300 epochs with DSA, final accuracy (mean ± std); "
             f"full: the 60k training images, {args.full_epochs} epochs with DSA. Wall time: making the set and evaluating it "
             "(experts included the first time a store is trained). best: the better of the trajectory matchers; "
             "2 SE: two standard errors of the difference of means (std over the models). Cells of an architecture named by "
             "a command's `--compile` trained their models through `torch.compile` (`evaluate.compile`: the same "
             "protocol, other float rounding; `benchmarks/results/eval_speed.md`).", ""]
    for arch in dict.fromkeys(a for r in rows.values() for a in r["accuracy"]):
        lines += [f"## {arch}" + ("" if arch == "convnet" else f", width {WIDTH} (full data not run on it)"), "", "| IPC | " + " | ".join(kinds) + " | full data | best − full | best − max(random, ddoq) |",
                  "|---|" + "---|" * (len(kinds) + 3)]
        f = full["accuracy"].get(arch) if full else None
        for ipc in measured_ipcs(rows):
            cells, got = [], {}
            for kind in kinds:
                r = rows.get(f"{kind}-{ipc}")
                a = got[kind] = r["accuracy"].get(arch) if r else None
                cells.append("–" if a is None else f"{a['mean']:.2f} ± {a['std']:.2f}{wall(r, arch)}")
            best = strongest(got, ("datm", args.other))
            gap = "–" if best is None or f is None else f"{best['mean'] - f['mean']:+.2f}"
            full_cell = "–" if f is None else f"{f['mean']:.2f} ± {f['std']:.2f}"
            lines.append(f"| {ipc} | " + " | ".join(cells) + f" | {full_cell} | {gap} | {margin(best, got)} |")
        lines.append("")
    fixed = [(r, lr, arch, a) for r in rows.values() for lr, per in r.get("at_lr", {}).items() for arch, a in per.items()]
    if fixed:
        lines += ["## At a fixed evaluation lr (`evaluate.use_set_lr=false evaluate.lr=<lr>`), beside the set's learned lr", "",
                  "| row | architecture | learned lr: accuracy | evaluation lr | accuracy |", "|---|---|---|---|---|"]
        lines += [f"| {r['key']} | {arch} | {learned(r, arch)} | {lr} | {a['mean']:.2f} ± {a['std']:.2f} ({a['wall_s']:.0f} s) |"
                  for r, lr, arch, a in fixed]
        lines.append("")
    earlier = [r for r in rows.values() if r.get("note")]
    if earlier:
        lines += ["## Earlier recipes and probes (ConvNet; kept in the JSON, not rerun)", "", "| row | IPC | accuracy | what it was |",
                  "|---|---|---|---|"]
        lines += [f"| {r['key']} | {r['ipc']} | {r['accuracy']['convnet']['mean']:.2f} ± {r['accuracy']['convnet']['std']:.2f} "
                  f"| {r['note']} |" for r in earlier]
        lines.append("")
    return "\n".join(lines)


def arch_commands(row: dict) -> list[str]:
    """The commands that evaluated a kept set on more architectures, oldest first (``arch_command``: one, as
    rows before the list kept it)."""
    return row.get("arch_commands", [row["arch_command"]] if "arch_command" in row else [])


def plot(args: argparse.Namespace, rows: dict[str, dict]) -> None:
    from raydd.report.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for kind in ["random", "ddoq", "datm", args.other]:
        pts = [(ipc, rows[f"{kind}-{ipc}"]["accuracy"]["convnet"]) for ipc in measured_ipcs(rows) if f"{kind}-{ipc}" in rows]
        if pts:
            ax.errorbar([p for p, _ in pts], [a["mean"] for _, a in pts], yerr=[a["std"] for _, a in pts], marker="o", label=kind)
    if "full-None" in rows:
        ax.axhline(rows["full-None"]["accuracy"]["convnet"]["mean"], color="k", ls="--", label="full data")
    ax.set(xscale="log", xlabel="images per class", ylabel="test accuracy (%)", title="Fashion-MNIST, ConvNet-3 w16")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.results / "large_ipc.png", dpi=120)
    plt.close(fig)


def save(args: argparse.Namespace, rows: dict[str, dict]) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "large_ipc.json").write_text(json.dumps({"rows": list(rows.values())}, indent=2))
    (args.results / "large_ipc.md").write_text(markdown(args, rows))
    plot(args, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/large_ipc")
    ap.add_argument("--ipcs", type=int, nargs="+", default=[50, 100, 300])
    ap.add_argument("--other", default="mct", choices=["mtt", "ast", "mct"])
    ap.add_argument("--kinds", nargs="+", default=["random", "ddoq", "datm", "other"],
                    choices=["random", "ddoq", "datm", "other"], help="which sets per IPC to make (other: --other's)")
    ap.add_argument("--archs", nargs="+", default=["convnet", "resnet18", "vgg11"])
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--full-epochs", type=int, default=30)
    ap.add_argument("--eval-epochs", type=int, default=300)
    ap.add_argument("--smoke", nargs="*", default=[], help="extra overrides for every row (smoke runs: fewer experts, iterations; probes)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--eval-lr", type=float, default=None,
                    help="evaluate the kept sets of --kinds/--ipcs on --archs at this lr instead of their learned lr")
    ap.add_argument("--compile", nargs="+", default=[], metavar="ARCH",
                    help="train these architectures' evaluation models through torch.compile (evaluate.compile; "
                         "other float rounding)")
    ap.add_argument("--eval-cpus", type=float, default=None,
                    help="CPUs per evaluation model (evaluate.cpus_per_model; 0.66: three models at once on 2 cores)")
    args = ap.parse_args()
    if args.eval_lr is not None and not args.eval_lr > 0:
        ap.error(f"--eval-lr {args.eval_lr}: an evaluation lr must be positive")
    args.command = "RAY_AUTH_MODE=disabled .venv/bin/python " + " ".join(["benchmarks/large_ipc.py", *sys.argv[1:]])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    out = args.results / "large_ipc.json"
    rows = {r["key"]: r for r in json.loads(out.read_text())["rows"]} if out.exists() else {}
    kinds = [args.other if k == "other" else k for k in args.kinds]
    extra = tuple(evaluation(args))
    for kind, ipc in [("full", None), *((k, i) for i in args.ipcs for k in kinds)]:
        key = f"{kind}-{ipc}"
        if args.eval_lr is not None:
            done = rows.get(key, {}).get("at_lr", {}).get(f"{args.eval_lr:g}", {})
            if kind == "full" or key not in rows or not (missing := [a for a in args.archs if a not in done]):
                continue
            rows[key] = add_fixed_lr(rows[key], missing, args.eval_lr, args.command, extra)
        elif key not in rows:
            rows[key] = {**run_row(args, kind, ipc), "command": args.command}
        elif kind != "full" and (missing := [a for a in args.archs if a not in rows[key]["accuracy"]]):
            rows[key] = {**add_archs(rows[key], missing, extra), "arch_commands": [*arch_commands(rows[key]), args.command]}
        else:
            continue
        save(args, rows)
        print("large_ipc:", json.dumps(rows[key]), flush=True)
    save(args, rows)


if __name__ == "__main__":
    main()
