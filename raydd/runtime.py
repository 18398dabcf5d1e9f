"""Connect to Ray: a running cluster (``ray job submit``, ``ray_address``) or a local one with its state API."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray
import torch

from raydd.specs import ConfigError


def init_ray(cfg: dict[str, Any], num_cpus: int | None = None) -> None:
    """``ray.init`` once; inside a submitted job (or with ``ray_address``/``RAY_ADDRESS``) this joins that cluster.

    A local Ray gets a dashboard on loopback, and its workers are told its address: Ray Train's
    placement-group cleaner asks this state API whether a run's controller is alive (without it, it
    logs a failure every few seconds of every distillation), and frees the workers' CPUs of a run
    Tune stopped. Ray's auth settings (``RAY_AUTH_MODE``, tokens) are left to the user.
    """
    if ray.is_initialized():
        return
    address = cfg.get("ray_address") or os.environ.get("RAY_ADDRESS")
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             logging_level=logging.WARNING, log_to_driver=True,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def require_gpus(gpus: float, what: str) -> None:
    """Fail before any work when a stage asks for more GPUs than the Ray cluster has."""
    have = ray.cluster_resources().get("GPU", 0)
    if gpus > have:
        raise ConfigError(f"{what} asks for {gpus:g} GPUs but the Ray cluster has {have:g}; set it to 0 to run on CPUs")


def task_device() -> torch.device:
    """The device of a Ray task or actor: its first assigned GPU, else the CPU (also outside Ray)."""
    return torch.device("cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu")
