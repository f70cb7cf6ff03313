"""The C library's allocator, set for streaming video (glibc; elsewhere nothing is done).

A video job allocates and frees frame-sized arrays (0.9 MB at 640x480, 2.8 MB at 1280x720,
more for flows and activations) in several threads for every frame. glibc serves blocks
above its mmap threshold with their own mappings and gives them back on free, but its
threshold is dynamic: each freed mapped block raises it to that block's size (up to
32 MiB), after which frame-sized blocks come from the heap arenas, where they fragment and
stay resident. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, ...)``, which also turns
the dynamic adjustment off) keeps them mapped. Measured on the whole video workflow
(README "Video memory"): at 256 KiB a third less peak memory and almost no growth per
frame, but every large array is then mapped and faulted in afresh, and the workflow ran at
half its speed on 2 CPU cores (4 MiB: 1.4x slower). So it is a setting
(``workers.malloc_mmap_threshold_kb``), off by default, for nodes where the length of the
clips matters more than their speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's ``M_MMAP_THRESHOLD`` parameter of ``mallopt``.
M_MMAP_THRESHOLD = -3
#: The largest threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_fixed = False  # set_mmap_threshold succeeded in this process


def mmap_threshold_fixed() -> bool:
    """True once :func:`set_mmap_threshold` has fixed the threshold in this process (the
    video memory estimate then allows less native growth per frame)."""
    return _fixed


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix the allocator's mmap threshold at ``nbytes`` for the whole process.

    Parameters
    ----------
    nbytes : int
        Blocks this large or larger get their own mapping; 0 leaves the C library's
        default (glibc: dynamic) as it is.

    Returns
    -------
    bool
        True if it was set; False with 0, or where the C library has no ``mallopt``
        (musl, macOS) or refuses the value.

    Raises
    ------
    ValueError
        ``nbytes`` negative or above :data:`MAX_MMAP_THRESHOLD`.
    """
    if not 0 <= nbytes <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap threshold must be 0..{MAX_MMAP_THRESHOLD} bytes, got {nbytes}")
    if nbytes == 0:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        log.info("the C library has no mallopt: its allocator is left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    global _fixed
    done = mallopt(M_MMAP_THRESHOLD, nbytes) == 1
    if not done:
        log.warning("mallopt refused an mmap threshold of %d bytes", nbytes)
    _fixed = _fixed or done
    return done
