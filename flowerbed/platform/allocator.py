"""Keep freed memory in the process for reuse instead of handing it back to the OS.

By default glibc's malloc gives the free top of its heap back to the OS once it
passes the trim threshold (128 kB at first, raised only when an mmapped block is
freed) and serves blocks above the mmap threshold with fresh ``mmap`` calls: a
training step that frees its activations and gradients hands their pages back,
and the next step faults them in again, page by page. On the bench federation
that was ~70,000 page faults a second per client and 13% of a client's CPU time
spent in the kernel.
Raising the mmap threshold to its maximum (32 MiB), the trim threshold to 1 GiB
and the top pad to 256 MiB lets freed blocks be reused; ``benchmarks/allocator.py``
measures the difference. A process's memory can therefore stay up to ~1 GiB above
its live data. Only glibc (Linux) has ``mallopt``; elsewhere this does nothing.
Set ``FLOWERBED_KEEP_FREED_MEMORY=0`` to keep malloc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger("flowerbed")

# mallopt parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc's largest allowed value on 64-bit
    M_TRIM_THRESHOLD: 1 << 30,
    M_TOP_PAD: 256 << 20,
}

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` to this process's malloc once; True if it took effect."""
    global _applied
    if _applied is None:
        _applied = _mallopt_all()
    return _applied


def _mallopt_all() -> bool:
    if os.environ.get("FLOWERBED_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
    if not ok:
        logger.debug("mallopt refused a setting; malloc keeps (some of) its defaults")
    return ok
