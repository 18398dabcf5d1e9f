"""The speed benchmark's points run against today's raydd API (each in its own process, tiny sizes): a
benchmark that no longer runs is found here, not in the middle of a long measurement."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "distill_speed.py"
TINY = ["--width", "8", "--device", "cpu", "--threads", "1", "--iters", "1"]


def test_conv_counts_fall_with_each_kept_graph_and_without_the_recomputed_weight_gradients():
    out = subprocess.run([sys.executable, str(SPEED), "--conv-counts", *TINY], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    gflop = json.loads(out.stdout.strip().splitlines()[-1])["gflop"]
    nchw, nhwc = gflop["nchw"], gflop["nhwc"]
    assert nhwc["plain"] < nhwc["20"] < nhwc["10"] < nhwc["0"] < 1.5 * nhwc["plain"]
    # NCHW takes raydd's convolution: the same plain count, and recomputed steps skip their weight gradients
    assert nchw["plain"] == pytest.approx(nhwc["plain"]) and nchw["plain"] < nchw["0"] < nhwc["0"]


@pytest.mark.parametrize("point", [["--point", "plain", "3", "nhwc"], ["--point", "constant_memory", "3", "nchw", "--heap", "--kept", "1"],
                                   ["--epoch", "--expert-images", "300"]], ids=["plain", "constant_memory", "epoch"])
def test_speed_points_run(point):
    out = subprocess.run([sys.executable, str(SPEED), *point, *TINY], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["seconds"] > 0 and row["peak_mb"] > 0
    if point[0] == "--point":
        assert row["syn_steps"] == 3 and row["grad_norm"] > 0
        assert row["kept_graphs"] == (1 if "--kept" in point else 0)


def test_a_kept_row_stays_compared_with_the_baseline_of_its_own_run(monkeypatch):
    monkeypatch.syspath_prepend(str(SPEED.parent))
    import distill_speed

    rows = {"reference plain 20": {"what": "reference plain unroll", "seconds": 20.0, "peak_mb": 100.0},
            "plain 20": {"what": "plain unroll, NCHW", "seconds": 10.0, "peak_mb": 90.0},
            "plain 20 glibc": {"what": "plain unroll", "seconds": 27.0, "peak_mb": 100.0,
                               "baseline": {"seconds": 30.0, "peak_mb": 100.0}}}
    distill_speed.paired(rows, {"reference plain 20": [rows["reference plain 20"]], "plain 20": [rows["plain 20"]]})
    assert rows["plain 20"]["baseline"] == {"seconds": 20.0, "peak_mb": 100.0}
    assert rows["plain 20 glibc"]["baseline"]["seconds"] == 30.0  # measured in an earlier run: its own authors' time
    meta = {"device": "cpu", "commands": [], "machine": "x", "threads": 2, "torch": "t", "setup": "s"}
    lines = distill_speed.render(meta, [{**r, "key": k} for k, r in rows.items()]).splitlines()
    assert any("`distill.heap=auto`: Ray's jemalloc), NCHW: s / outer" in line and "| 10.00 | 20.00 | 0.50 | ≤ 0.5 |" in line for line in lines)
    assert any("(glibc's malloc), NHWC: s / outer" in line and "| 27.00 | 30.00 | 0.90 | – |" in line for line in lines)


@pytest.mark.parametrize(("arch", "variant"), [("convnet", "nhwc"), ("resnet18", "nhwc"), ("vgg11", "compile")])
def test_eval_speed_points_run(arch, variant):
    script = SPEED.parent / "eval_speed.py"
    out = subprocess.run([sys.executable, str(script), "--point", arch, variant, "--width", "4", "--ipc", "2", "--epochs", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, epoch = json.loads(out.stdout.strip().splitlines()[-1])
    assert first > 0 and epoch > 0
