"""``raydd report``: one static page over a storage root, checked by content and rendered in headless Chromium."""

import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import ray
import torch

from raydd.cli import main
from raydd.config import compose
from raydd.data.registry import dataset_spec, open_split
from raydd.evaluate.baselines import random_set
from raydd.evaluate.run import summarize, write_results
from raydd.specs import LoaderSpec
from raydd.report.collect import collect_experts, collect_sets, collect_sweeps
from raydd.storage.distilled import DistilledSet, save_set
from raydd.storage.fs import resolve
from raydd.storage.trajectory import ShardRows, add_entry, config_hash, open_manifest, write_manifest, write_shard
from raydd.tune.report import trial_rows, write_tables
from tune_fixtures import init_ray, run_toy_sweep

NAME = "mtt-ipc2-digits-convnet2w8-0123abcd"  # sets/<run_name>-<digest>
RANDOM, FULL = "random-ipc2-digits-convnet2w8-4567cdef", "full-digits-convnet2w8-89ab0123"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def evaluated(loc, accuracies, meta) -> None:
    """Write an evaluation where `raydd evaluate` puts it: ``evals/<set folder>-<digest>/``."""
    root, name = loc.uri.rsplit("/sets/", 1)
    loc = resolve(root).join("evals", f"{name}-fedcba98")
    rows = [{"model": "convnet", "seed": i, "accuracy": a} for i, a in enumerate(accuracies)]
    write_results(loc, rows, summarize(rows), meta)


def write_expert_store(loc) -> None:
    config = {"experts": {"lr": 0.01}, "seed": 0}
    meta = {"form": "full", "dtype": "float32", "variant": "plain", "epochs": 3, "dataset": {"name": "digits"},
            "model": {"name": "convnet"}, "layout": [["w", [4]]], "zca": False, "config_hash": config_hash(config),
            "config": config}
    manifest = open_manifest(loc, meta)
    for i in range(2):
        rows = ShardRows(i, [0.0, 1.0, 2.0, 3.0], [torch.full((4,), float(e)) for e in range(4)], [None] * 4,
                         [None, 2.0, 1.5, 1.2 - 0.1 * i], [0.1, 0.5 + 0.1 * i, 0.7, 0.8 + 0.05 * i])
        add_entry(manifest, write_shard(loc, rows, {**meta, "seed": i}, "float32"))
    write_manifest(loc, manifest)


def run_sweep(root) -> None:
    """A real (tiny) Ray Tune sweep with ASHA, and raydd's results table beside it."""
    from raydd.tune.space import Param

    init_ray()
    try:
        rows = trial_rows(run_toy_sweep(str(root / "tune"), "sweep"), [Param("scale", "grid", (0.2, 0.5, 0.9))])
        write_tables(resolve(str(root / "tune" / "sweep")), rows, "")
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def storage_root(tmp_path_factory):
    """A storage root as the stages leave it: a distilled set with its metrics, baselines, experts and a sweep."""
    root = tmp_path_factory.mktemp("runs")
    spec = dataset_spec({"name": "digits"})
    train = open_split({"name": "digits"}, LoaderSpec.from_config(compose([])["loader"]), "train")
    sets = resolve(str(root / "sets"))
    ds = DistilledSet(torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(10).repeat(2),
                      lr=0.02, meta={"method": "mtt", "ipc": 2, "iterations": 20})
    save_set(ds, sets.join(NAME), spec)
    history = pd.DataFrame({"iteration": range(1, 21), "loss": [1 - 0.02 * i for i in range(20)],
                            "applied": [i not in (6, 13) for i in range(20)], "lr": [0.01 + 0.0005 * i for i in range(20)],
                            "eval_acc": [0.4 if i == 9 else 0.55 if i == 19 else None for i in range(20)]})
    sets.join(NAME, "distill_metrics.csv").write_bytes_atomic(history.to_csv(index=False).encode())
    evaluated(sets.join(NAME), [0.54, 0.56], {"method": "mtt", "ipc": 2})
    save_set(random_set(train, spec, 2, 0), sets.join(RANDOM), spec)
    evaluated(sets.join(RANDOM), [0.27, 0.28], {"method": "random", "ipc": 2})
    evaluated(sets.join(FULL), [0.95, 0.97], {"method": "full", "ipc": None})
    write_expert_store(resolve(str(root / "experts" / "digits-convnet2w8-plain")))
    run_sweep(root)
    return root


