"""The public data pools the methods share (Fashion-MNIST train: the base model's own data), below the methods:
a method takes public images from here, never from a sibling method."""

from __future__ import annotations

import threading

import torch

_pool_lock = threading.Lock()
_pool: dict[int, torch.Tensor] = {}


def pool_indices(total: int, size: int):
    """Which train images the public pool holds: a seeded permutation's first ``size`` (a prefix is a smaller pool)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:size].numpy()


def public_pool(size: int) -> torch.Tensor:
    """A fixed (seeded, public) sample of the train split, loaded once per process."""
    from .data import load_fashion_mnist_uint8, uint8_to_tensor

    with _pool_lock:
        if size not in _pool:
            images, _ = load_fashion_mnist_uint8("train")
            _pool[size] = uint8_to_tensor(images[pool_indices(len(images), size)])
        return _pool[size]


def public_pool_labelled(size: int, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` images of the seeded public pool of ``pool`` images (``public_pool(pool)``), with
    their class labels."""
    from .data import load_fashion_mnist_uint8

    _, labels = load_fashion_mnist_uint8("train")
    return public_pool(pool)[:size], torch.as_tensor(labels[pool_indices(len(labels), size)]).long()
