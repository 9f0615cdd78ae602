"""The DP-SGD family's step hooks and memory pieces, below the engine (``dphyper.dpsgd``): the update each
method of the family makes from Opacus' clipped, noised gradient (DP-SGD: the plain step; PDA-DPMD: mixed with
a public gradient, ``pda_step``; DP sparse: masked rows, ``masked_step``), and the physical pieces a Poisson
batch is run in. The engine calls them; the methods' audits run the same functions.

Why here and not in each method's file: a run is chunked across processes (a ZeroGPU call may run in another
one), so the engine's state (``dpsgd.TrainState``) carries data that picks the step (a row mask, a public
pool), never a callable; the steps must then be importable by the engine without importing a method. The three
methods (``methods/dpsgd.py``, ``pda_dpmd.py``, ``sparse.py``) own their configs, defaults, audits and words."""

from __future__ import annotations

import math

import torch

from .privacy import register_mechanism

# Poisson-subsampled Gaussian steps: not one Gaussian on the whole set, so the PLD accountant composes them.
DPSGD_EVENT = register_mechanism("dpsgd_poisson_gaussian", exact_gaussian=False,
                                 words=lambda e: f"{e.steps} steps, q = {e.sample_rate:.3g}")

def public_gradient(model, params: list[torch.Tensor], public: torch.Tensor, batch: int, idx_gen: torch.Generator,
                    loss_fn) -> list[torch.Tensor]:
    """PDA-DPMD's public gradient: ``loss_fn(model, public batch)`` (a mean over the batch) differentiated with Opacus'
    per-sample hooks off, so nothing of it enters the private ``grad_sample`` (and it never writes
    ``.grad``: ``autograd.grad`` returns it). The audit runs this same function."""
    idx = torch.randint(0, len(public), (min(batch, len(public)),), generator=idx_gen)
    device = params[0].device
    if hasattr(model, "disable_hooks"):
        model.disable_hooks()
    try:
        # The batch's mean-loss gradient, in pieces of ``draw_piece`` images (memory follows the piece, not the
        # public batch: a 64-image public pass held 0.75 GB of activations at once); each weighted by its share.
        grads = [torch.zeros_like(p) for p in params]
        for piece in idx.split(draw_piece(device)):
            part = torch.autograd.grad(loss_fn(model, public[piece].to(device)), params)
            for g, pg in zip(grads, part):
                g.add_(pg, alpha=len(piece) / len(idx))
    finally:
        if hasattr(model, "enable_hooks"):
            model.enable_hooks()
    return [g.detach() for g in grads]


def pda_step(opt, params: list[torch.Tensor], public_grads: list[torch.Tensor], alpha: float, *,
             private: bool) -> None:
    """One PDA-DPMD update (the shipped step; the audit runs this same function).

    Mirror descent with the public loss as mirror map, to first order: the update direction is
    alpha * (noisy private gradient) + (1 - alpha) * (public gradient). Opacus' ``pre_step``
    clips, adds the noise and counts the step first; mixing in a gradient of *public* data
    afterwards is post-processing of that step's release.
    """
    if not private or opt.pre_step():
        for p, g in zip(params, public_grads):
            p.grad = alpha * (p.grad if p.grad is not None else torch.zeros_like(p)) + (1 - alpha) * g
        (opt.original_optimizer if private else opt).step()


def masked_step(opt, params: list[torch.Tensor], masks: list[torch.Tensor], *, private: bool) -> None:
    """One sparse DP-SGD update (the shipped step; tests/test_sparse.py runs it under Opacus with noise).

    Each parameter trains only its rows (dim 0) where ``mask`` is true. Before Opacus clips, the
    per-sample gradients are zeroed outside the mask, so the clip norm C bounds exactly the part of
    each example's gradient that is used; ``pre_step`` then clips, adds the noise (to every
    coordinate) and counts the step. Zeroing the noisy gradient outside the mask afterwards is
    post-processing of that step's release, and keeps Adam from ever moving an unselected row.
    """
    views = _mask_views(params, masks)
    if private:
        _mask_grad_samples(params, views)
    if not private or opt.pre_step():
        for p, v in zip(params, views):
            if p.grad is not None:
                p.grad.mul_(v)
        (opt.original_optimizer if private else opt).step()


