"""Keep freed memory in a worker process: glibc's malloc tuned for one large job after another.

A worker allocates the same large buffers for every study: the inflated PNG (1 MB for a 1024 px
X-ray), the decoded levels, the model's input and outputs. glibc serves an allocation above its
mmap threshold (128 KB at first, raised as it goes) with fresh pages and gives freed memory at the
top of its heap back to the kernel, so each study touches new pages and pays a page fault for each
4 KB of them: about 0.9 ms more to decode a 1024 px PNG, measured (`bench/worker.py` runs its
processes with the same setting). `keep_freed_memory()` makes malloc serve anything below
MMAP_THRESHOLD from its heap and keep up to TRIM_THRESHOLD of free memory there, so the pages of
one study are reused by the next. The cost is that this memory stays in the process's RSS, which
the memory cap (`XRAY_WORKER_MAX_MEMORY_MB`) still watches.

On a C library without `mallopt` (musl, macOS) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 512 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tune this process's malloc (see the module docstring); True if it took effect. Settings made
    before a fork hold in the child too."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("malloc tuning skipped: this C library has no mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.warning("malloc tuning refused by the C library; studies will page-fault more")
    return ok
