"""Give freed memory back to the operating system after a run.

PyTorch's CPU tensors come from glibc's malloc, which keeps freed blocks in per-thread arenas: a server whose
runs happen in Gradio's worker threads grew by 0.1-0.7 GB per run and never shrank (4.3 GB after a dozen runs,
measured by ``bench --suite app``), although nothing was still referenced. ``malloc_trim(0)`` returns those
blocks (RSS back to about 1.0 GB after each run, ``scripts/peak_rss.py``). Elsewhere (no glibc) it is a no-op.

``limit_arenas`` caps how many arenas glibc makes (``mallopt(M_ARENA_MAX)``, what ``MALLOC_ARENA_MAX`` does): each
worker thread that allocates otherwise gets an arena of its own, and memory freed in one is not reused by another.
With 2 arenas the app's per-run peaks fell by up to 80 MB (DP sparse at n = 200: 1537 -> 1456 MB, all six methods
in one app process, ``bench --suite app``) at no measured cost in run time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_libc = None


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _glibc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    return _libc


def release_memory() -> None:
    """Collect garbage and hand the allocator's free blocks back to the system (glibc only)."""
    gc.collect()
    libc = _glibc()
    if libc and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def limit_arenas(count: int = 2) -> bool:
    """At most ``count`` malloc arenas for threads created from now on (call before the server starts its
    threads). Returns whether the allocator took it (False off glibc)."""
    libc = _glibc()
    return bool(libc and hasattr(libc, "mallopt") and libc.mallopt(M_ARENA_MAX, int(count)) == 1)
