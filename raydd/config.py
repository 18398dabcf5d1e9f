"""Compose Hydra configs and check them before any work starts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from raydd.errors import RayddError

STAGES = {
    "data": "convert a torchvision/ImageFolder dataset into raydd Parquet shards",
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
DISTILL_METHODS = ("mtt", "datm", "ast", "mct")
QUANTIZE_METHODS = ("ddoq", "d4m")
BASELINES = ("random", "full")


class ConfigError(RayddError, ValueError):
    """A configuration that cannot run; the message names the problem."""


def config_dir() -> Path:
    """``$RAYDD_CONFIG_DIR``, else ``./configs``, else the ``configs/`` beside the package."""
    for candidate in (os.environ.get("RAYDD_CONFIG_DIR"), "configs", Path(__file__).resolve().parents[1] / "configs"):
        if candidate and (Path(candidate) / "config.yaml").exists():
            return Path(candidate).resolve()
    raise ConfigError("configs/config.yaml not found: run from the raydd checkout or set RAYDD_CONFIG_DIR")


def with_stage_prefix(stage: str, overrides: list[str]) -> list[str]:
    """``key=value`` → ``<stage>.key=value`` for the stage's own keys (:data:`OWN_KEYS`)."""
    own = OWN_KEYS.get(stage, ())
    return [f"{stage}.{o}" if o.split("=", 1)[0] in own else o for o in overrides]


def compose(overrides: list[str]) -> dict[str, Any]:
    """Compose ``configs/config.yaml`` with ``key=value`` overrides into a plain dict."""
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


def validate(cfg: dict[str, Any], stage: str) -> None:
    """Cheap checks that would otherwise fail deep inside a Ray job."""
    from raydd.data.registry import dataset_names
    from raydd.models.registry import MODELS

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if cfg["dataset"]["name"] not in dataset_names():
        raise ConfigError(f"unknown dataset {cfg['dataset']['name']!r}; choose one of {', '.join(dataset_names())}")
    for name in [cfg["model"]["name"], *cfg["evaluate"]["models"]]:
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    method = cfg["method"]["name"]
    allowed = {"distill": DISTILL_METHODS, "quantize": QUANTIZE_METHODS,
               "evaluate": DISTILL_METHODS + QUANTIZE_METHODS + BASELINES,
               "pipeline": DISTILL_METHODS + QUANTIZE_METHODS, "tune": DISTILL_METHODS}.get(stage)
    if allowed and method not in allowed:
        raise ConfigError(f"method {method!r} does not run in stage {stage!r}; choose one of {', '.join(allowed)}")
    if not isinstance(cfg["ipc"], int) or cfg["ipc"] <= 0:
        raise ConfigError(f"ipc must be a positive integer, got {cfg['ipc']!r}")
    if cfg.get("tracking") not in (None, "tensorboard"):
        raise ConfigError(f"unknown tracking {cfg['tracking']!r}; choose null (off) or tensorboard")
    if not isinstance(cfg["workers"], int) or cfg["workers"] < 0:
        raise ConfigError(f"workers must be an integer >= 0, got {cfg['workers']!r}")
    for key in ("num", "epochs"):
        if cfg["experts"][key] <= 0:
            raise ConfigError(f"experts.{key} must be positive, got {cfg['experts'][key]}")
    if cfg["experts"]["variant"] not in ("plain", "smooth"):
        raise ConfigError(f"unknown experts.variant {cfg['experts']['variant']!r}; choose plain or smooth")
    if cfg["experts"]["form"] not in ("full", "convex"):
        raise ConfigError(f"unknown experts.form {cfg['experts']['form']!r}; choose full or convex")
    d = cfg["distill"]
    if d["unroll"] not in ("plain", "constant_memory"):
        raise ConfigError(f"unknown distill.unroll {d['unroll']!r}; choose plain or constant_memory")
    if stage in ("distill", "pipeline", "tune") and (
            d["min_start_epoch"] > d["max_start_epoch"] or d["max_start_epoch"] + d["expert_epochs"] > cfg["experts"]["epochs"]):
        raise ConfigError(f"distill start window [{d['min_start_epoch']}, {d['max_start_epoch']}] + expert_epochs "
                          f"{d['expert_epochs']} must lie within experts.epochs={cfg['experts']['epochs']}")
    init = d.get("max_start_epoch_init")
    if init is not None and not d["min_start_epoch"] <= init <= d["max_start_epoch"]:
        raise ConfigError(f"distill.max_start_epoch_init={init} must lie in [min_start_epoch, max_start_epoch] "
                          f"= [{d['min_start_epoch']}, {d['max_start_epoch']}]")
    if d["iterations"] <= 0 or d["syn_steps"] <= 0 or d["expert_epochs"] <= 0:
        raise ConfigError("distill.iterations, distill.syn_steps and distill.expert_epochs must be positive")
    if cfg["evaluate"]["num_models"] <= 0 or cfg["evaluate"]["epochs"] <= 0:
        raise ConfigError("evaluate.num_models and evaluate.epochs must be positive")
    if stage == "data":
        if not cfg["data"]["out"]:
            raise ConfigError("raydd data needs data.out (a local path or s3://bucket/prefix for the Parquet shards)")
        if cfg["dataset"]["name"] == "parquet" or cfg["dataset"].get("uri"):
            raise ConfigError("raydd data converts a dataset from dataset.root; dataset=parquet / dataset.uri is Parquet already")
        if not isinstance(cfg["data"]["rows_per_shard"], int) or cfg["data"]["rows_per_shard"] <= 0:
            raise ConfigError(f"data.rows_per_shard must be a positive integer, got {cfg['data']['rows_per_shard']!r}")


def check_data(cfg: dict[str, Any]) -> None:
    """Fail fast when the dataset cannot be found (reads metadata or the files' existence only)."""
    from raydd.data.registry import check_available
    from raydd.data.sources import DatasetNotFoundError

    try:
        check_available(cfg["dataset"])
    except (FileNotFoundError, DatasetNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e


def check_storage(cfg: dict[str, Any], stage: str) -> None:
    """Fail fast when the stage's output storage is unreachable, or (``data``) already holds shards."""
    from raydd.data.parquet import shard_paths
    from raydd.storage.fs import StorageError, check_reachable, resolve
    from raydd.storage.layout import root, set_location

    try:
        if stage == "data":
            loc = resolve(cfg["data"]["out"], cfg["storage"].get("endpoint_url"))
        else:
            loc = set_location(cfg) if stage == "evaluate" else root(cfg)
        check_reachable(loc)
        if stage == "data" and any(shard_paths(loc, split) for split in ("train", "test")):
            raise ConfigError(f"data.out {loc.uri} already holds Parquet shards; choose another data.out or delete it")
    except StorageError as e:
        raise ConfigError(str(e)) from e


def describe(cfg: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(cfg))
