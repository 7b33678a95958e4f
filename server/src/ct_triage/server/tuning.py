"""Process-level tuning for the analysis workload (called once at start-up by the CLI).

A 300-slice study allocates and frees arrays of 80-300 MB at every step. glibc serves every
allocation above 32 MB with a fresh ``mmap`` and returns it with ``munmap`` on free, so each
step pays page faults for memory it had a moment ago: on the 2-core development VM that was
a third of the CPU time (``sys``). With ``mmap`` disabled for chunks and a high trim
threshold the freed memory stays in the heap and is reused: the warm 300-slice analysis went
from 8.5 s to 7.3 s (``python -m benchmarks.run``), at the price of the process keeping
about one study's peak (~1.7 GB) resident between studies.

Disable with ``CT_TRIAGE_MALLOC_TUNING=false`` (e.g. for a process that shares the machine).
"""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: Freed memory at the top of the heap is returned to the system only above this (bytes).
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
#: Extra memory requested from the system each time the heap grows (bytes).
TOP_PAD = 256 * 2**20


def tune_allocator() -> bool:
    """Keep large freed blocks for reuse (glibc only); ``True`` when the settings took."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    logger.debug("malloc tuning %s", "applied" if ok else "refused")
    return ok
