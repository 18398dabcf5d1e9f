"""Report an expert set made by ``raydd experts``: per-epoch test accuracy read back from its shards.

    raydd experts dataset=fashion_mnist model.width=16 experts.num=10 experts.epochs=20 storage.root=runs/fmnist
    .venv/bin/python benchmarks/expert_set.py runs/fmnist/experts/fashion_mnist-convnet3w16-plain --log runs/fmnist/experts.log

Verifies every shard (row sha256s and checksums), then writes the accuracy curve (mean, min
and max over experts), shard sizes and, from the CLI's summary line in ``--log``, the wall time,
to ``benchmarks/results/experts_<dataset>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from raydd.storage.layout import model_tag
from raydd.storage.trajectory import TrajectoryStore

RESULTS = Path(__file__).parent / "results"


def curve(store: TrajectoryStore) -> list[dict]:
    """Per saved epoch: test accuracy (%) mean/min/max over experts and mean train loss."""
    metrics = [store.metrics(i) for i in store.experts]
    rows = []
    for k, epoch in enumerate(metrics[0]["epoch"]):
        acc = [100 * m["test_acc"][k] for m in metrics]
        loss = [m["train_loss"][k] for m in metrics if m["train_loss"][k] is not None]
        rows.append({"epoch": epoch, "acc_mean": statistics.fmean(acc), "acc_min": min(acc), "acc_max": max(acc),
                     "train_loss": statistics.fmean(loss) if loss else None})
    return rows


def summary_line(log: Path | None) -> str | None:
    """The stage's final ``experts: N in ... written in S s ...`` line, if a log was given."""
    if log is None:
        return None
    lines = re.findall(r"^experts: \d+ in .*$", log.read_text().replace("\r", "\n"), re.M)
    return lines[-1] if lines else None


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = [f"# Expert set: {m['dataset']['name']}, {model_tag(m['model'])}", "",
             f"Command: `{r['command']}`  ", f"Store: `{r['store']}`, {r['experts']} experts × {m['epochs']} epochs, "
             f"{m['variant']} variant, {m['form']} {m['dtype']}; every shard verified (row sha256s, checksum).  ",
             f"Training: SGD lr {r['config']['lr']}, momentum {r['config']['momentum']}, batch {r['config']['batch_size']}, "
             f"DSA {'on' if r['config']['dsa'] else 'off'}; test accuracy on the full test set after every epoch, "
             "stored in each shard's `test_acc` column.  ",
             f"Size: {r['bytes_total'] / 1e6:.2f} MB in all, {r['bytes_per_expert'] / 1e6:.3f} MB per expert.  "]
    if r["stage_summary"]:
        lines.append(f"Stage summary (2-core CPU machine, no GPU): `{r['stage_summary']}`")
    lines += ["", "| epoch | test acc % mean | min | max | train loss |", "|---|---|---|---|---|"]
    for c in r["curve"]:
        loss = "" if c["train_loss"] is None else f"{c['train_loss']:.4f}"
        lines.append(f"| {c['epoch']:g} | {c['acc_mean']:.2f} | {c['acc_min']:.2f} | {c['acc_max']:.2f} | {loss} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--log", type=Path, default=None, help="the CLI's output, for its summary line")
    ap.add_argument("--command", default=None, help="the command that made the store (default: rebuilt from its config)")
    a = ap.parse_args()
    store = TrajectoryStore.open(a.store)
    store.verify()
    meta = {k: v for k, v in store.meta.items() if k != "layout"}
    shards = store.manifest["shards"]
    command = a.command or (f"raydd experts dataset={meta['dataset']['name']} model.width={meta['model']['width']} "
                            f"experts.num={len(shards)} experts.epochs={meta['epochs']} storage.root=<root>")
    r = {"command": command, "store": a.store, "experts": len(shards), "meta": meta, "config": meta["config"]["experts"],
         "bytes_total": sum(s["bytes"] for s in shards),
         "bytes_per_expert": statistics.fmean(s["bytes"] for s in shards), "curve": curve(store),
         "stage_summary": summary_line(a.log)}
    RESULTS.mkdir(exist_ok=True)
    name = f"experts_{meta['dataset']['name']}"
    (RESULTS / f"{name}.json").write_text(json.dumps(r, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
