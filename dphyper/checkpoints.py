"""Short content hashes of the shipped checkpoints: what a stored benchmark cell and a method's cached public
geometry depend on. Below the methods (they import it) and below the benchmark (which imports both)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def hypernet_id() -> str:
    """A short content hash of the shipped hypernetwork file."""
    from .hypernet import HYPERNET_PATH

    return _files_digest("file", HYPERNET_PATH)


def base_unet_id() -> str:
    """A short content hash of the shipped base UNet's weights: part of every method's id and sweep stamp, so a
    rebuilt base model makes every stored cell stale (the base model's and the floor's too)."""
    from .config import BASE_UNET_WEIGHTS

    return _files_digest("file", BASE_UNET_WEIGHTS)


def hypernet_a_id() -> str:
    """A short content hash of what the quadratic EM and the slicing mechanism take from the shipped
    checkpoints: H's shared public A (its ``lora_a`` tensors) and the base UNet they sit in. It changes
    when either does, and not when only H's head is retrained or averaged (issue 18), which leaves their
    cells valid."""
    from .config import BASE_UNET_WEIGHTS
    from .hypernet import HYPERNET_PATH

    return _files_digest("a", HYPERNET_PATH, BASE_UNET_WEIGHTS)


def encoder_id() -> str:
    """A short content hash of the shipped encoder φ (the hypernetwork's input space and the slicing mechanism's
    embedding space)."""
    from .encoder import ENCODER_PATH

    return _files_digest("file", ENCODER_PATH)


_digests: dict = {}


def _files_digest(kind: str, *paths: Path) -> str:
    """Hash of whole files (``file``), or of the hypernetwork's ``lora_a`` tensors plus whole further files
    (``a``); memoised per (path, size, mtime), since cells ask for it often."""
    key = (kind,) + tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _digests:
        h = hashlib.sha256()
        for i, p in enumerate(paths):
            if kind == "a" and i == 0:
                from safetensors.torch import load_file

                t = load_file(str(p))
                for k in sorted(k for k in t if k.startswith("lora_a.")):
                    h.update(k.encode())
                    h.update(t[k].float().contiguous().numpy().tobytes())
            else:
                h.update(p.read_bytes())
        _digests[key] = h.hexdigest()[:12]
    return _digests[key]
