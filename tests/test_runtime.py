"""``reuse_heap``: glibc keeps a 100 MB block on its heap, and keeps it there once freed, for the next batch,
instead of unmapping it or trimming the heap. ``jemalloc_env``: a process (a Ray worker too) started with it
runs on Ray's jemalloc and reuses a freed block without faulting its pages in again."""

import os
import subprocess
import sys

import pytest
import ray

from raydd.runtime import JEMALLOC, allocator, jemalloc_env

HELD = """
import ctypes, sys
import torch
from raydd.runtime import reuse_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
changed = reuse_heap() if sys.argv[1] == "reuse" else None
before = libc.mallinfo2().arena
block = torch.empty(100 * 2**20 // 4)
mapped = libc.mallinfo2().hblkhd
del block
print(changed, mapped, libc.mallinfo2().arena - before)
"""


def heap_around_100_mb(mode: str) -> tuple[str, int, int]:
    """In a fresh process: ``reuse_heap()``'s result (or None), the bytes glibc holds in mmap'd blocks while a
    100 MB tensor lives, and how much its heap has grown once the tensor is freed."""
    out = subprocess.run([sys.executable, "-c", HELD, mode], capture_output=True, text=True, check=True, timeout=120)
    changed, mapped, heap = out.stdout.split()
    return changed, int(mapped), int(heap)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_reuse_heap_keeps_a_100_mb_block_on_the_heap():
    _, mapped, heap = heap_around_100_mb("default")
    assert mapped >= 100 * 2**20 and heap < 50 * 2**20  # glibc's default: mapped, unmapped when freed
    changed, mapped, heap = heap_around_100_mb("reuse")
    assert changed == "True" and mapped < 50 * 2**20  # the block is on the heap (a few small mappings remain)
    assert heap >= 90 * 2**20  # and stays there when freed: the top of the heap is not trimmed


@pytest.mark.parametrize("heap, unroll, reuses, jemalloc", [
    ("auto", "plain", False, True), ("auto", "constant_memory", True, True), ("jemalloc", "plain", False, True),
    ("reuse", "plain", True, False), ("default", "constant_memory", False, False), ("default", "plain", False, False)])
def test_distill_heap_picks_the_workers_allocator(heap, unroll, reuses, jemalloc):
    from raydd.config import compose
    from raydd.specs import DistillSpec

    d = DistillSpec.from_config(compose([f"distill.heap={heap}", f"distill.unroll={unroll}"])["distill"])
    assert d.reuse_heap is reuses and d.jemalloc is jemalloc


REFAULTS = """
import resource, torch
from raydd.runtime import allocator
torch.empty(13 * 2**20).fill_(1.0)  # one 52 MB block, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(13 * 2**20).fill_(1.0)
print(allocator(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(env: dict[str, str]) -> tuple[str, int]:
    """In a fresh process with ``env``: its allocator and the page faults of ten more 52 MB blocks, each freed."""
    out = subprocess.run([sys.executable, "-c", REFAULTS], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, **env})
    name, faults = out.stdout.split()
    return name, int(faults)


@pytest.mark.skipif(not jemalloc_env(), reason="this Ray install ships no libjemalloc.so")
def test_jemalloc_env_reuses_a_freed_52_mb_block_without_faulting_it_in_again():
    assert page_faults({}) == ("libc", pytest.approx(10 * 13 * 2**22 // 4096, rel=0.2))  # glibc maps each afresh
    name, faults = page_faults({"LD_PRELOAD": str(JEMALLOC)})  # jemalloc's own defaults: large blocks go back at once
    assert name == "jemalloc" and faults > 0.5 * 10 * 13 * 2**22 // 4096
    name, faults = page_faults(jemalloc_env())
    assert name == "jemalloc" and faults < 1000


@pytest.mark.skipif(not jemalloc_env(), reason="this Ray install ships no libjemalloc.so")
def test_a_ray_task_started_with_jemalloc_env_runs_on_jemalloc():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        name = ray.remote(allocator)
        assert ray.get(name.options(runtime_env={"env_vars": jemalloc_env()}).remote()) == "jemalloc"
        assert ray.get(name.remote()) == "libc"
    finally:
        ray.shutdown()


def test_asking_for_jemalloc_where_ray_ships_none_is_one_error(monkeypatch, tmp_path):
    import raydd.runtime as runtime
    from raydd.specs import ConfigError

    monkeypatch.setattr(runtime, "JEMALLOC", tmp_path / "libjemalloc.so")
    assert runtime.jemalloc_env() == {}
    with pytest.raises(ConfigError, match=r"^distill.heap=jemalloc but this Ray install has no .*libjemalloc.so; "
                                          r"choose auto, reuse or default$"):
        runtime.require_jemalloc("distill.heap")
