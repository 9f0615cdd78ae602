"""The base diffusion model: a small diffusers UNet2DModel, DDPM training, DDIM sampling.

Trained on public Fashion-MNIST only (``python -m dphyper train base``). Training runs in
time-boxed, resumable chunks: state goes to ``--work-dir`` and every call continues from
it, so a long run can be spread over several sessions. The exported model holds the EMA
weights, which sample much better than the raw weights after a short run.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from typing import TYPE_CHECKING

from .config import BASE_UNET_DIR, CHANNELS, IMAGE_SIZE, get_device

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

log = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"


@dataclass
class UNetConfig:
    """Architecture of the base UNet (the default is sized for a 2-core CPU)."""

    block_out_channels: tuple[int, ...] = field(default=(32, 64, 64), metadata={"help": "channels per resolution level"})
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per level"})
    attention_level: int = field(default=2, metadata={"help": "index of the level with self-attention (8x8 for the default)"})
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups"})


def build_unet(cfg: UNetConfig | None = None) -> UNet2DModel:
    from diffusers import UNet2DModel  # imported where used: the CLI's --help answers without diffusers

    cfg = cfg or UNetConfig()
    n = len(cfg.block_out_channels)
    down = tuple("AttnDownBlock2D" if i == cfg.attention_level else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if (n - 1 - i) == cfg.attention_level else "UpBlock2D" for i in range(n))
    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.block_out_channels[cfg.attention_level] // 2,
    )


def make_train_scheduler() -> DDPMScheduler:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE)


# Deterministic samplers (the same initial noise gives the same image): DDIM (eta = 0), DPM-Solver++
# (2nd order multistep) and UniPC (bh2). ``bench --suite sampling`` compares them, paired, by FID/KID.
SAMPLERS = ("ddim", "dpm", "unipc")


def make_sample_scheduler(sampler: str = "ddim"):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE)
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=True)
    # The predicted x0 clipped to [-1, 1] like DDIM's clip_sample: "dynamic" thresholding whose threshold is
    # clamped to [1, sample_max_value = 1] is a static clip at 1.
    clip = dict(thresholding=True, sample_max_value=1.0)
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**common, **clip, algorithm_type="dpmsolver++", solver_order=2)
    if sampler == "unipc":
        return UniPCMultistepScheduler(**common, **clip, solver_order=2)
    raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")


def load_unet(path: Path | None = None, device: torch.device | None = None) -> UNet2DModel:
    """The shipped base UNet (diffusers ``save_pretrained`` layout), frozen, in eval mode."""
    path = Path(path or BASE_UNET_DIR)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"No base UNet at {path}: run `python -m dphyper train base` first.")
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(path)
    unet.requires_grad_(False).eval()
    return unet.to(device or get_device())


def draw_noise(x0: torch.Tensor, scheduler: DDPMScheduler, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoising loss's draws for ``x0``: noise (like ``x0``), then one timestep per image.

    They come from ``generator`` on its own device (a CPU generator works for CUDA images) and move to ``x0``'s.
    """
    where = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=where).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                      device=where).to(x0.device)
    return noise, t


def noised_loss(model_fn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, scheduler: DDPMScheduler
                ) -> torch.Tensor:
    """The DDPM epsilon-prediction loss at given draws; ``model_fn(noisy, t)`` returns predicted noise."""
    return F.mse_loss(model_fn(scheduler.add_noise(x0, noise, t), t), noise)


def denoising_loss(model_fn, x0: torch.Tensor, scheduler: DDPMScheduler, generator: torch.Generator | None = None) -> torch.Tensor:
    """The DDPM epsilon-prediction loss with fresh draws (``draw_noise``).

    Used by base training, DP-SGD / PDA-DPMD and the non-private floor alike.
    """
    noise, t = draw_noise(x0, scheduler, generator)
    return noised_loss(model_fn, x0, noise, t, scheduler)


def denoising_backward(model_fn, x0: torch.Tensor, scheduler: DDPMScheduler, generator: torch.Generator | None,
                       piece: int) -> float:
    """``denoising_loss(...).backward()`` in pieces of ``piece`` images; returns the batch's loss.

    The draws are made for the whole batch first, exactly as ``denoising_loss`` makes them, so the
    generator moves the same way and the gradient is the batch's (up to float summation order), while
    memory follows the piece: activations of ``piece`` images at a time.
    """
    noise, t = draw_noise(x0, scheduler, generator)
    b, total = x0.shape[0], 0.0
    for xs, ns, ts in zip(x0.split(piece), noise.split(piece), t.split(piece)):
        part = noised_loss(model_fn, xs, ns, ts, scheduler) * (len(xs) / b)
        part.backward()
        total += part.item()
    return total


