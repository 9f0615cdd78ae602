"""Rows of the base UNet as groups: every Conv2d, Linear and GroupNorm's output rows (a weight row with its bias
entry), in module order. DP sparse fine-tuning scores and trains such groups; the ``sparse`` adapter format
(``dphyper.adapters``) stores changes to them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layer:
    module: str  # module name in the plain diffusers UNet
    params: tuple[str, ...]  # its parameter names (weight, and bias when present)
    rows: int  # groups of this layer (dim 0 of every parameter)
    row_size: int  # weights per group (a weight row plus its bias entry)


def layers_of(unet: torch.nn.Module) -> list[Layer]:
    """Every Conv2d, Linear and GroupNorm of the UNet, in module order (the group order of the release)."""
    out = []
    for name, m in unet.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm)) and m.weight is not None:
            params = tuple(f"{name}.{p}" for p, t in (("weight", m.weight), ("bias", m.bias)) if t is not None)
            rows = m.weight.shape[0]
            size = sum(t.numel() for t in (m.weight, m.bias) if t is not None) // rows
            out.append(Layer(name.replace(".base_layer", ""), params, rows, size))
    return out


def group_count(layers: list[Layer]) -> int:
    return sum(layer.rows for layer in layers)


def masks_from_groups(layers: list[Layer], chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """{parameter name: boolean row mask} for the tensors that hold at least one chosen group."""
    flags = torch.zeros(group_count(layers), dtype=torch.bool)
    flags[chosen] = True
    out, at = {}, 0
    for layer in layers:
        rows = flags[at:at + layer.rows]
        at += layer.rows
        if rows.any():
            for p in layer.params:
                out[p] = rows.clone()
    return out
