"""``raydd report runs=<uri>``: one static HTML page over a storage root.

Per set: its grid, loss / learned lr / fast-evaluation accuracy over iterations with rejected
steps marked, and its evaluation beside the random and full baselines; per expert store: test
accuracy per epoch per expert; per Tune sweep: the ASHA curves and results. Plots are embedded
PNGs: the page needs no server and fetches nothing. It is rewritten on every run.
"""

from __future__ import annotations

from typing import Any

from raydd.specs import ConfigError
from raydd.report.collect import collect_experts, collect_sets, collect_sweeps
from raydd.report.html import render
from raydd.storage.fs import Location, resolve


def locations(cfg: dict[str, Any]) -> tuple[Location, Location]:
    """The storage root to read (``report.runs``, else ``storage.root``) and the page to write."""
    r, endpoint = cfg["report"], cfg["storage"].get("endpoint_url")
    runs = resolve(r.get("runs") or cfg["storage"]["root"], endpoint)
    if not runs.exists():
        raise ConfigError(f"runs={runs.uri} does not exist: give a storage root (the storage.root of earlier runs)")
    return runs, resolve(r["out"], endpoint) if r.get("out") else runs.join("report.html")


def run(cfg: dict[str, Any]) -> str:
    runs, out = locations(cfg)
    page = render(runs.uri, collect_sets(runs), collect_experts(runs), collect_sweeps(runs))
    out.write_bytes_atomic(page.encode())
    print(f"report: {out.uri}")
    return out.uri
