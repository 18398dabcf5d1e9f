"""``reuse_heap``: glibc keeps a freed 100 MB block on its heap for the next batch instead of unmapping it."""

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
block = torch.empty(100 * 2**20 // 4)
print(changed, libc.mallinfo2().hblkhd)
"""


def mmapped_while_holding_100_mb(mode: str) -> tuple[str, int]:
    """In a fresh process: ``reuse_heap()``'s result (or None) and the bytes glibc holds in mmap'd blocks."""
    out = subprocess.run([sys.executable, "-c", HELD, mode], capture_output=True, text=True, check=True, timeout=120)
    changed, held = out.stdout.split()
    return changed, int(held)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_reuse_heap_keeps_a_100_mb_block_on_the_heap():
    assert mmapped_while_holding_100_mb("default")[1] >= 100 * 2**20  # glibc's default: mapped, unmapped when freed
    changed, held = mmapped_while_holding_100_mb("reuse")
    assert changed == "True" and held < 50 * 2**20  # the block is on the heap (a few small mappings remain)
