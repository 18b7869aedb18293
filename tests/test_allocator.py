"""flowerbed's malloc settings: freed blocks are reused instead of re-faulted from the OS."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# A training step's pattern: many mid-sized buffers (a batch's activations and gradients)
# allocated, touched and all freed again, 40 times; print the minor page faults that cost.
PROGRAM = """
import resource, numpy as np
from flowerbed.platform.allocator import keep_freed_memory
applied = keep_freed_memory()
np.ones(1 << 18)  # warm up numpy
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    buffers = [np.ones(1 << 18) for _ in range(16)]  # 16 x 2 MiB
    del buffers
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: str) -> tuple[bool, int]:
    env = {**os.environ, "FLOWERBED_KEEP_FREED_MEMORY": keep}
    applied, faults = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    applied, faults = _faults("1")
    default_applied, default_faults = _faults("0")
    assert applied and not default_applied  # FLOWERBED_KEEP_FREED_MEMORY=0 keeps malloc's defaults
    pages = 40 * 16 * (2 << 20) // 4096
    assert default_faults > 0.5 * pages  # the freed heap top is trimmed, and faulted in again next step
    assert faults < 0.1 * pages
