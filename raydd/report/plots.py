"""The report's figures, each from the records of :mod:`raydd.report.collect` to PNG bytes."""

from __future__ import annotations

from typing import Any

import pandas as pd

from raydd.report.collect import Trial
from raydd.report.figures import png_bytes, pyplot

STATUS_STYLE = {"completed": "-", "stopped": "--", "error": ":", "unfinished": "-."}


def distill_curves(metrics: pd.DataFrame) -> bytes:
    """Matching loss (rejected steps marked), learned lr and fast-evaluation accuracy over iterations."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    it = metrics["iteration"]
    axes[0].plot(it, metrics["loss"], lw=1, label="matching loss")
    rejected = metrics[~metrics["applied"].astype(bool)] if "applied" in metrics else metrics.iloc[:0]
    if len(rejected):
        axes[0].scatter(rejected["iteration"], rejected["loss"], marker="x", color="red", zorder=3,
                        label=f"rejected step ({len(rejected)})")
    axes[0].set(xlabel="iteration", ylabel="loss", title="matching loss")
    axes[0].legend(fontsize=7)
    axes[1].plot(it, metrics["lr"], lw=1)
    axes[1].set(xlabel="iteration", ylabel="lr", title="learned inner lr")
    if "eval_acc" in metrics:
        evals = metrics.dropna(subset=["eval_acc"])
        axes[2].plot(evals["iteration"], 100 * evals["eval_acc"], "o-")
    else:
        axes[2].text(0.5, 0.5, "no fast evaluation\n(distill.eval_every=0)", ha="center", va="center",
                     transform=axes[2].transAxes)
    axes[2].set(xlabel="iteration", ylabel="accuracy (%)", title="fast evaluation (1 model)")
    fig.tight_layout()
    return png_bytes(fig)


def evaluation_bars(rows: list[dict[str, Any]]) -> bytes:
    """Mean accuracy with ± std error bars per architecture: the set beside its random and full baselines."""
    plt = pyplot()
    archs = list(dict.fromkeys(r["model"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    width = 0.8 / len(sets)
    fig, ax = plt.subplots(figsize=(2 + 0.8 * len(archs) * len(sets), 2.6))
    for i, name in enumerate(sets):
        mine = {r["model"]: r for r in rows if r["set"] == name}
        xs = [a + (i - (len(sets) - 1) / 2) * width for a, arch in enumerate(archs) if arch in mine]
        ys = [mine[arch]["mean"] for arch in archs if arch in mine]
        errs = [mine[arch]["std"] for arch in archs if arch in mine]
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=4, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(archs)), archs)
    ax.set(ylabel="test accuracy (%)", title="evaluation (mean ± std over models)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return png_bytes(fig)


def expert_curves(metrics: dict[int, dict[str, list]]) -> bytes:
    """Test accuracy and training loss per epoch, one line per expert."""
    plt = pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.2))
    for expert, m in sorted(metrics.items()):
        points = [(e, a, lo) for e, a, lo in zip(m["epoch"], m["test_acc"], m["train_loss"]) if a is not None]
        acc.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", ms=3, label=f"expert {expert}")
        loss.plot([p[0] for p in points if p[2] is not None], [p[2] for p in points if p[2] is not None], "o-", ms=3)
    acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="experts: test accuracy")
    loss.set(xlabel="epoch", ylabel="loss", title="experts: training loss")
    acc.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return png_bytes(fig)


def asha_curves(trials: list[Trial]) -> bytes:
    """Each trial's fast-evaluation accuracy over iterations: where ASHA stopped it, or where it finished."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for t in trials:
        evals = t.history.dropna(subset=["eval_acc"]) if "eval_acc" in t.history else t.history.iloc[:0]
        label = f"{t.trial} ({', '.join(f'{k}={v}' for k, v in t.params.items())}): {t.status}"
        line, = ax.plot(evals["iteration"], 100 * evals["eval_acc"], STATUS_STYLE.get(t.status, "-"), marker="o", ms=3,
                        label=label)
        if t.status == "stopped" and len(evals):
            ax.scatter(evals["iteration"].iloc[-1:], 100 * evals["eval_acc"].iloc[-1:], marker="x", s=60,
                       color=line.get_color(), zorder=3)
    ax.set(xlabel="iteration", ylabel="fast-eval accuracy (%)", title="ASHA: trials over iterations (x: stopped)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return png_bytes(fig)
