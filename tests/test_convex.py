"""The convex form (raydd's MCT variant, ≈ the reference's projected-points ablation): the fit, the reader's
endpoints and interpolation, store conversion."""

from __future__ import annotations

import pytest
import torch

from raydd.core.convex import ConvexTrajectory, convexify, knot_rows
from raydd.experts.convert import convert_store
from raydd.experts.train import ExpertRun
from raydd.experts.worker import shard_rows
from raydd.models.functional import ParamLayout
from raydd.storage.fs import resolve
from raydd.storage.trajectory import TrajectoryStore, add_entry, config_hash, open_manifest, write_manifest, write_shard

E = 10


def curved(p: int = 50, seed: int = 0) -> torch.Tensor:
    """A trajectory that moves fast early and slowly late, with noise off the chord."""
    g = torch.Generator().manual_seed(seed)
    start, end = torch.randn(p, generator=g), torch.randn(p, generator=g)
    t = torch.tensor([1 - 0.8 ** e for e in range(E + 1)]) / (1 - 0.8 ** E)
    return start + t[:, None] * (end - start) + 0.01 * torch.randn(E + 1, p, generator=g) * torch.sin(torch.pi * t)[:, None]


def test_knots_are_evenly_spaced_interior_rows():
    assert knot_rows(E + 1, 1) == [5]
    assert knot_rows(E + 1, 4) == [2, 4, 6, 8]
    assert knot_rows(E + 1, 9) == list(range(1, 10))
    with pytest.raises(ValueError, match="convex_points must be in"):
        knot_rows(E + 1, 10)


def test_alpha_is_the_projection_on_the_chord():
    snaps = curved()
    traj = convexify(snaps, [float(e) for e in range(E + 1)], 4)
    assert traj.knot_epochs == (2.0, 4.0, 6.0, 8.0)
    chord = (snaps[-1] - snaps[0]).double()
    for e, a in zip(traj.knot_epochs, traj.knot_alphas):
        expected = float((snaps[int(e)].double() - snaps[0].double()) @ chord / chord.square().sum())
        assert a == pytest.approx(expected, abs=1e-6)
        assert a == pytest.approx((1 - 0.8 ** e) / (1 - 0.8 ** E), abs=0.01)  # the curve's own progress


def test_alpha_is_clipped_and_monotone():
    start, end = torch.zeros(3), torch.ones(3)
    # overshoots the end at epoch 1, comes back, goes behind the start at epoch 3
    snaps = torch.stack([start, 1.5 * end, 0.4 * end, -0.2 * end, end])
    traj = convexify(snaps, [0.0, 1.0, 2.0, 3.0, 4.0], 3)
    assert traj.knot_alphas == (1.0, 1.0, 1.0)
    snaps = torch.stack([start, 0.5 * end, 0.3 * end, 0.7 * end, end])
    assert convexify(snaps, [0.0, 1.0, 2.0, 3.0, 4.0], 3).knot_alphas == pytest.approx((0.5, 0.5, 0.7))


def test_reader_returns_endpoints_exactly_and_interpolates_linearly():
    snaps = curved()
    traj = convexify(snaps, [float(e) for e in range(E + 1)], 2)
    assert torch.equal(traj.params(0.0), snaps[0]) and torch.equal(traj.params(float(E)), snaps[-1])
    xs = [0.0, *traj.knot_epochs, float(E)]
    for a, b in zip(xs, xs[1:]):
        pa, pb = traj.params(a), traj.params(b)
        for w in (0.25, 0.5, 0.9):
            torch.testing.assert_close(traj.params(a + w * (b - a)), (1 - w) * pa + w * pb, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="outside"):
        traj.params(E + 0.5)
    with pytest.raises(ValueError, match="monotone"):
        ConvexTrajectory(snaps[0], snaps[-1], (3.0, 6.0), (0.6, 0.4), float(E))


def write_full_store(loc, experts: int = 2, layout: list | None = None) -> list[torch.Tensor]:
    """A full store of ``curved`` experts (50 parameters; ``layout`` splits them, one layer by default)."""
    layout = layout or [["w", [50]]]
    config = {"experts": {"form": "full", "convex_points": 2, "dtype": "float32"}, "seed": 0}
    meta = {"form": "full", "dtype": "float32", "variant": "plain", "epochs": E, "dataset": {"name": "synthetic"},
            "model": {"name": "linear"}, "layout": layout, "zca": False, "config_hash": config_hash(config),
            "config": config}
    manifest = open_manifest(loc, meta)
    out = []
    for i in range(experts):
        snaps = curved(seed=i)
        run = ExpertRun(snaps, [None, *[1.0] * E], [0.1 * e for e in range(E + 1)])
        rows = shard_rows(i, run, "full", 0, ParamLayout.from_json(layout))
        add_entry(manifest, write_shard(loc, rows, {**meta, "seed": i}, "float32"))
        write_manifest(loc, manifest)
        out.append(snaps)
    return out


def test_convert_store_and_read_float_epochs(tmp_path):
    full = resolve(str(tmp_path / "full"))
    snaps = write_full_store(full)
    summary = convert_store(full, str(tmp_path / "convex"), "convex", 2)
    assert summary["experts"] == 2 and summary["bytes"] < summary["full_bytes"]
    store = TrajectoryStore.open(str(tmp_path / "convex"))
    assert store.form == "convex" and store.epochs == E and store.meta["convex_points"] == 2
    assert store.meta["config"]["experts"]["form"] == "convex"
    for i, s in enumerate(snaps):
        assert torch.equal(store.params(i, 0), s[0]) and torch.equal(store.params(i, E), s[-1])
        expected = convexify(s, [float(e) for e in range(E + 1)], 2).params(4.7)
        torch.testing.assert_close(store.params(i, 4.7), expected, atol=1e-6, rtol=0)
        m = store.metrics(i)
        assert m["epoch"] == [0.0, 3.0, 7.0, float(E)]
        assert m["test_acc"] == pytest.approx([0.0, 0.3, 0.7, 1.0])
    assert store.verify() == 2
    assert convert_store(full, str(tmp_path / "convex"), "convex", 2)["experts"] == 2  # resumable, no-op
