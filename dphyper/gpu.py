"""GPU borrowing on Hugging Face ZeroGPU Spaces (``spaces.GPU``); a no-op everywhere else.

On ZeroGPU a decorated call gets a GPU for at most its ``duration`` and may run in another
process: only its arguments and return value cross, so no session state and no callbacks go
in. Training methods therefore run as a sequence of short decorated chunks driven from CPU
code (``dpsgd.train_dpsgd(chunk_seconds=...)``), reporting progress and checking Cancel between
chunks.
"""

from __future__ import annotations

import os

try:
    import spaces  # type: ignore

    ZERO_GPU = True
    gpu = spaces.GPU
except ImportError:  # the package exists only on Spaces
    ZERO_GPU = False

    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

# Seconds of training per GPU call when chunking (the app's default on a ZeroGPU Space: 45 s, inside
# ZeroGPU's default 60 s; 0 elsewhere = one call). DPHYPER_GPU_CHUNK_S overrides it.
CHUNK_SECONDS = float(os.environ.get("DPHYPER_GPU_CHUNK_S", "45" if ZERO_GPU else "0"))
