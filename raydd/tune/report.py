"""A sweep's results: one row per trial, as CSV, Markdown and plots."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from raydd.report.figures import png_bytes, pyplot
from raydd.storage.fs import Location
from raydd.storage.layout import model_tag
from raydd.tune.space import Param

STATUSES = ("completed", "stopped", "error", "unfinished")
STOPPED_LABEL = "stopped early (last fast eval)"


def trial_row(config: dict[str, Any], history: pd.DataFrame | None, last: dict[str, Any], error: Exception | None,
              params: list[Param]) -> dict[str, Any]:
    """A trial's swept values, how far it got, its last fast evaluation and its final test accuracy."""
    history = history if history is not None else pd.DataFrame()
    evals = history["eval_acc"].dropna() if "eval_acc" in history else pd.Series(dtype=float)
    status = ("error" if error is not None else "completed" if "test_acc" in last
              else "stopped" if last.get("done") else "unfinished")  # stopped: by the scheduler
    return {"trial": last.get("trial_id", ""), **{p.key: config.get(p.key) for p in params}, "status": status,
            "iterations": int(history["iteration"].max()) if "iteration" in history else 0,
            "eval_acc": 100 * float(evals.iloc[-1]) if len(evals) else math.nan,
            "test_acc": last.get("test_acc", math.nan), "test_std": last.get("test_std", math.nan),
            "time_s": round(float(last.get("time_total_s", math.nan)), 1),
            "set": last.get("set", ""), "error": "" if error is None else str(error).splitlines()[0][:200]}


def trial_rows(results, params: list[Param]) -> list[dict[str, Any]]:
    """Rows of a Tune ResultGrid, completed trials first, best test accuracy first."""
    rows = [trial_row(r.config or {}, r.metrics_dataframe, r.metrics or {}, r.error, params) for r in results]
    return sorted(rows, key=lambda r: (r["status"] != "completed", -_num(r["test_acc"]), -_num(r["eval_acc"])))


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    completed = [r for r in rows if r["status"] == "completed"]
    return max(completed, key=lambda r: r["test_acc"]) if completed else None


def sweep_notes(cfg: dict[str, Any], counts: dict[str, int], best: dict[str, Any] | None, params: list[Param],
                scheduler: str) -> list[str]:
    """What was swept and how, how the trials ended, and the best one: the lines above the table."""
    d, ev = cfg["distill"], cfg["evaluate"]
    lines = [f"{cfg['method']['name']} on {cfg['dataset']['name']}, {model_tag(cfg['model'])}: {d['iterations']} "
             f"iterations, syn_steps {d['syn_steps']}, fast eval every {d['eval_every']} ({d['eval_epochs']} epochs); "
             f"test accuracy: {ev['num_models']} x {ev['models'][0]}, {ev['epochs']} epochs.",
             f"Scheduler: {scheduler}; {sum(counts.values())} trials: {counts['completed']} completed, "
             f"{counts['stopped']} stopped early, {counts['error']} failed"
             + (f", {counts['unfinished']} unfinished (interrupted: re-run to resume)" if counts["unfinished"] else "")
             + "."]
    if best:
        shown = ", ".join(f"{p.key}={best[p.key]}" for p in params)
        lines.append(f"Best: trial {best['trial']} ({shown}): {best['test_acc']:.2f} ± {best['test_std']:.2f} %"
                     + ("" if counts["unfinished"] else " → best.yaml"))
    return lines


def _num(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown(rows: list[dict[str, Any]], params: list[Param], title: str, notes: list[str]) -> str:
    cols = ["trial", *(p.key for p in params), "status", "iterations", "eval_acc", "test_acc", "test_std", "time_s"]
    heads = ["trial", *(p.key for p in params), "status", "iterations", "last fast eval (%)", "test acc (%)", "± std",
             "trial time (s)"]
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    digits = {"eval_acc": 2, "test_acc": 2, "test_std": 2, "time_s": 0}
    for r in rows:
        cells = [f"{r[c]:.{digits[c]}f}" if c in digits and not math.isnan(r[c]) else _fmt(r[c]) for c in cols]
        lines.append("| " + " | ".join(c or "–" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(loc: Location, rows: list[dict[str, Any]], text: str) -> None:
    loc.join("results.csv").write_bytes_atomic(pd.DataFrame(rows).to_csv(index=False).encode())
    loc.join("results.md").write_bytes_atomic(text.encode())


def plot_ipc(rows: list[dict[str, Any]], ipc: int, method: str):
    """Test accuracy against IPC (completed trials, best per IPC joined); stopped trials at their last fast eval."""
    plt = pyplot()
    df = pd.DataFrame(rows)
    df["ipc"] = df["ipc"] if "ipc" in df else ipc
    fig, ax = plt.subplots(figsize=(5, 3.5))
    done, stopped = df[df["status"] == "completed"], df[df["status"] == "stopped"]
    best = done.groupby("ipc")["test_acc"].max().sort_index()
    ax.plot(best.index, best.values, "o-", label=f"{method} (best per IPC)")
    ax.scatter(done["ipc"], done["test_acc"], s=14, alpha=0.5, label=f"{method} trials")
    if len(stopped):
        ax.scatter(stopped["ipc"], stopped["eval_acc"], marker="x", color="gray", label=STOPPED_LABEL)
    ax.set_xscale("log")
    ax.set_xticks(sorted(df["ipc"].unique()), labels=[str(i) for i in sorted(df["ipc"].unique())])
    ax.set(xlabel="images per class (IPC)", ylabel="test accuracy (%)", title="accuracy vs IPC")
    ax.legend(fontsize=7)
    return fig


def plot_param(rows: list[dict[str, Any]], param: Param, ipc: int):
    """Test accuracy against one swept value, one line (mean per value) per IPC."""
    plt = pyplot()
    df = pd.DataFrame(rows)
    df["ipc"] = df["ipc"] if "ipc" in df else ipc
    done = df[df["status"] == "completed"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for ipc_value, group in done.groupby("ipc"):
        mean = group.groupby(param.key)["test_acc"].mean().sort_index()
        ax.plot(mean.index, mean.values, "o-", label=f"IPC {ipc_value}")
    stopped = df[df["status"] == "stopped"]
    if len(stopped):
        ax.scatter(stopped[param.key], stopped["eval_acc"], marker="x", color="gray", label=STOPPED_LABEL)
    low, high = min(param.values), max(param.values)
    if param.kind == "loguniform" or (low > 0 and high / low >= 20):
        ax.set_xscale("log")
    ax.set(xlabel=param.key, ylabel="test accuracy (%)", title=f"accuracy vs {param.key}")
    ax.legend(fontsize=7)
    return fig


def write_plots(loc: Location, rows: list[dict[str, Any]], params: list[Param], ipc: int, method: str) -> list[str]:
    """``acc_vs_ipc.png`` and ``acc_vs_<key>.png`` per numeric swept key (none before a trial has ended);
    returns the file names."""
    ended = [r for r in rows if r["status"] in ("completed", "stopped")]
    if not ended:
        return []
    figures = {"acc_vs_ipc.png": plot_ipc(ended, ipc, method)}
    for p in params:
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p.values)
        if p.key != "ipc" and numeric:
            figures[f"acc_vs_{p.key}.png"] = plot_param(ended, p, ipc)
    for name, fig in figures.items():
        loc.join(name).write_bytes_atomic(png_bytes(fig))
    return list(figures)
