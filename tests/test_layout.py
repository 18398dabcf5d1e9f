"""Stores and sets are named by their settings: a changed setting never reaches an existing folder."""

import pytest

from raydd.config import compose
from raydd.storage.layout import evaluation_location, experts_location, set_location

BASE = ["dataset=digits", "storage.root=/tmp/raydd-layout"]


def where(*overrides: str) -> tuple[str, str]:
    cfg = compose([*BASE, *overrides])
    return experts_location(cfg).uri, set_location(cfg).uri


@pytest.mark.parametrize("override", ["experts.epochs=8", "experts.lr=0.02", "model.width=32", "seed=1", "zca=true"])
def test_expert_settings_name_a_new_store_and_set(override):
    (store, set_), (store2, set2) = where(), where(override)
    assert store2 != store and set2 != set_


@pytest.mark.parametrize("override", ["distill.iterations=5", "distill.syn_steps=3", "ipc=2", "distill.lr_img=10"])
def test_distill_settings_name_a_new_set_from_the_same_store(override):
    (store, set_), (store2, set2) = where(), where(override)
    assert store2 == store and set2 != set_


@pytest.mark.parametrize("override", ["quantize.encoder=pca", "quantize.latent_dim=8", "quantize.max_iters=5",
                                      "quantize.prototype=medoid", "ipc=3"])
def test_quantize_settings_name_a_new_set(override):
    assert where("method=ddoq")[1] != where("method=ddoq", override)[1]


@pytest.mark.parametrize("override", ["experts.num=9", "experts.cpus_per_expert=2", "workers=3",
                                      "distill.cpus_per_worker=2", "distill.checkpoint_every=7", "distill.heap=reuse", "quantize.cpus_per_task=2",
                                      "dataset.root=/elsewhere"])
def test_orchestration_keeps_the_same_store_and_set(override):
    assert where(override) == where()
    assert where("method=ddoq", override)[1] == where("method=ddoq")[1]


def test_how_the_unroll_keeps_its_graphs_keeps_the_same_set():
    cm = ("distill.unroll=constant_memory",)
    assert where(*cm, "distill.kept_graphs=4") == where(*cm)


def test_existing_sets_keep_their_names():
    """Pinned digests of the default store and set: a new config key that does not change what a stage
    writes belongs to the *_ORCHESTRATION_KEYS, or every set made before it would no longer be found. The default
    distill.lr_lr changed what distill writes (1e-5 → 5e-6): sets made at 1e-5 keep their name under that override."""
    store, set_ = where()
    assert (store.rsplit("-", 1)[1], set_.rsplit("-", 1)[1]) == ("26199b7c", "d12a3b3b")
    assert where("distill.lr_lr=1e-5")[1].rsplit("-", 1)[1] == "b1635cda"


def test_names_are_readable_and_stable():
    store, set_ = where()
    assert store.startswith("/tmp/raydd-layout/experts/digits-convnet3w16-plain-") and len(store.rsplit("-", 1)[1]) == 8
    assert set_.startswith("/tmp/raydd-layout/sets/mtt-ipc10-digits-convnet3w16-")
    assert where("run_name=mine")[1].startswith("/tmp/raydd-layout/sets/mine-")


def test_evaluations_are_named_by_set_and_settings():
    cfg = compose(BASE)
    loc = set_location(cfg)
    first = evaluation_location(cfg, loc).uri
    assert first.startswith(f"/tmp/raydd-layout/evals/{loc.uri.rsplit('/', 1)[1]}-")
    assert evaluation_location(compose([*BASE, "evaluate.epochs=7"]), loc).uri != first
    assert evaluation_location(compose([*BASE, "evaluate.cpus_per_model=2"]), loc).uri == first


def test_waypoint_count_names_only_waypoint_stores():
    """experts.waypoints is left out of other forms' settings: full and convex stores keep their names."""
    assert where("experts.waypoints=3") == where()
    assert where("experts.form=convex", "experts.waypoints=3") == where("experts.form=convex")
    store = where("method=mct")[0]
    assert "/digits-convnet3w16-plain-waypoints-" in store and where("method=mct", "experts.waypoints=3")[0] != store
