"""Compose Hydra configs and check them before any work starts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from raydd.errors import CorruptError
from raydd.specs import ConfigError, LoaderSpec, QuantizeSpec, RunSpec, check, check_quantize_data, check_tune

STAGES = {
    "data": "convert a torchvision/ImageFolder dataset into raydd Parquet shards (or generate imagenet1k_standin)",
    "experts": "train expert trajectories in parallel (Ray actors) into the trajectory store",
    "distill": "trajectory matching (mtt, datm, ast, mct) on Ray Train",
    "quantize": "optimal-quantization distillation (ddoq, d4m) as Ray tasks",
    "evaluate": "train fresh networks on a set (or a random/full baseline), test on real data",
    "tune": "Ray Tune sweep over IPC and loss weights",
    "pipeline": "experts → distill → evaluate (or quantize → evaluate) in one job",
    "export": "a distilled set as .pt tensors, a PNG ImageFolder or a Hugging Face dataset",
    "report": "one static HTML page over a storage root: sets, experts, sweeps",
}
# Stages that read only the locations they are given (no dataset, no storage.root), and take their
# own keys without the group prefix: ``raydd export set=... out=...`` is ``export.set=... export.out=...``.
OWN_KEYS = {"export": ("set", "format", "out"), "report": ("runs", "out")}


def config_dir() -> Path:
    """``$RAYDD_CONFIG_DIR`` (a user's own copy of the configs), else the configs installed with the package."""
    user = os.environ.get("RAYDD_CONFIG_DIR")
    if user is None:
        return Path(__file__).resolve().parent / "configs"
    if not (Path(user) / "config.yaml").exists():
        raise ConfigError(f"RAYDD_CONFIG_DIR={user} holds no config.yaml")
    return Path(user).resolve()


def with_stage_prefix(stage: str, overrides: list[str]) -> list[str]:
    """``key=value`` → ``<stage>.key=value`` for the stage's own keys (:data:`OWN_KEYS`)."""
    own = OWN_KEYS.get(stage, ())
    return [f"{stage}.{o}" if o.split("=", 1)[0] in own else o for o in overrides]


def compose(overrides: list[str]) -> dict[str, Any]:
    """Compose ``config.yaml`` of :func:`config_dir` with ``key=value`` overrides into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    # Experiment files merge at the root (``experiment@_global_`` in config.yaml's defaults), so
    # their first line can be their launch command instead of a ``# @package`` header.
    overrides = [re.sub(r"^experiment=", "experiment@_global_=", o) for o in overrides]
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingConfigException as e:
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        if group and e.options:
            raise ConfigError(f"unknown {group} {name!r}; choose one of {', '.join(e.options)}") from e
        raise ConfigError(str(e).splitlines()[0]) from e
    except MissingMandatoryValue as e:
        raise ConfigError(f"missing mandatory value {e.full_key}") from e
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).splitlines()[0]) from e


def validate(cfg: dict[str, Any], stage: str) -> RunSpec:
    """The typed specs of ``cfg``, after every check that needs no data (see :mod:`raydd.specs`)."""
    from raydd.data.registry import dataset_names
    from raydd.models.registry import MODELS

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    spec = RunSpec.from_config(cfg)
    check(spec, stage, MODELS, dataset_names())
    if stage == "tune":
        check_tune(spec, cfg)
    return spec


def check_data(cfg: dict[str, Any], stage: str) -> None:
    """Fail fast when the dataset cannot be found (reads metadata or the files' existence only), or does
    not suit the configured encoder."""
    from raydd.data.registry import check_available, is_generated, require_shards
    from raydd.data.sources import DatasetNotFoundError
    from raydd.quantize.encoders import check_vae

    if stage == "data" and is_generated(cfg["dataset"]["name"]):
        return  # raydd data writes it from the dataset keys: there is nothing to find
    try:
        data = check_available(cfg["dataset"])
    except CorruptError:
        raise  # the data is there but broken: a data error, not a config one
    except (FileNotFoundError, DatasetNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    if stage != "data":
        require_shards(cfg["dataset"], LoaderSpec.from_config(cfg["loader"]))
    if stage in ("quantize", "pipeline") and cfg["method"]["stage"] == "quantize":
        q = QuantizeSpec.from_config(cfg["quantize"])
        check_quantize_data(q, data.channels, data.image_size, data.name)
        if q.encoder == "vae":
            check_vae(q.vae_path)


def check_storage(cfg: dict[str, Any], stage: str) -> None:
    """Fail fast when the stage's output storage is unreachable, or (``data``) already holds shards."""
    from raydd.data.parquet import shard_paths
    from raydd.storage.fs import StorageError, check_reachable, resolve
    from raydd.storage.layout import root

    try:
        if stage == "data":
            loc = resolve(cfg["data"]["out"], cfg["storage"].get("endpoint_url"))
        else:
            loc = root(cfg)  # where every stage writes; evaluate.set is only read
        check_reachable(loc)
        if stage == "data" and any(shard_paths(loc, split) for split in ("train", "test")):
            raise ConfigError(f"data.out {loc.uri} already holds Parquet shards; choose another data.out or delete it")
    except StorageError as e:
        raise ConfigError(str(e)) from e


def describe(cfg: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(cfg))
