"""Adapter formats: how a method's learned weights are saved, loaded into the base UNet and swapped in for
sampling. Below the methods: the contract (``methods/base.py``) looks a format up here and never names a method.

* ``lora``: LoRA tensors keyed by UNet parameter names, saved as peft keys in ``lora.safetensors``;
* ``sparse-delta``: rows of the base UNet's own tensors (``NAME.rows``, ``NAME.delta``: W[rows] += delta), saved in
  ``sparse_delta.safetensors`` (DP sparse fine-tuning's output);
* ``images``: a synthetic image set instead of weights (``images``, (M, 1, 32, 32) in [-1, 1]), saved in
  ``synthetic_images.safetensors``: a method that adapts no parameter (Private Evolution). Its samples are
  drawn from the set (``draw``), not sampled from the UNet.

A new format is one ``AdapterFormat`` entry in ``FORMATS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class AdapterFormat:
    file: str  # the file name in the common output layout
    save: Callable[..., None]  # (tensors, path, metadata=) -> None
    load_into: Callable[[torch.nn.Module, Path], torch.nn.Module]  # the documented way to load a download
    params: Callable[[torch.nn.Module, dict], dict]  # (unet, tensors) -> what functional_call swaps in
    recognise: Callable[[list[str]], bool]  # a file's keys -> is it this format
    words: str = ""  # what the artifact is, for a caption ("a LoRA")
    noun: str = ""  # ... for a plot label after the method's name ("LoRA")
    # (tensors, n, seed) -> n samples drawn from the artifact itself; None = sample the UNet with ``params``
    draw: Callable[[dict, int, int], torch.Tensor] | None = None


def _plain(name: str) -> str:
    return name.replace(".base_layer", "")


def delta_params(unet: torch.nn.Module, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full tensors of ``unet`` (plain or with LoRA slots) with the delta's rows added, keyed by the
    unet's own parameter names (for ``torch.func.functional_call``: ``lora.lora_model_fn``)."""
    names = {_plain(n): n for n, _ in unet.named_parameters() if ".lora_" not in n}
    out = {}
    for key, rows in delta.items():
        if not key.endswith(".rows"):
            continue
        name = key[: -len(".rows")]
        if name not in names:
            raise ValueError(f"sparse delta does not match the UNet: no parameter {name!r}")
        full = unet.get_parameter(names[name]).detach().clone()
        full[rows.to(full.device)] += delta[f"{name}.delta"].to(full)
        out[names[name]] = full
    return out


def save_sparse_delta(delta: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: (v.to(torch.int64) if k.endswith(".rows") else v.to(torch.float32)).contiguous().cpu()
               for k, v in delta.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "dphyper sparse delta: NAME.rows, NAME.delta", **(metadata or {})})


def load_sparse_delta_into(unet: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Add a saved sparse delta to the base UNet in place: W[rows] += delta for every NAME.rows / NAME.delta."""
    from safetensors.torch import load_file

    delta = load_file(str(path))
    with torch.no_grad():
        for name, full in delta_params(unet, delta).items():
            unet.get_parameter(name).copy_(full)
    return unet


def _lora_save(tensors, path, metadata=None):
    from .lora import save_lora

    save_lora(tensors, path, metadata=metadata)


def _lora_load(unet, path):
    from .lora import load_lora_into

    return load_lora_into(unet, path)


def save_images(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": tensors["images"].to(torch.float32).contiguous().cpu()}, str(path),
              metadata={"format": "dphyper synthetic image set: images (M, 1, 32, 32) in [-1, 1]", **(metadata or {})})


def _images_load(unet, path):
    raise ValueError(f"{Path(path).name} is a synthetic image set, not weights for the UNet: read it with "
                     "safetensors.torch.load_file(path)['images']")


def _images_params(unet, tensors):
    raise ValueError("a synthetic image set has no weights to swap into the UNet: draw from it instead")


def draw_images(tensors: dict[str, torch.Tensor], n: int, seed: int) -> torch.Tensor:
    """n samples from a synthetic set: a seeded random order of the set, repeated when n exceeds it."""
    images = tensors["images"]
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(images), generator=g) for _ in range(-(-n // max(len(images), 1)))])
    return images[order[:n]].clone()


FORMATS: dict[str, AdapterFormat] = {
    "lora": AdapterFormat("lora.safetensors", _lora_save, _lora_load, lambda unet, t: t,
                          lambda keys: not any(k.endswith(".rows") for k in keys), "a LoRA", "LoRA"),
    "sparse-delta": AdapterFormat("sparse_delta.safetensors", save_sparse_delta, load_sparse_delta_into, delta_params,
                            lambda keys: any(k.endswith(".rows") for k in keys), "a sparse delta of the UNet",
                            "(rows of the base UNet)"),
    "images": AdapterFormat("synthetic_images.safetensors", save_images, _images_load, _images_params,
                            lambda keys: keys == ["images"], "a synthetic image set", "(synthetic set)",
                            draw=draw_images),
}
