"""The public models of the default profile, loaded once per process, knowing no method.

Base UNet (with zero-effect LoRA slots), encoder phi, hypernetwork H and evaluator are all
trained on public data only and hold nothing private, so one process shares them between
sessions. They are **read-only while serving**: nothing writes their parameters (sampling
with a LoRA runs on a per-call copy, ``lora.lora_model_fn``).
"""

from __future__ import annotations

import threading

import torch

from .config import get_device


class PublicModels:
    """Lazily loaded public models; each loads on first use, under a lock."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or get_device()
        self._lock = threading.RLock()
        self._cache: dict[str, object] = {}

    def _get(self, name: str, build):
        with self._lock:
            if name not in self._cache:
                self._cache[name] = build()
            return self._cache[name]

    @property
    def unet(self):
        """The base UNet with LoRA slots at zero (B = 0: exactly the base model), frozen."""
        from .diffusion import load_unet
        from .lora import add_lora

        def build():
            unet = add_lora(load_unet(device=self.device))
            return unet.requires_grad_(False).eval()
        return self._get("unet", build)

    @property
    def encoder(self):
        from .encoder import load_encoder

        return self._get("encoder", lambda: load_encoder(device=self.device))

    @property
    def hypernet(self):
        from .hypernet import load_hypernet

        return self._get("hypernet", lambda: load_hypernet(self.unet, device=self.device))

    @property
    def evaluator(self):
        from .evaluator import load_evaluator

        return self._get("evaluator", load_evaluator)


_shared: dict[str, PublicModels] = {}
_shared_lock = threading.Lock()


def shared_models(device: torch.device | None = None) -> PublicModels:
    """One ``PublicModels`` per device for the whole process (the app, the CLI, the benchmark)."""
    device = device or get_device()
    with _shared_lock:
        return _shared.setdefault(str(device), PublicModels(device))
