"""``reuse_heap``: glibc keeps a 100 MB block on its heap, and keeps it there once freed, for the next batch,
instead of unmapping it or trimming the heap."""

import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("heap, unroll, reuses", [("auto", "plain", False), ("auto", "constant_memory", True),
                                                  ("reuse", "plain", True), ("default", "constant_memory", False)])
def test_distill_heap_picks_the_workers_allocator(heap, unroll, reuses):
    from raydd.config import compose
    from raydd.specs import DistillSpec

    d = DistillSpec.from_config(compose([f"distill.heap={heap}", f"distill.unroll={unroll}"])["distill"])
    assert d.reuse_heap is reuses