@torch.no_grad()
def sample(unet: UNet2DModel, n: int, steps: int = 25, seed: int | None = None, batch_size: int = 256,
           model_fn=None, sampler: str = "ddim", bf16: bool = False) -> torch.Tensor:
    """Samples (n, 1, 32, 32) in [-1, 1] by ``sampler`` in ``steps`` steps. ``model_fn`` overrides ``unet``
    (e.g. with a LoRA). The initial noise depends on ``seed`` only, so two samplers on one seed are paired.
    ``bf16``: the UNet's forward passes under bfloat16 autocast (the solver's arithmetic stays float32)."""
    device = next(unet.parameters()).device
    if bf16:
        inner = model_fn or (lambda x, t: unet(x, t).sample)

        def model_fn(x, t):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return inner(x, t).float()
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    fn = model_fn or (lambda x, t: unet(x, t).sample)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        sched = make_sample_scheduler(sampler)
        sched.set_timesteps(steps)
        x = torch.randn((b, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=gen).to(device)
        for t in sched.timesteps:
            eps = fn(x, t.to(device).expand(b))
            x = sched.step(eps, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------- training

@dataclass
class BaseTrainConfig:
    """`python -m dphyper train base`: DDPM training of the base UNet on public data."""

    out: Path = field(default=BASE_UNET_DIR, metadata={"help": "where the EMA model is exported (save_pretrained layout)"})
    work_dir: Path = field(default=Path("runs/base"), metadata={"help": "resumable training state lives here"})
    minutes: float = field(default=55.0, metadata={"help": "wall-clock budget of this call; rerun to continue"})
    max_steps: int = field(default=20000, metadata={"help": "stop for good after this many optimiser steps"})
    batch_size: int = field(default=64, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate"})
    warmup_steps: int = field(default=200, metadata={"help": "linear learning-rate warm-up steps"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the exported weights"})
    block_out_channels: tuple[int, ...] = field(default=UNetConfig.block_out_channels, metadata={"help": "UNet channels per level"})
    layers_per_block: int = field(default=UNetConfig.layers_per_block, metadata={"help": "ResNet blocks per level"})
    limit_images: int = field(default=0, metadata={"help": "use only the first N public images (0 = all; for tests)"})
    save_every: int = field(default=200, metadata={"help": "write resumable state every N steps"})
    log_every: int = field(default=50, metadata={"help": "record the mean loss every N steps"})
    seed: int = field(default=0, metadata={"help": "seed for the data order and diffusion noise (public data only)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})

    def unet_config(self) -> UNetConfig:
        return UNetConfig(block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


def train_base(cfg: BaseTrainConfig, images: torch.Tensor | None = None) -> dict:
    """Train (or continue training) the base UNet; returns a summary dict."""
    from .data import load_fashion_mnist

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = get_device()
    if images is None:
        images, _ = load_fashion_mnist("train")
    if cfg.limit_images:
        images = images[: cfg.limit_images]
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"

    unet = build_unet(cfg.unet_config()).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, seconds = 0, [], 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, history, seconds = state["step"], state["history"], state.get("seconds", 0.0)
        log.info("resumed base training at step %d", step)
    sched = make_train_scheduler()

    def save():
        total = seconds + (time.time() - t_start)  # training seconds over all resumed calls
        torch.save({"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "step": step, "history": history, "seconds": total,
                    "config": {k: str(v) for k, v in asdict(cfg).items()}}, work / "state.tmp")
        (work / "state.tmp").replace(state_path)

    unet.train()
    t_start = time.time()
    run_losses = []
    while step < cfg.max_steps and (time.time() - t_start) < cfg.minutes * 60:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        x0 = images[idx].to(device)
        x0 = torch.where(torch.rand(x0.shape[0], 1, 1, 1, generator=gen).to(device) < 0.5, x0, x0.flip(-1))
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = denoising_loss(lambda x, t: unet(x, t).sample, x0, sched, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        # EMA warm-up: a short run should not be dominated by the random initialisation.
        _ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        run_losses.append(loss.item())
        if step % cfg.log_every == 0:
            history.append((step, sum(run_losses) / len(run_losses)))
            log.info("base step %d loss %.4f (%.0f s this call)", step, history[-1][1], time.time() - t_start)
            run_losses = []
        if step % cfg.save_every == 0:
            save()
    seconds_total = seconds + (time.time() - t_start)
    save()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out, safe_serialization=True)
    summary = {"steps": step, "final_loss": history[-1][1] if history else None,
               "train_seconds": round(seconds_total, 1), "params": sum(p.numel() for p in unet.parameters())}
    (out / "training.json").write_text(json.dumps({"summary": summary, "history": history}, indent=1))
    return summary


@torch.no_grad()
def vary(unet: UNet2DModel, images: torch.Tensor, strength: float, steps: int = 25, seed: int | None = None,
         batch_size: int = 256) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise ``images`` (n, 1, 32, 32) in [-1, 1] to the DDIM schedule's point at
    ``strength`` (0 = unchanged, 1 = pure noise) and denoise them with ``unet`` from there. Model calls per image:
    the schedule's steps after that point (about ``strength`` x ``steps``)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    device = next(unet.parameters()).device
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed) if seed is not None else gen.seed()
    sched = make_sample_scheduler("ddim")
    sched.set_timesteps(steps)
    start = min(max(int(round((1.0 - strength) * steps)), 0), steps)
    if start == steps:
        return images.clone()
    out = []
    for lo in range(0, len(images), batch_size):
        x0 = images[lo:lo + batch_size]
        x = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), sched.timesteps[start:start + 1]).to(device)
        for t in sched.timesteps[start:]:
            x = sched.step(unet(x, t.to(device).expand(len(x))).sample, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)
