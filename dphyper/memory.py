"""Give freed memory back to the operating system after a run.

PyTorch's CPU tensors come from glibc's malloc, which keeps freed blocks in per-thread arenas: a server whose
runs happen in Gradio's worker threads grew by 0.1-0.7 GB per run and never shrank (4.3 GB after a dozen runs,
measured by ``bench --suite app``), although nothing was still referenced. ``malloc_trim(0)`` returns those
blocks (RSS back to about 1.0 GB after each run, ``scripts/peak_rss.py``). Elsewhere (no glibc) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_libc = None


def release_memory() -> None:
    """Collect garbage and hand the allocator's free blocks back to the system (glibc only)."""
    global _libc
    gc.collect()
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
