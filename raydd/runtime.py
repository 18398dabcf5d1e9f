"""Connect to Ray: a running cluster (``ray job submit``, ``ray_address``) or a local one."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
import torch

from raydd.config import ConfigError


def init_ray(cfg: dict[str, Any]) -> None:
    """``ray.init`` once; inside a submitted job this joins the job's cluster."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.get("ray_address") or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             include_dashboard=False if address is None else None)


def require_gpus(gpus: float, what: str) -> None:
    """Fail before any work when a stage asks for more GPUs than the Ray cluster has."""
    have = ray.cluster_resources().get("GPU", 0)
    if gpus > have:
        raise ConfigError(f"{what} asks for {gpus:g} GPUs but the Ray cluster has {have:g}; set it to 0 to run on CPUs")


def task_device() -> torch.device:
    """The device of a Ray task or actor: its first assigned GPU, else the CPU."""
    return torch.device("cuda" if ray.get_gpu_ids() else "cpu")
