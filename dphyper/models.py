"""The public models of the default profile, loaded once per process, knowing no method.

Base UNet (with zero-effect LoRA slots), encoder phi, hypernetwork H and evaluator are all
trained on public data only and hold nothing private, so one process shares them between
sessions. They are **read-only while serving**: nothing writes their parameters (sampling
with a LoRA runs on a per-call copy, ``lora.lora_model_fn``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from .config import get_device


class PublicModels:
    """Lazily loaded public models; each loads on first use, under a lock."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or get_device()
        self._lock = threading.RLock()
        self._cache: dict[str, object] = {}
        self._files: dict[str, tuple[int, int] | None] = {}  # file -> (size, mtime_ns) when it was loaded

    def _get(self, name: str, build, *files: Path):
        with self._lock:
            if name not in self._cache:
                seen = {str(f): _file_state(f) for f in files}  # before reading: a later change is caught
                self._cache[name] = build()
                self._files.update(seen)
            return self._cache[name]

    def changed_files(self) -> list[str]:
        """The checkpoint files this process loaded that have changed on disk since (replaced, retrained).
        A benchmark cell is stamped with the hashes of the files on disk, so it must not be stored from a
        process whose models are no longer those files (``sweep.run_sweep``, ``compare.run_compare``)."""
        with self._lock:
            return [f for f, state in self._files.items() if _file_state(Path(f)) != state]

    @property
    def unet(self):
        """The base UNet with LoRA slots at zero (B = 0: exactly the base model), frozen."""
        from .diffusion import load_unet
        from .lora import add_lora

        def build():
            unet = add_lora(load_unet(device=self.device))
            return unet.requires_grad_(False).eval()
        from .config import BASE_UNET_WEIGHTS

        return self._get("unet", build, BASE_UNET_WEIGHTS)

    @property
    def encoder(self):
        from .encoder import ENCODER_PATH, load_encoder

        return self._get("encoder", lambda: load_encoder(device=self.device), ENCODER_PATH)

    @property
    def hypernet(self):
        from .hypernet import HYPERNET_PATH, load_hypernet

        unet = self.unet
        return self._get("hypernetwork", lambda: load_hypernet(unet, device=self.device), HYPERNET_PATH)

    @property
    def evaluator(self):
        from .evaluator import EVALUATOR_PATH, load_evaluator

        return self._get("evaluator", load_evaluator, EVALUATOR_PATH)


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


_shared: dict[str, PublicModels] = {}
_shared_lock = threading.Lock()


def shared_models(device: torch.device | None = None) -> PublicModels:
    """One ``PublicModels`` per device for the whole process (the app, the CLI, the benchmark)."""
    device = device or get_device()
    with _shared_lock:
        return _shared.setdefault(str(device), PublicModels(device))
