"""The free fit that the one-shot methods share: weight a public pool to match a release, then train a LoRA on it.

Two methods release one noisy statistic of the private images and then decode it without touching the
private data again: slicing (N padded random projections) and DP-MERF (one mean of random Fourier
features). Both decode the same way, and this module is that way, so neither carries a copy:

1. **Weights on the simplex.** The release defines a quadratic in the weights w of a fixed public pool,
   w^T K w - 2 w^T c (+ a constant), which ``fit_simplex`` minimises over the probability simplex by
   accelerated projected gradient (FISTA), from a starting point (the uniform pool) that is also the
   centre of an optional pull ``reg``.
2. **The generator.** ``train_lora_on`` trains the project's LoRA of the base UNet by the plain
   denoising loss on public images drawn with w: the diffusion model's own way of fitting a
   distribution, instead of differentiating through a 25-step sampler on a CPU.

Nothing here sees private data: K and c are functions of a release and public images, so everything
in this module is post-processing (no privacy cost, any number of times).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch

from .errors import Cancelled

FIT_PIECE = 8  # images per forward/backward of the LoRA fit (memory; the batch and its draws are unchanged)


def check_cancel(cancel, label: str) -> None:
    """Cancel between pieces of work: nothing computed so far leaves the server (the release, if made,
    is dropped with the run)."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{label} cancelled; nothing was released.")


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the probability simplex (sort-based; Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    ind = torch.arange(1, len(v) + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / ind > 0).max())
    return (v - css[rho] / (rho + 1)).clamp_min(0)


def fit_simplex(K: torch.Tensor, c: torch.Tensor, start: torch.Tensor, *, reg: float, iters: int,
                cancel=None, label: str = "The fit") -> torch.Tensor:
    """argmin over the simplex of w^T K w - 2 w^T c + reg C ||w - start||^2 (C components), by FISTA.

    ``start`` is the first iterate and the centre of the pull, so the fit moves away from it only as far
    as the release asks. The step uses the curvature of K on the simplex's tangent space (K's constant
    part does not move a sum-to-one w), found by power iteration."""
    C = len(c)
    pull = reg * C
    g = torch.Generator().manual_seed(0)
    x = torch.randn(C, generator=g, dtype=torch.float64)
    for _ in range(50):
        x = x - x.mean()
        x = K @ x
        x = x / x.norm().clamp_min(1e-300)
    x = x - x.mean()
    lip = 2 * (float(x @ K @ x) / max(float(x @ x), 1e-300) + pull) * 1.05 + 1e-12
    w = y = start.clone()
    t = 1.0
    for it in range(iters):
        if it % 50 == 0:
            check_cancel(cancel, label)
        grad = 2 * (K @ y - c) + 2 * pull * (y - start)
        w_next = project_simplex(y - grad / lip)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = w_next + ((t - 1) / t_next) * (w_next - w)
        w, t = w_next, t_next
    return w


def train_lora_on(weights: torch.Tensor, images: torch.Tensor, models, gen: torch.Generator, *, steps: int,
                  lr: float, batch: int, label: str, progress: Callable[[dict], None] | None = None,
                  cancel=None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The generator's fit: the LoRA trained by the denoising loss on public ``images`` drawn with ``weights``.

    The LoRA starts from the hypernetwork's public A and B = 0, so the same ``gen`` seed gives the same LoRA."""
    from .diffusion import denoising_backward, make_train_scheduler
    from .lora import lora_parameter_names

    # This run's own copy of the served UNet (which carries a zero-effect LoRA and is never written).
    unet = copy.deepcopy(models.unet).requires_grad_(False)
    named = dict(unet.named_parameters())
    h = models.hypernet
    with torch.no_grad():
        for n in lora_parameter_names(unet):
            named[n].zero_()
        for n, a in zip(h.a_names, h.lora_a):
            named[n].copy_(a)
    names = lora_parameter_names(unet)
    params = [named[n].requires_grad_(True) for n in names]
    opt = torch.optim.Adam(params, lr=lr)
    sched = make_train_scheduler()
    device = next(unet.parameters()).device
    unet.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        check_cancel(cancel, label)
        idx = torch.multinomial(weights, batch, replacement=True, generator=gen)
        opt.zero_grad(set_to_none=True)
        losses.append(denoising_backward(lambda x, t: unet(x, t).sample, images[idx].to(device), sched, gen,
                                         FIT_PIECE))
        opt.step()
        if progress is not None:
            per_step = (time.perf_counter() - t0) / (step + 1)
            progress({"stage": "fit", "step": step + 1, "total": steps, "loss": losses[-1],
                      "eta_seconds": per_step * (steps - step - 1),
                      "desc": f"{label}: fitting the LoRA to the release, step {step + 1} / {steps} "
                              "(post-processing: no further ε)"})
    lora = {n: p.detach().clone() for n, p in zip(names, params)}
    return lora, losses


def class_shares(weights: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """The fitted weight of each public class (what the report says the fit moved towards)."""
    return torch.zeros(classes, dtype=torch.float64).index_add_(0, labels, weights.double())


def top_classes(weights: torch.Tensor, labels: torch.Tensor, k: int = 3) -> tuple[dict[str, float], str, float]:
    """The report's ``public_class_shares`` (the k public classes with the most fitted weight, largest first,
    rounded), the top class's name and its exact share (what the report's note is decided on)."""
    from .data import CLASS_NAMES

    share = class_shares(weights, labels)
    top = torch.argsort(share, descending=True)[:k]
    return ({CLASS_NAMES[int(i)]: round(float(share[i]), 3) for i in top}, CLASS_NAMES[int(top[0])],
            float(share[top[0]]))


def check_fit_settings(cfg, pool_limit: int, positive: tuple[str, ...]) -> None:
    """The settings every free fit shares (``pool``, ``batch``, ``fit_iters``, ``fit_steps``, ``reg``) and the
    fields named in ``positive``: refused with a clear message (a config's ``__post_init__`` calls this)."""
    if cfg.fit_iters < 0 or cfg.fit_steps < 0:
        raise ValueError("fit_iters and fit_steps must be >= 0")
    if not 1 <= cfg.pool <= pool_limit:
        raise ValueError(f"pool must be in [1, {pool_limit}] (the public pool), got {cfg.pool}")
    if cfg.batch < 1:
        raise ValueError("batch must be >= 1")
    for name in positive:
        v = getattr(cfg, name)
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number > 0, got {v}")
    if not (cfg.reg >= 0 and math.isfinite(cfg.reg)):
        raise ValueError(f"reg must be a finite number >= 0, got {cfg.reg}")


def stage(progress, desc: str, total: int) -> None:
    """A progress report for a stage that is starting (no steps yet): what it does, in words."""
    if progress is not None:
        progress({"stage": "prepare", "step": 0, "total": total, "eta_seconds": None, "desc": desc})
