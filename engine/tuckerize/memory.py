"""Keep freed memory in the process instead of handing it back to the system after every large temporary.

A compression allocates and frees hundreds of large temporaries (Gram matrices, projections, factor
copies). glibc serves each one above its mmap threshold with a fresh mapping and unmaps it when freed, so
every one is faulted in page by page again; on virtual machines whose memory the host backs lazily each
fault is expensive. Measured on the 2-core AMD EPYC VM of BENCHMARKS.md, VGG-16 `--rule budget`: system
time 11.9 → 9.0 s and wall 29.8 → 24.7 s, peak RSS +7 % (the same effect as
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=…). Engine processes are one-shot (a
CLI call, one job's stage), so memory kept until exit is not lost to anyone.

With chunk mappings off, glibc takes large blocks from the main heap (a thread's arena that cannot hold one
retries there), and keeps the heap's freed top instead of trimming it. Other C libraries have no mallopt:
nothing is changed there.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# glibc's malloc.h parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed blocks; True when it accepted both settings."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # M_TRIM_THRESHOLD is an int: the largest value below 2^31 keeps anything a job would free.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
