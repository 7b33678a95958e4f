"""Allocator tuning: freed large arrays are reused instead of being mapped afresh."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from ct_triage.server.tuning import tune_allocator
    assert tune_allocator()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(200 * 2**20, np.uint8)
del a
before = faults()
a = np.ones(200 * 2**20, np.uint8)
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_second_large_allocation_reuses_the_heap() -> None:
    untuned, tuned = _faults("plain"), _faults("tuned")
    assert untuned > 50  # a fresh mapping: page faults again (4 kB or 2 MB pages)
    assert tuned * 10 < untuned
