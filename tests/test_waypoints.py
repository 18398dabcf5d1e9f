"""MCT's waypoint compression (the authors' exps/trajectory_compression.py) pinned on hand-computed values;
its store round trip and the converter from a full store."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
from test_convex import E, curved, write_full_store

from raydd.core.waypoints import WaypointTrajectory, compress, layer_alphas, smoothed_waypoints, waypoint_rows
from raydd.experts.convert import convert_store
from raydd.experts.train import ExpertRun
from raydd.experts.worker import shard_rows
from raydd.models.functional import ParamLayout
from raydd.storage.fs import resolve
from raydd.storage.trajectory import (CorruptShardError, TrajectoryStore, add_entry, open_manifest, write_manifest,
                                      write_shard)

# 2 layers (a: 2 values, b: 1 value), epochs 0..6. Steps of a: norms 5, 15 | 2, 2 | 3, 1; b: 1, 3 | 0, 0 | 2, 1.
A = [(0, 0), (3, 4), (12, 16), (12, 18), (14, 18), (14, 21), (14, 22)]
B = [0, 1, 4, 4, 4, 2, 1]
SNAPS = torch.tensor([[*a, b] for a, b in zip(A, B)], dtype=torch.float32)
SIZES = (2, 1)
# n = 4 on 7 saved points: waypoints at 0, 2, 4, 6; W2 = (θ1 + θ3)/2, W4 = (θ3 + θ5)/2, W6 = (θ5 + θ6)/2.
W = [[0, 0, 0], [7.5, 11, 2.5], [13, 19.5, 3], [14, 21.5, 1.5]]
# α per epoch [a, b] in the segment ending at or holding it: a 5/20, 2/4, 3/4; b 1/4, none (0, 0), 2/3.
ALPHAS = [[0, 0], [0.25, 0.25], [1, 1], [0.5, 0], [1, 0], [0.75, 2 / 3], [1, 1]]


def test_waypoint_grid_is_the_references():
    assert waypoint_rows(51, 4) == [0, 17, 34, 50]  # 50 epochs, num_interpolation=4 (run_command.md)
    assert waypoint_rows(7, 4) == [0, 2, 4, 6]
    assert waypoint_rows(8, 4) == [0, 2, 4, 6, 7]  # range(0, 8, 2) misses the last point: appended
    assert waypoint_rows(5, 4) == [0, 1, 2, 3, 4]
    assert waypoint_rows(11, 2) == [0, 10]
    for bad in (1, 12):
        with pytest.raises(ValueError, match="waypoints must be in"):
            waypoint_rows(11, bad)


def test_smoothing_takes_neighbours_in_the_references_order():
    theta = torch.tensor([[float(e * e)] for e in range(8)])  # 0, 1, 4, 9, 16, 25, 36, 49
    # W2 = (1+9)/2, W4 = (9+25)/2, W6 = (25+49)/2; the end takes the smoothed W6: (37+49)/2, not (36+49)/2
    assert smoothed_waypoints(theta, [0, 2, 4, 6, 7]).flatten().tolist() == [0, 5, 17, 37, 43]
    assert smoothed_waypoints(SNAPS, [0, 2, 4, 6]).tolist() == W


def test_alpha_is_each_layers_cumulative_arc_length_per_segment():
    torch.testing.assert_close(layer_alphas(SNAPS[0:3], SIZES), torch.tensor([[0, 0], [0.25, 0.25], [1.0, 1.0]]))
    torch.testing.assert_close(layer_alphas(SNAPS[2:5], SIZES), torch.tensor([[0, 0], [0.5, 0], [1.0, 0]]))
    traj = compress(SNAPS, SIZES, 4)
    assert traj.epochs == (0, 2, 4, 6)
    assert traj.waypoints.tolist() == W
    torch.testing.assert_close(traj.alphas, torch.tensor(ALPHAS), atol=1e-7, rtol=0)


@pytest.mark.parametrize("epoch, expected", [
    (0.0, [0, 0, 0]), (1.0, [1.875, 2.75, 0.625]), (2.0, [7.5, 11, 2.5]), (3.0, [10.25, 15.25, 2.5]),
    (4.0, [13, 19.5, 3]), (6.0, [14, 21.5, 1.5]),
    (0.5, [0.9375, 1.375, 0.3125]),     # α = lerp(0, 1/4, 1/2) = 1/8 from W0 towards W2
    (1.5, [4.6875, 6.875, 1.5625]),     # α = lerp(1/4, 1, 1/2) = 5/8
    (3.5, [11.625, 17.375, 2.5]),       # a: α = 3/4; b does not move in [2, 4]: stays at W2 until epoch 4
    (5.25, [13.8125, 21.125, 1.875]),   # a: lerp(3/4, 1, 1/4) = 13/16; b: lerp(2/3, 1, 1/4) = 3/4
])
def test_params_at_integer_and_float_epochs(epoch, expected):
    torch.testing.assert_close(compress(SNAPS, SIZES, 4).params(epoch), torch.tensor(expected, dtype=torch.float32),
                               atol=1e-6, rtol=0)


def test_waypoints_are_read_exactly_and_the_range_is_checked():
    traj = compress(SNAPS, SIZES, 4)
    for k, e in enumerate(traj.epochs):
        assert torch.equal(traj.params(float(e)), traj.waypoints[k])
    with pytest.raises(ValueError, match="outside"):
        traj.params(6.5)
    with pytest.raises(ValueError, match="alphas must be"):
        WaypointTrajectory(traj.epochs, traj.waypoints, traj.alphas[:-1], SIZES)


def test_two_waypoints_keep_the_real_endpoints_unsmoothed():
    traj = compress(SNAPS, SIZES, 2)  # the reference's num_interpolation=2 branch: no smoothing
    assert traj.epochs == (0, 6) and torch.equal(traj.waypoints, SNAPS[[0, 6]])
    torch.testing.assert_close(traj.alphas[2], torch.tensor([20 / 28, 4 / 7]))  # a: 20 of 28; b: 4 of 7
    assert torch.equal(traj.params(6.0), SNAPS[6])


LAYOUT = [["a", [30]], ["b", [4, 5]]]  # 50 values, two layers


def waypoint_store(loc, dtype: str) -> list[torch.Tensor]:
    layout = ParamLayout.from_json(LAYOUT)
    meta = {"form": "waypoints", "dtype": dtype, "waypoints": 4, "epochs": E, "dataset": {"name": "synthetic"},
            "model": {"name": "linear"}, "layout": LAYOUT, "zca": False, "config_hash": "h", "config": {}}
    manifest, out = open_manifest(loc, meta), []
    for i in range(2):
        run = ExpertRun(curved(seed=i), [None, *[1.0] * E], [0.1 * e for e in range(E + 1)])
        add_entry(manifest, write_shard(loc, shard_rows(i, run, "waypoints", 4, layout), {**meta, "seed": i}, dtype))
        write_manifest(loc, manifest)
        out.append(run.snapshots)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_store_round_trip_reads_float_epochs(tmp_path, dtype):
    snaps = waypoint_store(resolve(str(tmp_path)), dtype)
    store = TrajectoryStore.open(str(tmp_path))
    assert store.form == "waypoints" and store.verify() == 2
    for i, s in enumerate(snaps):
        expected = compress(s, (30, 20), 4)
        rows = store.read(i)
        assert rows.epoch == [float(e) for e in range(E + 1)]  # 11 saved points: waypoints 0, 3, 6, 9, 10
        assert [e for e, p in zip(rows.epoch, rows.params) if p is not None] == [0.0, 3.0, 6.0, 9.0, 10.0]
        torch.testing.assert_close(torch.stack(rows.layer_alpha), expected.alphas, atol=0, rtol=0)
        assert store.metrics(i)["test_acc"] == pytest.approx([0.1 * e for e in range(E + 1)])
        tol = 0 if dtype == "float32" else 2e-3
        for epoch in (0.0, 3.0, 4.7, 9.5, float(E)):
            torch.testing.assert_close(store.params(i, epoch), expected.params(epoch), atol=tol, rtol=tol)


def test_only_waypoint_shards_carry_the_layer_alpha_column(tmp_path):
    full, way = resolve(str(tmp_path / "full")), resolve(str(tmp_path / "way"))
    write_full_store(full)
    waypoint_store(way, "float32")
    full_names, way_names = (ipc.open_file(pa.BufferReader(loc.join("expert-00000.arrow").read_bytes())).schema.names
                             for loc in (full, way))
    assert "layer_alpha" not in full_names and way_names == [*full_names, "layer_alpha"]


def test_shards_of_another_layout_are_corrupt(tmp_path):
    waypoint_store(resolve(str(tmp_path)), "float32")
    manifest = tmp_path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["meta"]["layout"] = [["a", [50]]]  # one layer where the shards hold two α per epoch
    manifest.write_text(json.dumps(data))
    with pytest.raises(CorruptShardError, match=r"expert-00000.arrow: alphas must be 11×1"):
        TrajectoryStore.open(str(tmp_path)).params(0, 1.5)


def test_convert_full_store_to_waypoints(tmp_path):
    full = resolve(str(tmp_path / "full"))
    snaps = write_full_store(full, layout=LAYOUT)
    summary = convert_store(full, str(tmp_path / "way"), "waypoints", 4)
    assert summary["experts"] == 2  # (50 parameters: no smaller than the full store; the benchmark measures a ConvNet)
    store = TrajectoryStore.open(str(tmp_path / "way"))
    assert store.form == "waypoints" and store.meta["waypoints"] == 4 and store.meta["convex_points"] is None
    assert store.meta["config"]["experts"] == {"form": "waypoints", "convex_points": 2, "waypoints": 4,
                                               "dtype": "float32"}
    for i, s in enumerate(snaps):
        for epoch in (0.0, 2.25, 7.0, float(E)):
            assert torch.equal(store.params(i, epoch), compress(s, (30, 20), 4).params(epoch))
        assert store.metrics(i)["epoch"] == [float(e) for e in range(E + 1)]
        assert sum(p is not None for p in store.read(i).params) == 5
    assert convert_store(full, str(tmp_path / "way"), "waypoints", 4)["experts"] == 2  # resumable, no-op
    with pytest.raises(ValueError, match="cannot convert into form 'full'"):
        convert_store(full, str(tmp_path / "other"), "full", 0)
