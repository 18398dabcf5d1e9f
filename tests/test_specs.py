"""The composed config as typed, frozen specs: one field per key, checks in one place."""

import dataclasses
import re

import pytest

from raydd.config import compose, validate
from raydd.specs import ConfigError, DistillSpec, ExpertsSpec, ModelSpec, RunSpec

GROUPS = ("dataset", "model", "experts", "distill", "quantize", "evaluate", "data", "tune", "storage", "method")


@pytest.mark.parametrize("method", ["mtt", "datm", "ast", "mct", "ddoq", "d4m", "random", "full"])
def test_every_group_becomes_its_spec_with_the_same_keys(method):
    cfg = compose([f"method={method}"])
    spec = RunSpec.from_config(cfg)
    for group in GROUPS:
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(spec, group)).items()}
        assert {k: values[k] for k in cfg[group]} == cfg[group], group
        assert all(values[k] is None for k in set(values) - set(cfg[group])), group  # optional keys the group leaves out
    assert (spec.ipc, spec.seed, spec.method.name) == (cfg["ipc"], cfg["seed"], method)


def test_distill_spec_has_one_field_per_distill_key():
    cfg = compose(["method=datm", "distill.syn_steps=7"])
    d = DistillSpec.from_config(cfg["distill"])
    assert [f.name for f in dataclasses.fields(DistillSpec)] == list(cfg["distill"])
    assert dataclasses.asdict(d) == cfg["distill"]
    assert (d.syn_steps, d.init, d.soft_labels, d.resources.cpus) == (7, "correct", True, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.syn_steps = 3


def test_a_missing_or_unknown_key_is_a_config_error():
    d = dict(compose([])["distill"])
    del d["syn_steps"]
    with pytest.raises(ConfigError, match="distill: missing syn_steps"):
        DistillSpec.from_config(d)
    with pytest.raises(ConfigError, match="unknown typo"):
        DistillSpec.from_config({**compose([])["distill"], "typo": 1})


def test_model_defaults_come_from_the_config():
    cfg = compose([])
    assert ModelSpec.from_config(cfg["model"]).tag == "convnet3w16"  # the group's CPU-sized width, not a code default
    assert ModelSpec.from_config(compose(["model=resnet18"])["model"]).tag == "resnet18"
    assert ModelSpec.from_config(compose(["model=resnet18", "model.width=16"])["model"]).tag == "resnet18w16"
    with pytest.raises(ConfigError, match="model.width=16 for alexnet, which has one width"):
        validate(compose(["model=alexnet", "model.width=16"]), "evaluate")
    assert ModelSpec.from_config({**cfg["model"], "norm": "batch"}).tag == "convnet3w16batch"


@pytest.mark.parametrize("override, message", [
    ("experts.epochs=abc", "experts.epochs must be an integer, got 'abc'"),
    ("experts.lr_decay_epoch=3.5", "experts.lr_decay_epoch must be an integer or null, got 3.5"),
    ("experts.lr=true", "experts.lr must be a number, got True"),
    ("experts.dsa=1", "experts.dsa must be true or false, got 1"),
])
def test_a_scalar_key_of_the_wrong_kind_is_one_error(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExpertsSpec.from_config(compose([override])["experts"])


@pytest.mark.parametrize("setting", ["auto", True, False])
def test_channels_last_takes_auto_true_or_false(setting):
    assert validate(compose([f"channels_last={str(setting).lower()}"]), "distill").channels_last == setting


def test_an_unknown_channels_last_is_one_config_error():
    with pytest.raises(ConfigError, match=r"^channels_last must be auto, true or false, got 'nhwc'$"):
        validate(compose(["channels_last=nhwc"]), "distill")
