"""Connect to Ray: a running cluster (``ray job submit``, ``ray_address``) or a local one."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray


def init_ray(cfg: dict[str, Any]) -> None:
    """``ray.init`` once; inside a submitted job this joins the job's cluster."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.get("ray_address") or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             include_dashboard=False if address is None else None)
