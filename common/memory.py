"""The process's allocator, tuned for numpy's large temporaries (torch-free).

glibc hands every freed allocation above its mmap threshold (128 KiB at first, rising to the
largest freed one) back to the kernel, so the next temporary of that size is fresh memory whose
every 4 KiB page faults on first touch. The ranking allocates and frees a few MiB per step,
hundreds of times per cell: on a virtual machine where a fault costs microseconds that doubles
the cost of some steps (measured in BENCHMARKS.md, "The allocator"). The command line keeps freed
memory in the process instead, up to a bound: the peak a command reaches stays resident until it
exits (for ``evaluate``, two blocks of similarities and their ranking's temporaries).
"""
from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: allocations above it are still mapped and unmapped
TRIM_THRESHOLD = 512 * 1024 * 1024  # free memory kept at the heap's top before any is returned


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve allocations up to ``MMAP_THRESHOLD`` from its heap and to keep up
    to ``TRIM_THRESHOLD`` of freed memory; True when glibc took both settings, False on another C
    library (nothing changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, glibc's among them: no library search at start-up
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