def test_collect_reads_what_the_stages_wrote(storage_root):
    root = resolve(str(storage_root))
    sets = {s.name: s for s in collect_sets(root)}
    assert set(sets) == {NAME, RANDOM, FULL}
    assert sets[NAME].meta["lr"] == 0.02 and sets[NAME].grid.startswith(b"\x89PNG")
    assert (~sets[NAME].metrics["applied"]).sum() == 2
    assert sets[FULL].meta is None
    experts = collect_experts(root)
    assert [e.name for e in experts] == ["digits-convnet2w8-plain"]
    assert experts[0].metrics[1]["test_acc"] == pytest.approx([0.1, 0.6, 0.7, 0.85])
    (sweep,) = collect_sweeps(root)
    assert sorted(t.params["scale"] for t in sweep.trials) == [0.2, 0.5, 0.9]
    statuses = {t.params["scale"]: t.status for t in sweep.trials}
    assert statuses == {0.9: "completed", 0.5: "stopped", 0.2: "stopped"}  # ASHA stopped the weak ones at 10
    assert {t.params["scale"]: len(t.history) for t in sweep.trials} == {0.9: 4, 0.5: 1, 0.2: 1}


def test_report_page_is_self_contained_and_carries_the_numbers(storage_root, capsys):
    assert main(["report", f"runs={storage_root}"]) == 0
    out = storage_root / "report.html"
    assert capsys.readouterr().out.strip().endswith(f"report: {out}")
    page = out.read_text()
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:image/png;base64,|#)', page)
    assert page.count("<img") == 5  # grid, distill curves, evaluation bars, expert curves, ASHA curves
    for text in ("55.00 ± 1.00 (2)", "27.50 ± 0.50 (2)", "96.00 ± 1.00 (2)", "+27.50", "rejected steps</td><td>2",
                 "learned lr</td><td>0.02", "expert 1</td><td>85", "Tune sweeps", "completed</td>"):
        assert text in page, text
    assert main(["report", f"runs={storage_root / 'nowhere'}"]) == 2


def test_curves_without_fast_evaluation_or_rejected_steps():
    from raydd.report.plots import distill_curves

    history = pd.DataFrame({"iteration": [1, 2, 3], "loss": [1.0, 0.9, 0.8], "applied": [True] * 3, "lr": [0.01] * 3})
    assert distill_curves(history).startswith(b"\x89PNG")  # distill.eval_every=0 leaves no eval_acc column


def chromium() -> str:
    found = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("headless Chromium not found: `make chromium` (apt-get install chromium)")
    return found


CHECK = """<script>window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
const consoleError = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); consoleError(...a); };
window.addEventListener('load', () => { const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-check', `images=${images.length} broken=${broken} errors=${window.__errors.length}`);
});</script>"""


def render_in_chromium(page, tmp_path) -> tuple[str, str]:
    """The checked page's DOM after load, and Chromium's console log (stderr)."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("<head>", "<head>" + CHECK, 1))
    proc = subprocess.run([chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]


def test_report_renders_in_headless_chromium(storage_root, tmp_path):
    assert main(["report", f"runs={storage_root}", f"out={tmp_path / 'report.html'}"]) == 0
    dom, log = render_in_chromium(tmp_path / "report.html", tmp_path)
    check = re.search(r'data-check="images=(\d+) broken=(\d+) errors=(\d+)"', dom)
    assert check, dom[-500:]
    assert check.groups() == ("5", "0", "0") and not console_errors(log)


def test_chromium_check_catches_a_broken_image(storage_root, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text((storage_root / "report.html").read_text().replace("base64,iVBOR", "base64,xxxx", 1)
                      .replace("</body>", "<script>undefinedFunction()</script></body>"))
    dom, log = render_in_chromium(broken, tmp_path)
    images, bad, errors = map(int, re.search(r'images=(\d+) broken=(\d+) errors=(\d+)', dom).groups())
    assert (images, bad) == (5, 1) and errors >= 1 and console_errors(log)


@pytest.mark.slow
def test_pipeline_ends_by_writing_the_report(tmp_path):
    tiny = ["dataset=digits", "model.width=8", "model.depth=2", "experts.num=2", "experts.epochs=4", "experts.batch_size=64",
            "experts.lr=0.05", "distill.syn_steps=6", "distill.expert_epochs=1", "distill.max_start_epoch=2", "ipc=2",
            "distill.iterations=20", "distill.eval_every=10", "distill.eval_epochs=20", "distill.checkpoint_every=10",
            "evaluate.num_models=2", "evaluate.epochs=20", f"storage.root={tmp_path / 'runs'}"]
    proc = subprocess.run([sys.executable, "-m", "raydd", "pipeline", *tiny], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = tmp_path / "runs" / "report.html"
    assert proc.stdout.strip().splitlines()[-1] == f"report: {page}"
    text = page.read_text()
    assert "mtt-ipc2-digits-convnet2w8" in text and "digits-convnet2w8-plain" in text and "random real" in text
    dom, log = render_in_chromium(page, tmp_path)
    images, broken, errors = map(int, re.search(r'images=(\d+) broken=(\d+) errors=(\d+)', dom).groups())
    assert images == 4 and broken == 0 and errors == 0 and not console_errors(log)  # grid, curves, bars, experts
