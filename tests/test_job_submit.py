"""`ray job submit` of a small `raydd pipeline` against a head node this test starts on loopback."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head():
    temp = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))
    ports = {name: free_port() for name in ("port", "dashboard-port", "dashboard-agent-listen-port",
                                            "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
                                            "node-manager-port", "object-manager-port", "ray-client-server-port")}
    workers = free_port()  # own ports everywhere: other Ray instances on the machine must not collide
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", *(f"--{k}={v}" for k, v in ports.items()),
                    f"--min-worker-port={workers}", f"--max-worker-port={workers + 40}",
                    "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"], check=True, env=env,
                   capture_output=True, timeout=180)
    dash = ports["dashboard-port"]
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_head(temp)


def stop_head(temp: Path) -> None:
    """Stop only the Ray processes of the head this test started (`ray stop` would stop every Ray on the machine)."""
    mine = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(temp).encode() in cmdline.read_bytes():
                mine.append(int(cmdline.parent.name))
        except OSError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)
    shutil.rmtree(temp, ignore_errors=True)


def test_pipeline_job_submitted_to_a_local_head(head, tmp_path):
    address, env = head
    overrides = ["dataset=digits", "model.width=8", "model.depth=2", "experts.num=2", "experts.epochs=3",
                 "experts.lr=0.05", "distill.syn_steps=4", "distill.expert_epochs=1", "distill.max_start_epoch=1",
                 "distill.iterations=5", "distill.eval_every=0", "distill.lr_img=100", "ipc=1",
                 "evaluate.num_models=2", "evaluate.epochs=10", f"storage.root={tmp_path}", "ray_address=auto"]
    for _ in range(30):  # the head's job agent comes up a little after `ray start` returns
        submit = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
                                 "--", "raydd", "pipeline", *overrides], env=env, capture_output=True, text=True,
                                timeout=900)
        if "No available agent" not in submit.stderr + submit.stdout:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout.lower()
    job_list = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                              capture_output=True, text=True, timeout=60).stdout
    assert "SUCCEEDED" in job_list
    [pipeline] = tmp_path.glob("evals/mtt-ipc1-digits-convnet2w8*/pipeline.json")
    rows = json.loads(pipeline.read_text())
    assert rows[0]["method"] == "mtt" and rows[0]["ipc"] == 1 and 0 <= rows[0]["distilled"] <= 100
    [distilled] = tmp_path.glob("sets/mtt-ipc1-digits-convnet2w8*")
    assert (distilled / "set.parquet").exists() and (distilled / "grid.png").exists()
    assert list(tmp_path.glob("evals/random-ipc1-digits-convnet2w8*/eval.json"))
    [store] = tmp_path.glob("experts/digits-convnet2w8-plain*")
    assert json.loads((store / "manifest.json").read_text())["shards"]
