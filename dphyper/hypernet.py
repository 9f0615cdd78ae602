"""The hypernetwork H: (noisy mean embedding, public noise level) -> LoRA for the base UNet.

DP-DeepSets: the set function is "mean of clipped phi(x_i)", released once with noise by
``privacy.release_mean``; H is the network after the sum. Everything H sees is a DP
output, so running H is post-processing.

Design choices (each measured or forced by a limit):

* H generates every LoRA ``B`` matrix (the up-projections); each LoRA ``A`` is a learned
  parameter shared by all datasets (as in LoRA-FA). Generating A too would triple the
  output layer and break the 10 MB file limit, and with A and B both generated from a
  zero-initialised head the gradient of both is zero (the product stays 0).
* The output layer starts at zero, so an untrained H gives B = 0: exactly the base model.
* The noise level enters as features (log std and the shrinkage weight 1/(1 + d*std^2),
  also applied to the mean), so H can learn how far to trust a noisy mean: at small
  epsilon it should fall back toward the average LoRA instead of amplifying noise.
* Anchored at the public mean (``set_anchor``): H outputs ``B(mean) - w * B(public mean)``
  at the same noise level, with ``w = exp(-excess / (2 r^2))`` and ``excess`` the squared
  distance of the released mean from the public mean minus what the (public) noise level
  alone explains, ``d * std^2``. A set that looks like the public population (w near 1)
  gets the base model, which was trained on that population; a distinct set (w near 0)
  gets H unchanged. Without the anchor H added its "average" LoRA to every set: it lowered
  the denoising loss everywhere but skewed the class mix of samples for a uniform mix of
  classes (FID 80.8 against the base model's 68.7 on ``mixed-1000``; docs/BENCHMARKS.md).
  ``r = 0`` anchors everywhere (w = 1); trained that way, H fixed the mix but lost about
  20 FID on single-class public sets. The radius was chosen on public sets only. The
  anchor, radius and noise level are public, so the output is still post-processing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .config import ASSETS_DIR, get_device

HYPERNET_PATH = ASSETS_DIR / "hypernet" / "hypernet.safetensors"  # the shipped checkpoint H (a model, not the method)


class HyperNetwork(nn.Module):
    """H: (S, d) means and (S,) noise stds -> {lora param name: (S, *shape)}."""

    def __init__(self, lora_shapes: dict[str, tuple[int, ...]], embed_dim: int = 64, hidden: int = 256,
                 depth: int = 1) -> None:
        super().__init__()
        if depth < 1 or hidden < 1:
            raise ValueError(f"H needs depth >= 1 and hidden >= 1, got depth {depth}, hidden {hidden}")
        self.embed_dim = embed_dim
        self.depth = depth
        self.a_names = [n for n in lora_shapes if ".lora_A." in n]
        self.b_names = [n for n in lora_shapes if ".lora_B." in n]
        self.b_shapes = [tuple(lora_shapes[n]) for n in self.b_names]
        self.b_sizes = [math.prod(s) for s in self.b_shapes]
        # Shared down-projections, initialised like peft's default (Kaiming-uniform).
        self.lora_a = nn.ParameterList()
        for n in self.a_names:
            w = torch.empty(lora_shapes[n])
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            self.lora_a.append(nn.Parameter(w))
        # ``depth`` hidden blocks after the input layer (the shipped H has 1; the ablation varies it).
        self.trunk = nn.Sequential(
            nn.Linear(2 * embed_dim + 2, hidden), nn.SiLU(),
            *[layer for _ in range(depth) for layer in (nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.SiLU())],
        )
        self.head = nn.Linear(hidden, sum(self.b_sizes))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.anchor: torch.Tensor | None
        self.register_buffer("anchor", None)
        self.anchor_radius = 0.0

    def set_anchor(self, public_mean: torch.Tensor, radius: float = 0.0) -> None:
        """Make ``public_mean`` (a public constant) map to the base model (B = 0).

        ``radius`` r > 0 limits the anchor to released means near it (see the module doc);
        r = 0 applies it everywhere.
        """
        if public_mean.shape != (self.embed_dim,):
            raise ValueError(f"anchor must have shape ({self.embed_dim},), got {tuple(public_mean.shape)}")
        if not (radius >= 0 and math.isfinite(radius)):
            raise ValueError(f"anchor radius must be a finite number >= 0, got {radius}")
        self.register_buffer("anchor", public_mean.detach().clone().float().to(self.head.weight.device))
        self.anchor_radius = float(radius)

    def anchor_weight(self, mean: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        """(S,) weight of the anchor: 1 at the public mean, falling off with the distance that
        the noise level does not explain."""
        if self.anchor is None:
            return torch.zeros(mean.shape[0], dtype=mean.dtype, device=mean.device)
        if self.anchor_radius == 0:
            return torch.ones(mean.shape[0], dtype=mean.dtype, device=mean.device)
        std = noise_std.to(mean.dtype).reshape(-1)
        excess = ((mean - self.anchor.to(mean.dtype)) ** 2).sum(1) - self.embed_dim * std ** 2
        return torch.exp(-excess.clamp_min(0) / (2 * self.anchor_radius ** 2))

    def features(self, mean: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        std = noise_std.to(mean.dtype).reshape(-1, 1)
        shrink = 1.0 / (1.0 + self.embed_dim * std ** 2)
        # A shrunk mean (small when noise dominates) and a bounded raw mean: a tiny-epsilon
        # release can have norm >> 1, which must not blow up the first layer.
        return torch.cat([mean * shrink, torch.tanh(mean), torch.log(std + 1e-3), shrink], dim=1)

    def _flat_b(self, mean: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.features(mean, noise_std)))

    def forward(self, mean: torch.Tensor, noise_std: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.anchor is None:
            flat = self._flat_b(mean, noise_std)
        else:  # one pass over [means; anchor at each set's noise level]
            s = mean.shape[0]
            both = self._flat_b(torch.cat([mean, self.anchor.to(mean.dtype).expand_as(mean)]),
                                torch.cat([noise_std.reshape(-1), noise_std.reshape(-1)]))
            flat = both[:s] - self.anchor_weight(mean, noise_std).unsqueeze(1) * both[s:]
        out = {n: a.unsqueeze(0).expand(mean.shape[0], *a.shape) for n, a in zip(self.a_names, self.lora_a)}
        for n, shape, chunk in zip(self.b_names, self.b_shapes, flat.split(self.b_sizes, dim=1)):
            out[n] = chunk.reshape(-1, *shape)
        return out

    def generate(self, mean: torch.Tensor, noise_std: float) -> dict[str, torch.Tensor]:
        """One LoRA (unbatched tensors) for one released mean."""
        with torch.no_grad():
            lora = self(mean.reshape(1, -1), torch.tensor([noise_std]))
        return {k: v[0] for k, v in lora.items()}


def lora_shapes_of(unet: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in unet.named_parameters() if ".lora_" in n}


def save_hypernet(h: HyperNetwork, path: Path, extra: dict[str, str] | None = None) -> None:
    meta = {"embed_dim": str(h.embed_dim), "hidden": str(h.head.in_features), "depth": str(h.depth),
            "anchor_radius": str(h.anchor_radius),
            **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in h.state_dict().items()}, str(path), metadata=meta)


def load_hypernet(unet_with_lora: nn.Module, path: Path | None = None, device: torch.device | None = None) -> HyperNetwork:
    from safetensors import safe_open

    path = Path(path or HYPERNET_PATH)
    if not path.exists():
        raise FileNotFoundError(f"No hypernetwork at {path}: run `python -m dphyper train hypernet` first.")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    h = HyperNetwork(lora_shapes_of(unet_with_lora), embed_dim=int(meta.get("embed_dim", 64)),
                     hidden=int(meta.get("hidden", 256)), depth=int(meta.get("depth", 1)))
    tensors = load_file(str(path))
    if "anchor" in tensors:
        h.set_anchor(tensors["anchor"], radius=float(meta.get("anchor_radius", 0.0)))
    h.load_state_dict(tensors)
    return h.requires_grad_(False).eval().to(device or get_device())
