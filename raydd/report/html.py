"""The report page: self-contained HTML (inline CSS, plots as base64 PNG, no scripts, nothing fetched)."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from typing import Any

from raydd.report import plots
from raydd.report.collect import ExpertRun, SetRun, Sweep, baseline_names, undigested

BASELINES = ("random", "full")
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.4em 0;display:block}
.row{display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap}img[alt^="images of"]{image-rendering:pixelated}
.muted{color:#777}section{margin-bottom:2em}"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def img(data: bytes, alt: str, width: int | None = None) -> str:
    size = f' style="width:{width}px"' if width else ""
    return f'<img alt="{esc(alt)}"{size} src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def grid_img(data: bytes, alt: str, target: int = 600) -> str:
    """A set's grid, scaled by a whole factor (pixels stay sharp) to about ``target`` pixels on its long side."""
    from PIL import Image

    w, h = Image.open(io.BytesIO(data)).size
    return img(data, alt, w * max(1, min(8, target // max(w, h))))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return "–" if value is None else str(value)


def table(head: list[str] | None, rows: list[list[Any]]) -> str:
    """A table; without ``head``, a two-column list of facts."""
    cells = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{cells}{body}</table>"


def acc(summary: dict[str, Any] | None, arch: str) -> str:
    s = (summary or {}).get(arch)
    return "–" if s is None else f"{s['mean']:.2f} ± {s['std']:.2f} ({s['n']})"


def evaluation_section(run: SetRun, by_name: dict[str, SetRun]) -> str:
    """The set's accuracy per architecture beside the random and full baselines, as a table and bars."""
    if not run.evaluation:
        return '<p class="muted">not evaluated yet (<code>raydd evaluate</code>)</p>'
    names = baseline_names(run.name) or ("", "")
    compared = {"this set": run, **{b: by_name[n] for b, n in zip(BASELINES, names) if n in by_name and by_name[n].evaluation}}
    summary = {label: r.evaluation["summary"] for label, r in compared.items()}
    archs = list(summary["this set"])
    rows = [[arch, *(acc(summary.get(label), arch) for label in ("this set", *BASELINES)),
             (f"{summary['this set'][arch]['mean'] - summary['random'][arch]['mean']:+.2f}"
              if arch in summary.get("random", {}) else "–")] for arch in archs]
    bars = [{"set": f"{label} ({compared[label].name})", "model": arch, "mean": s[arch]["mean"], "std": s[arch]["std"]}
            for label, s in summary.items() for arch in archs if arch in s]
    return ('<div class="row"><div>' + table(["model", "this set (%)", "random real (%)", "full data (%)",
                                              "gain over random"], rows)
            + '<p class="muted">final test accuracy, mean ± std over models (number of models)</p></div>'
            + img(plots.evaluation_bars(bars), f"evaluation of {run.name}") + "</div>")


def set_facts(run: SetRun) -> list[list[Any]]:
    m, metrics = run.meta or {}, run.metrics
    rejected = int((~metrics["applied"].astype(bool)).sum()) if metrics is not None and "applied" in metrics else None
    facts = [("method", m.get("method")), ("IPC", m.get("ipc")), ("dataset", m.get("dataset")),
             ("images", m.get("n")), ("image shape", "×".join(map(str, m.get("shape", []))) or None),
             ("learned lr", m.get("lr")), ("soft labels", "yes" if m.get("soft_label_temperature") else "no"),
             ("ZCA", "yes" if m.get("zca") else "no"), ("iterations", m.get("iterations")),
             ("rejected steps", rejected if rejected is not None else m.get("rejected_steps")),
             ("final loss", m.get("final_loss")), ("wall time (s)", m.get("wall_s")), ("format", m.get("format"))]
    return [[k, v] for k, v in facts if v is not None]


def set_section(run: SetRun, by_name: dict[str, SetRun]) -> str:
    grid = grid_img(run.grid, f"images of {run.name}") if run.grid else ""
    parts = [f'<section id="set-{esc(run.name)}"><h3>{esc(run.name)}</h3>',
             f'<div class="row">{table(None, set_facts(run))}{grid}</div>']
    if run.metrics is not None and len(run.metrics):
        parts.append(img(plots.distill_curves(run.metrics), f"distillation curves of {run.name}"))
    parts.append(evaluation_section(run, by_name))
    return "".join(parts) + "</section>"


def baselines_table(runs: list[SetRun]) -> str:
    rows = [[r.name, arch, acc(r.evaluation["summary"], arch)] for r in runs if r.evaluation
            for arch in r.evaluation["summary"]]
    return table(["baseline set", "model", "accuracy (%)"], rows)


def expert_section(run: ExpertRun) -> str:
    finals = {e: next((a for a in reversed(m["test_acc"]) if a is not None), None) for e, m in run.metrics.items()}
    meta = run.meta
    facts = [["experts", len(run.metrics)], ["epochs", meta.get("epochs")], ["variant", meta.get("variant")],
             ["form", meta.get("form")], ["dtype", meta.get("dtype")], ["ZCA", "yes" if meta.get("zca") else "no"]]
    rows = [[f"expert {e}", None if a is None else 100 * a] for e, a in sorted(finals.items())]
    return (f'<section id="experts-{esc(run.name)}"><h3>{esc(run.name)}</h3>' + table(None, facts)
            + img(plots.expert_curves(run.metrics), f"expert curves of {run.name}")
            + table(["expert", "final test accuracy (%)"], rows) + "</section>")


def sweep_section(sweep: Sweep) -> str:
    parts = [f'<section id="sweep-{esc(sweep.name)}"><h3>{esc(sweep.name)}</h3>',
             img(plots.asha_curves(sweep.trials), f"ASHA curves of {sweep.name}")]
    if sweep.results is not None:
        cols = [c for c in sweep.results.columns if c not in ("set", "error")]
        parts.append(table(cols, sweep.results[cols].values.tolist()))
    figures = "".join(img(data, f"{name} of {sweep.name}", 420) for name, data in sorted(sweep.plots.items()))
    return "".join(parts) + f'<div class="row">{figures}</div></section>'



def render(root_uri: str, sets: list[SetRun], experts: list[ExpertRun], sweeps: list[Sweep]) -> str:
    by_name = {undigested(r.name): r for r in sets}
    distilled = [r for r in sets if (r.meta or r.evaluation["meta"]).get("method") not in BASELINES]
    baselines = [r for r in sets if r not in distilled]
    sections = [("Distilled sets", "".join(set_section(r, by_name) for r in distilled)),
                ("Baselines", baselines_table(baselines) if baselines else ""),
                ("Expert stores", "".join(expert_section(r) for r in experts)),
                ("Tune sweeps", "".join(sweep_section(s) for s in sweeps))]
    toc = "".join(f'<li><a href="#{esc(t.lower().replace(" ", "-"))}">{esc(t)}</a></li>' for t, body in sections if body)
    body = "".join(f'<h2 id="{esc(t.lower().replace(" ", "-"))}">{esc(t)}</h2>{b}' for t, b in sections if b)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>raydd report: {esc(root_uri)}</title>'
            f"<style>{CSS}</style></head><body><h1>raydd report</h1>"
            f'<p class="muted">{esc(root_uri)} · {len(distilled)} distilled sets, {len(baselines)} baselines, '
            f"{len(experts)} expert stores, {len(sweeps)} sweeps · written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"
            f"<ul>{toc}</ul>{body or '<p>nothing to report: no sets, expert stores or sweeps here</p>'}</body></html>")
