"""Connect to Ray: a running cluster (``ray job submit``, ``ray_address``) or a local one with its state API;
the device and allocator of a task."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from pathlib import Path
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


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def reuse_heap() -> bool:
    """Keep this process's large allocations on glibc's heap, for reuse, instead of returning each to the OS.

    glibc maps every block above its mmap threshold (32 MB at most by default) afresh and unmaps it
    when freed, so each 50-130 MB activation of a training batch page-faults in anew, batch after batch
    (27 ms against 5 ms for a 52 MB block here; an expert epoch of 60k images took 227 s instead of
    289 s for 0.6 GB more peak: ``benchmarks/results/distill_speed.md``). Fixing the mmap threshold also
    stops glibc raising its trim threshold, so the free top of the heap (a batch's activations, once
    freed) went back to the OS after every step just the same unless a hole lower down took them: the
    trim threshold is raised too (a Fashion-MNIST expert epoch, batches decoded one at a time: 25.6 s
    with the mmap threshold alone, 18.6 s with both). The tasks that train on mini-batches (experts,
    evaluation, quantize) and the constant-memory unroll call this; the plain unroll does not: it
    holds every inner step's graph, and interleaved with freed blocks on the heap its peak rose 1.28x.
    False (nothing changed) where the C library has no ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 2**31 - 1)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


JEMALLOC = Path(ray.__file__).parent / "core" / "libjemalloc.so"  # the jemalloc 5.3 that Ray ships for its own processes
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_env() -> dict[str, str]:
    """Environment that starts a process on Ray's own jemalloc, keeping the pages it frees for reuse.

    jemalloc's size classes reuse a freed 52 MB activation for the next one of its size without the
    interleaving that raises glibc's heap peak; ``JEMALLOC_CONF`` keeps freed pages (no decay) and
    serves large blocks from the ordinary arenas (no oversize arena, which returns them at once).
    The plain unroll at width 128 runs at glibc-heap speed at glibc-default peak memory
    (``benchmarks/results/distill_speed.md``). Empty where this Ray install has no jemalloc.
    A Ray worker takes it as its ``runtime_env``'s ``env_vars``: ``LD_PRELOAD`` acts at process start.
    """
    return {"LD_PRELOAD": str(JEMALLOC), "MALLOC_CONF": JEMALLOC_CONF} if JEMALLOC.is_file() else {}


def require_jemalloc(key: str) -> None:
    """Fail before any work when ``key`` asks for jemalloc and this Ray install has none."""
    if not jemalloc_env():
        raise ConfigError(f"{key}=jemalloc but this Ray install has no {JEMALLOC}; choose auto, reuse or default")


def allocator() -> str:
    """``jemalloc`` where this process runs on it, else ``libc``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "libc"
    return "jemalloc" if "libjemalloc" in maps else "libc"


def require_gpus(gpus: float, what: str) -> None:
    """Fail before any work when a stage asks for more GPUs than the Ray cluster has."""
    have = ray.cluster_resources().get("GPU", 0)
    if gpus > have:
        raise ConfigError(f"{what} asks for {gpus:g} GPUs but the Ray cluster has {have:g}; set it to 0 to run on CPUs")


def task_device() -> torch.device:
    """The device of a Ray task or actor: its first assigned GPU, else the CPU (also outside Ray)."""
    return torch.device("cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu")