def _mask_views(params: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    return [m.view(-1, *([1] * (p.ndim - 1))).to(p.dtype) for p, m in zip(params, masks)]


def _mask_grad_samples(params: list[torch.Tensor], views: list[torch.Tensor]) -> None:
    for p, v in zip(params, views):
        gs = getattr(p, "grad_sample", None)
        if gs is not None:
            gs = torch.cat(gs) if isinstance(gs, list) else gs
            p.grad_sample = gs * v.unsqueeze(0)


# Physical batches: a Poisson batch larger than this is run through the UNet in pieces, so memory
# follows this size and not the expected batch size (full-batch DP-SGD at n = 1,000 would otherwise
# hold 1,000 images' activations and per-sample gradients at once). Not a hyperparameter: the
# update is the same sum of clipped per-sample gradients plus one noise draw (what Opacus'
# BatchMemoryManager does), and the loss's draws (noise, timesteps) are made per DRAW_PIECE images
# whatever the physical batch, so a run's random stream, and hence its result up to float summation
# order, does not depend on it. DRAW_PIECE is part of a run's identity: changing it changes every
# DP-SGD-family cell's draws (16 on the CPU is what every stored cell ran with).
DRAW_PIECE = {"cpu": 16, "cuda": 256}
PHYSICAL_BATCH = {"cpu": 16, "cuda": 256}  # CPU: 1.19 GB vs 1.66 GB peak at batch 64, ~10% slower (BENCHMARKS)


def draw_piece(device: torch.device, wanted: int | None = None) -> int:
    """Images per draw of the loss's noise and timesteps: ``wanted`` (a cost probe's own setting: it changes
    the draws, so no benchmark cell sets it) or DRAW_PIECE."""
    return wanted or DRAW_PIECE.get(torch.device(device).type, 16)


def physical_batch(device: torch.device, wanted: int | None = None, piece: int | None = None) -> int:
    """Images per forward/backward: ``wanted`` (a method's own memory setting) or PHYSICAL_BATCH, at most
    ``draw_piece``."""
    return min(wanted or PHYSICAL_BATCH.get(torch.device(device).type, 16), draw_piece(device, piece))


def accumulate_physical(opt, params: list[torch.Tensor], masks: list[torch.Tensor] | None) -> None:
    """A physical batch that is not the last piece of its Poisson batch (private runs): Opacus clips its
    per-sample gradients (masked first, like ``masked_step``) and adds them to the step's sum; no noise,
    no parameter update, no accountant step. Its per-sample gradients are then freed."""
    if masks is not None:
        _mask_grad_samples(params, _mask_views(params, masks))
    opt.signal_skip_step(do_skip=True)
    if opt.pre_step():
        raise RuntimeError("Opacus stepped on a physical batch that was to be accumulated")
    opt.zero_grad(set_to_none=True)  # after a skipped step Opacus keeps the clipped sum (summed_grad)


def pda_alpha(step: int, total_steps: int) -> float:
    """The authors' schedule: weight of the private gradient, cos(pi t / 2T), from 1 down to 0."""
    return math.cos(math.pi * step / (2 * total_steps))


def average_grad_samples(params: list[torch.Tensor], k: int) -> None:
    """Augmentation multiplicity (DPDM): each image's k consecutive rows (its k noise and timestep draws) become
    one per-sample gradient, their mean, before Opacus clips. The mean of k gradients of one image's losses is the
    gradient of that image's averaged loss, so clipping still bounds each image's contribution by C: the
    sensitivity, the noise and the accounting are those of k = 1."""
    for p in params:
        gs = p.grad_sample
        if not isinstance(gs, torch.Tensor):  # a list is Opacus' accumulation over batches: rows of other steps
            raise RuntimeError("per-sample gradients of several batches cannot be merged by image")
        if gs.shape[0] % k:
            raise RuntimeError(f"{gs.shape[0]} per-sample rows are not whole images of {k} draws")
        p.grad_sample = gs.view(gs.shape[0] // k, k, *gs.shape[1:]).mean(1)


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float, step: int) -> None:
    """One step of the weights' moving average, with diffusers' warm-up (decay min(d, (1 + t) / (10 + t))) so that
    a run of a few hundred steps is not dominated by the initial weights. A function of the noisy iterates only."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema, params):
        e.mul_(d).add_(p.detach(), alpha=1 - d)
