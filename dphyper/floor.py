"""The non-private floor: the same LoRA, trained without clipping or noise until it stops improving.

A comparison of private methods needs to know what the adapter itself can hold on a set,
with no privacy at all. "10 epochs of the DP-SGD schedule without noise" is not that (the
first benchmark's "non-private LoRA" was worse than the hypernetwork at ε = ∞ on two sets).
Here the LoRA (same base UNet, targets, rank as every method) trains with Adam on the
set's images until its **held-out denoising loss** stops improving:

* held-out images: the first ``heldout`` images of the set's reference (disjoint from the
  training images, same definition; the benchmark's FID uses the whole reference);
* the held-out loss uses fixed draws (``draws`` timesteps stratified over [0, T) and noises
  per image, seeded), so two evaluations differ only through the weights;
* every ``eval_every`` steps; the run stops after ``patience`` evaluations without a
  relative improvement of at least ``min_delta`` on the best, or at ``max_steps``; the
  **best** weights (lowest held-out loss) are returned.

Nothing here is private: it is the ε = ∞ reference, and its ledger event says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from .diffusion import denoising_loss, load_unet, make_train_scheduler
from .lora import add_lora


@dataclass(frozen=True)
class FloorConfig:
    lr: float = 1e-2
    batch_size: int = 64
    eval_every: int = 20
    patience: int = 5
    min_delta: float = 0.002
    max_steps: int = 1000
    heldout: int = 256
    draws: int = 1
    seed: int = 0


class HeldoutLoss:
    """Denoising loss on fixed (image, timestep, noise) triples: a deterministic function of the weights."""

    def __init__(self, images: torch.Tensor, draws: int, seed: int, device: torch.device) -> None:
        sched = make_train_scheduler()
        T = sched.config.num_train_timesteps
        g = torch.Generator().manual_seed(seed)
        x0 = images.repeat(draws, 1, 1, 1)
        m = len(x0)
        # Stratified timesteps: every part of [0, T) is represented equally, in a seeded order.
        t = ((torch.arange(m) + torch.rand(m, generator=g)) * T / m).long().clamp_(0, T - 1)
        t = t[torch.randperm(m, generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        a = sched.alphas_cumprod[t]
        self.noisy = (a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise).to(device)
        self.t, self.noise = t.to(device), noise.to(device)

    @torch.no_grad()
    def __call__(self, unet, batch: int = 256) -> float:
        total = 0.0
        for i in range(0, len(self.t), batch):
            pred = unet(self.noisy[i:i + batch], self.t[i:i + batch]).sample
            total += float(((pred - self.noise[i:i + batch]) ** 2).mean(dim=(1, 2, 3)).sum())
        return total / len(self.t)


def train_floor(images: torch.Tensor, heldout: torch.Tensor, cfg: FloorConfig = FloorConfig(),
                device: torch.device | None = None, log=None) -> dict:
    """Train the LoRA non-privately with early stopping; returns the best LoRA and the loss curve."""
    device = device or torch.device("cpu")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    unet = add_lora(load_unet(device=device))
    names = [n for n, p in unet.named_parameters() if p.requires_grad]
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = make_train_scheduler()
    held = HeldoutLoss(heldout[: cfg.heldout], cfg.draws, cfg.seed + 1, device)
    unet.eval()
    curve = [(0, held(unet))]
    best, best_step = curve[0][1], 0
    best_lora = {n: p.detach().clone() for n, p in zip(names, params)}
    n, bs, since = len(images), min(cfg.batch_size, len(images)), 0
    perm, pos, step = torch.randperm(n, generator=g), 0, 0
    train_seconds = 0.0
    while step < cfg.max_steps and since < cfg.patience:
        unet.train()
        t_train = time.perf_counter()
        for _ in range(min(cfg.eval_every, cfg.max_steps - step)):
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=g), 0
            x0 = images[perm[pos:pos + bs]].to(device)
            pos += bs
            loss = denoising_loss(lambda x, t: unet(x, t).sample, x0, sched, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        train_seconds += time.perf_counter() - t_train
        unet.eval()
        value = held(unet)
        curve.append((step, value))
        if value < best * (1 - cfg.min_delta):
            best, best_step, since = value, step, 0
            best_lora = {n_: p.detach().clone() for n_, p in zip(names, params)}
        else:
            since += 1
        if log:
            log(f"floor step {step}: held-out loss {value:.5f} (best {best:.5f} at {best_step})")
    return {"lora": best_lora, "best_step": best_step, "steps": step, "best_loss": best,
            "base_loss": curve[0][1], "curve": curve, "epochs": best_step * bs / n,
            "stopped": "patience" if since >= cfg.patience else "max_steps",
            "seconds": time.perf_counter() - t0, "seconds_per_step": train_seconds / max(step, 1),
            "batch_size": bs, "config": asdict(cfg)}


def floor_id(cfg: FloorConfig = FloorConfig()) -> str:
    """What a stored floor cell depends on (besides the set and the base model)."""
    return ",".join(f"{k}={v}" for k, v in asdict(cfg).items()) + f";inf={math.inf}"
