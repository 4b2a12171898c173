"""Process-level settings that make CPU runs faster without changing any result.

:func:`tune_malloc` keeps glibc's allocator from handing large freed blocks back to the
kernel. A force evaluation allocates and frees per-edge tensors of several MB many times per
step; with glibc's defaults each such block is a fresh ``mmap`` (or the heap top is trimmed
after it is freed), so every step page-faults and zero-fills the same memory again. Measured
on the size-S benchmark (2 threads, one run each way, shared machine): cu256-infer 0.040 ->
0.024 s, 3bpa-train 0.120 -> 0.107 s, cu-train 0.98 -> 0.50 s, 3bpa-infer unchanged
(docs/performance.md). The cost is that freed memory stays with the process (up to the trim
threshold) instead of returning to the system: peak RSS of cu-train 2167 -> 2443 MB.

Called by the training command, the ASE calculator and ``scripts/benchmark.py``; set
``MLIP_MALLOC_TUNING=0`` to leave the allocator alone.
"""
import ctypes
import os
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_done = False


def tune_malloc(trim_threshold: int = 1 << 30, top_pad: int = 64 << 20) -> bool:
    """Serve every block from the heap (no ``mmap`` blocks: glibc's mmap threshold cannot exceed
    32 MiB, and a training batch has per-edge tensors larger than that), keep up to
    ``trim_threshold`` bytes of free heap instead of returning it, and grow the heap by
    ``top_pad`` at a time. Returns True when applied (Linux with glibc, not disabled by
    ``MLIP_MALLOC_TUNING=0``); applying it again is a no-op."""
    global _done
    if _done:
        return True
    if os.environ.get("MLIP_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, int(value)) == 1 for param, value in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    _done = ok
    return ok
