"""Keep freed memory in the process for the next training step.

Every CPU training step frees and reallocates the same large buffers; the largest is
the gradient of the token-embedding matrix (30,522 x 384 floats, 47 MB, for a MiniLM
student; far more for a decoder's vocabulary). glibc hands blocks that large back to
the kernel on free and maps fresh pages on the next allocation, so each step pays a
page fault per 4 KiB: 60 ms of a 700 ms step on the demo student. Serving every
allocation from the heap and trimming it only past 1 GiB lets the next step reuse the
pages. The cost: up to 1 GiB of freed memory stays with the process until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
KEEP_BYTES = 1 << 30


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; False where that is not glibc (a no-op)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
