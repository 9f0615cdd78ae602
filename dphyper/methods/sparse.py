"""sparse: DP sparse fine-tuning of the base UNet (after SPARTA, Makni et al. 2025, arXiv 2503.12822).

Instead of a fixed set of trainable weights (the LoRA), choose a few *rows* of the base UNet's own
weights with the private data, privately, and fine-tune only those rows with DP-SGD.

**Groups.** A group is one output unit of a layer: row r of a ``Conv2d`` or ``Linear`` weight
(one output channel or feature, with its bias entry r) or channel c of a ``GroupNorm`` (its scale
and shift). Every Conv2d, Linear and GroupNorm of the base UNet is a candidate: 5,537 groups over
1.1 M weights in the default profile. Opacus computes per-example gradients of all three layer
types (``opacus.grad_sample``: conv, linear, group_norm); the UNet has no other layer with weights,
so nothing is left out.

**Phase 1, the selection (one Gaussian release).** For each private image x_i, ``draws`` (timestep,
noise) pairs give the per-example gradient g_i of the mean denoising loss at the base model
(Opacus' per-sample hooks). Its score vector s_i in R^G holds, per group, the RMS of g_i over the
group's weights (the L2 norm over sqrt(group size), so that a 576-weight conv row and a 2-weight
norm channel compete on equal terms). Each s_i is **scaled to unit L2 norm in code** (a zero or
non-finite vector becomes 0), and one Gaussian mechanism releases S~ = sum_i s_i / ||s_i|| +
N(0, sigma_1^2 I_G). The ``groups`` largest entries of S~ are the mask (post-processing).

**Phase 2, masked DP-SGD.** DP-SGD (Opacus, as ``methods/dpsgd.py``: Poisson sampling at rate
q = 1 / ceil(n / B), per-example clipping to C, Gaussian noise sigma_2 C per step, OS-seeded draws)
on the tensors that hold a selected row; per-example gradients are zeroed outside the mask before
clipping and the noisy gradient after (``dpsgd.masked_step``), so only selected rows ever move.

**Privacy (add/remove-one, like the rest of the app).** Phase 1: s_i is a function of x_i and its
own (timestep, noise) draws only (per-example gradients at the fixed, public base model; the UNet
has no cross-sample layer: group norm and attention act within a sample, dropout is 0; a test checks
that an image's score does not change with the rest of its batch). The draws come from one OS-seeded
generator, so adding an image shifts which draws the others get; but the draws are i.i.d. and
independent of the data, so couple them: give every common image the same draws under both
datasets. For fixed draws the release is a Gaussian mechanism whose sum moves by at most one unit
vector (L2 sensitivity 1); by joint convexity of the hockey-stick divergence the mixture over the
draws is dominated by the same Gaussian pair, i.e. it is (1/sigma_1)-Gaussian DP. Scores are computed
one private image per pass (``SCORE_BATCH``), so even at rounding level an image's score does not depend on
the others (``tests/test_sparse.py`` checks it bit for bit; before issue 37 batches of 8 did, by about 5e-6).
Phase 2's per-example gradients are Opacus' batched ones (the same rounding caveat as any DP-SGD).
Phase 2 adds or removes one example's clipped gradient in each
Poisson-sampled step of phase 2 (the steps are adaptive, but each is a subsampled Gaussian mechanism
given the past, the mask included). The run is the adaptive composition of one Gaussian mechanism
with multiplier sigma_1 and T Poisson-subsampled Gaussian mechanisms (q, sigma_2): the events
``gaussian_row_scores`` and ``dpsgd_poisson_gaussian`` that the ledger composes with dp_accounting's
PLD accountant. Calibration: ``split`` is the selection's share, a public setting: sigma_1 makes
the selection alone (split * epsilon, delta)-DP (analytic Gaussian), then sigma_2 is the smallest
multiplier (bisection, relative 1e-3, rounded up) for which the PLD accountant says the composition
of both phases is (epsilon, delta)-DP: the same accountant the ledger uses, so the claim is what the
ledger computes. Tests check it against Opacus' RDP accountant (an independent upper bound).
n is public in phase 2's sample rate, exactly as for DP-SGD (Opacus' convention). Sampling with the
trained delta is post-processing. The controls ``mask=random`` (a seeded random mask of the same
size) and ``mask=public`` (scores of public Fashion-MNIST train images, no noise) read no private
data before DP-SGD, so the whole budget goes to DP-SGD.

**Where it runs:** the selection and DP-SGD on ``models.device``; on a ZeroGPU Space the selection is
one GPU call (no progress or Cancel inside it) and DP-SGD runs in DP-SGD's short chunks.

**What is released:** the sparse delta (rows and their new minus base values; ``sparse_delta.safetensors``,
loaded with ``load_sparse_delta_into``), the samples, and a report of DP outputs and public settings
(which groups were chosen, per block, is post-processing of S~).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..adapters import delta_params, load_sparse_delta_into, save_sparse_delta  # noqa: F401  (its format)
from ..unet_rows import Layer, group_count, layers_of, masks_from_groups  # noqa: F401  (Layer: the tests')
from ..dpsgd import DPSGDConfig, TrainState, schedule, train_dpsgd, tuned_defaults
from ..dpsgd import resolve as resolve_dpsgd
from ..errors import Cancelled
from ..gpu import ZERO_GPU, gpu
from ..dpsgd_steps import DPSGD_EVENT
from ..privacy import (PrivacyEvent, _pld_epsilon, calibrate_gaussian, check_epsilon_delta, clip_embeddings,
                       private_generator, register_mechanism)
from .base import BROKEN_VARIANTS, Audit, Method, MethodResult, StepsBudget, shipped_defaults

# One Gaussian release of unit-norm row scores on the whole set (sensitivity 1): exact GDP composition.
ROW_SCORES = register_mechanism("gaussian_row_scores", exact_gaussian=True,
                                words=lambda e: "selection: one Gaussian release of row scores")

MASKS = ("private", "random", "public")
# DP-SGD's settings on the selected rows, per size regime (DP-SGD's phase treats n as public, as Opacus
# does, so choosing by n costs nothing; the selection does not need n). n <= 316: stage 1 of the public
# sweep on public-coats-100 at epsilon = 1 (lr x epochs; docs/BENCHMARKS.md). Larger n: stage 1 on
# public-mixed-1000 (10-epoch runs of lr 3e-4 / 1e-3 / 3e-3: 67.5 / 93.0 / 158.0; halving extended only 3e-4,
# whose 50-epoch run gave 75.8); its stage 2 (mask controls, groups, split, clip) is still to run.
TUNED = (
    {"n_max": 316, "tuned_on": "public-coats-100", "lr": 3e-3, "max_grad_norm": 0.01, "epochs": 50.0,
     "batch_size": 64},
    {"n_max": None, "tuned_on": "public-mixed-1000", "lr": 3e-4, "max_grad_norm": 0.01, "epochs": 10.0,
     "batch_size": 64},
)
# Private images per pass of the selection's scoring (times ``draws`` rows): one, so an image's scores come from
# that image and its own draws alone, bit for bit the same whoever else is in the set (issue 37: with several
# images per pass one image moved the batch boundaries and the others' scores in their last bits).
SCORE_BATCH = 1
# Images per forward/backward of the masked DP-SGD (memory only: the draws and the update are the same; see
# dpsgd.DRAW_PIECE). The masked tensors are whole conv weights, so their per-sample gradients cost more than a
# LoRA's: at 16 a run peaked 1.56-1.66 GB in the app's process, at 8 1.46 GB (issue 37), 1.27x the time per step.
PHYSICAL = {"cpu": 8}


@dataclass
class SparseConfig(DPSGDConfig):
    """`python -m dphyper run sparse`: privately chosen rows of the base UNet, then masked DP-SGD on them."""

    out: Path = field(default=Path("out-sparse"), metadata={"help": "output folder (sparse_delta.safetensors, samples/, grid.png, report.json)"})
    groups: int = field(default=256, metadata={"help": "rows (output channels of conv / linear / group-norm layers) to train"})
    split: float = field(default=0.2, metadata={"help": "share of epsilon for the selection (its own epsilon at delta); DP-SGD gets the rest under one accountant"})
    draws: int = field(default=4, metadata={"help": "(timestep, noise) draws per image for the selection scores"})
    mask: str = field(default="private", metadata={"help": "private (the method), or the controls random / public (no selection cost)"})
    public_pool: int = field(default=256, metadata={"help": "mask=public: Fashion-MNIST train images that score the rows"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        if not (0 < self.split < 0.9):  # NaN fails too
            raise ValueError(f"split must be in (0, 0.9), got {self.split}")
        if self.groups < 1 or self.draws < 1 or self.public_pool < 1:
            raise ValueError("groups, draws and public_pool must be >= 1")


def resolve(cfg: SparseConfig, n: int) -> SparseConfig:
    """Fill every 0 DP-SGD setting with the method's default for n images (explicit values win)."""
    return resolve_dpsgd(cfg, n, TUNED)


# ---------------------------------------------------------------- groups


# ---------------------------------------------------------------- phase 1: scores and their release


def example_scores(images: torch.Tensor, *, draws: int, device: torch.device, generator: torch.Generator,
                   progress=None, cancel: threading.Event | None = None, stage: str = "") -> torch.Tensor:
    """(n, G) per-example group scores at the base model: the RMS over each group of the example's
    gradient of the denoising loss, averaged over ``draws`` (timestep, noise) pairs (Opacus hooks)."""
    from opacus import GradSampleModule

    from ..diffusion import denoising_loss, load_unet, make_train_scheduler

    unet = load_unet(device=device).train()  # Opacus captures activations in train mode (no dropout here)
    layers = layers_of(unet)
    for layer in layers:
        for p in layer.params:
            unet.get_parameter(p).requires_grad_(True)
    sched = make_train_scheduler()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(unet, batch_first=True, loss_reduction="mean")
    params = {name: gsm._module.get_parameter(name) for layer in layers for name in layer.params}
    batches = math.ceil(len(images) / SCORE_BATCH)
    t0 = time.perf_counter()
    try:
        for b in range(batches):
            if cancel is not None and cancel.is_set():
                raise Cancelled("run cancelled; nothing was released.")
            x = images[b * SCORE_BATCH:(b + 1) * SCORE_BATCH].to(device)
            k = len(x)
            rows = x.repeat_interleave(draws, 0)  # example j's draws are rows j*draws ... j*draws + draws - 1
            loss = denoising_loss(lambda z, t: gsm(z, t).sample, rows, sched, generator)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                loss.backward()
            sq = []
            for layer in layers:
                acc = torch.zeros(k, layer.rows, device=device)
                for name in layer.params:
                    p = params[name]
                    gs = torch.cat(p.grad_sample) if isinstance(p.grad_sample, list) else p.grad_sample
                    g = gs.reshape(k, draws, layer.rows, -1).mean(1)  # the gradient of the draws' mean loss
                    acc += g.pow(2).sum(-1)
                    p.grad_sample, p.grad = None, None
                sq.append((acc / layer.row_size).sqrt())
            out.append(torch.cat(sq, 1).double().cpu())
            if progress is not None:
                el = time.perf_counter() - t0
                left = el / (b + 1) * (batches - b - 1)
                # The ETA is this stage's only: said in the words (eta_seconds None: the app adds no second ETA).
                progress({"stage": "select", "step": b + 1, "total": batches, "epsilon_spent": 0.0, "eta_seconds": None,
                          "desc": f"{stage}scoring the UNet's rows, batch {b + 1} / {batches}, about {left:.0f} s "
                                  "left in this stage"})
    finally:
        gsm._close()
    return torch.cat(out)


def _scores_duration(images, draws, device) -> int:
    return 60 + len(images) * draws // 20  # ZeroGPU seconds: loading, then ~20 example-gradients a second at least


@gpu(duration=_scores_duration)
def _scores_gpu_call(images: torch.Tensor, draws: int, device: torch.device) -> torch.Tensor:
    """The selection's scores as one GPU call (ZeroGPU: another process, no progress or Cancel inside)."""
    return example_scores(images, draws=draws, device=device, generator=private_generator(device))


def unit_rows(scores: torch.Tensor) -> torch.Tensor:
    """Each example's score vector scaled to L2 norm 1 (enforced here: the release's sensitivity).

    A zero vector stays 0; a vector with a NaN or infinite entry becomes 0 (left alone it would make
    the noisy sum NaN and reveal its presence); so does one whose float64 norm overflows (entries above
    ~1e154, which float32 scores cannot reach). Every row ends with norm <= 1: ``clip_embeddings``
    guards the rounding.
    """
    s = scores.to(torch.float64)
    s = torch.where(torch.isfinite(s).all(dim=1, keepdim=True), s, torch.zeros_like(s))
    norms = s.norm(dim=1, keepdim=True)
    s = torch.where(norms > 0, s / norms.clamp_min(1e-300), torch.zeros_like(s))
    return clip_embeddings(s, max_norm=1.0)


@dataclass(frozen=True)
class ScoreRelease:
    """The DP output of phase 1: the noisy score sum (safe to show and keep) and its event."""

    scores: torch.Tensor  # (G,) float64
    event: PrivacyEvent


def release_scores(scores: torch.Tensor, *, epsilon: float, delta: float, noise_multiplier: float,
                   generator: torch.Generator | None = None) -> ScoreRelease:
    """Phase 1's release: sum of the unit-norm score vectors + N(0, noise_multiplier^2 I) (sensitivity 1).

    ``scores`` (n, G) is private; ``generator`` is for tests only (the private path draws OS-seeded noise).
    ``epsilon`` is what this release alone spends at ``delta`` with this multiplier (the event's label).
    """
    total = unit_rows(scores).sum(0)
    if noise_multiplier > 0:
        gen = generator if generator is not None else private_generator()
        total = total + torch.randn(total.shape[0], generator=gen, dtype=torch.float64) * noise_multiplier
    event = PrivacyEvent(mechanism=ROW_SCORES, epsilon=epsilon, delta=delta,
                         noise_multiplier=float(noise_multiplier), sensitivity=1.0,
                         accountant="analytic_gaussian" if noise_multiplier > 0 else "none (non-private)")
    return ScoreRelease(scores=total, event=event)


def top_groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(scores, min(k, scores.shape[0])).indices.sort().values


# ---------------------------------------------------------------- calibration of both phases


def _events(s1: float | None, q: float, s2: float, steps: int, delta: float) -> list[PrivacyEvent]:
    ev = [PrivacyEvent(DPSGD_EVENT, math.nan, delta, s2, 1.0, sample_rate=q, steps=steps)]
    if s1 is not None:
        ev.insert(0, PrivacyEvent(ROW_SCORES, math.nan, delta, s1, 1.0))
    return ev


def composed_epsilon(s1: float | None, q: float, s2: float, steps: int, delta: float) -> float:
    """epsilon at delta of the selection (multiplier s1, or none) then ``steps`` DP-SGD steps (q, s2): the ledger's PLD."""
    if steps == 0:
        return 0.0 if s1 is None else _pld_epsilon(_events(s1, q, 1.0, 1, delta)[:1], delta)
    return _pld_epsilon(_events(s1, q, s2, steps, delta), delta)


def calibrate(epsilon: float, delta: float, split: float | None, q: float, steps: int) -> tuple[float | None, float]:
    """(sigma_1, sigma_2): the selection alone at (split * epsilon, delta) (None when there is none), then the
    smallest DP-SGD multiplier whose composition with it is (epsilon, delta) under the PLD accountant."""
    check_epsilon_delta(epsilon, delta)
    s1 = calibrate_gaussian(epsilon=split * epsilon, delta=delta) if split else None

    def ok(s2: float) -> bool:
        return composed_epsilon(s1, q, s2, steps, delta) <= epsilon

    hi = 0.5
    while not ok(hi):
        hi *= 2.0
        if hi > 1e4:
            raise ValueError(f"no DP-SGD noise reaches epsilon = {epsilon:g}: lower the selection's split")
    lo = hi / 2.0
    while ok(lo) and lo > 1e-3:  # below 1e-3 (epsilon in the thousands) hi stays safe, if not minimal
        lo /= 2.0
    while hi / lo > 1.001:  # ok(hi) holds throughout: the returned multiplier is rounded up
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return s1, hi


# ---------------------------------------------------------------- the delta on the base UNet


# ---------------------------------------------------------------- the method


def _public_mask_scores(cfg: SparseConfig, device: torch.device, progress, cancel) -> torch.Tensor:
    from ..public_data import public_pool

    gen = torch.Generator(device=device).manual_seed(0)  # public data: a public seed
    return unit_rows(example_scores(public_pool(cfg.public_pool), draws=cfg.draws, device=device, generator=gen,
                                    progress=progress, cancel=cancel, stage="public mask: ")).sum(0)


def train(images: torch.Tensor, cfg: SparseConfig, models, *, progress=None, cancel=None) -> MethodResult:
    from ..diffusion import load_unet

    n = len(images)
    cfg = resolve(cfg, n)
    device = models.device
    private = math.isfinite(cfg.epsilon)
    timings: dict[str, float] = {}
    q, planned, steps = schedule(n, cfg)
    selects = cfg.mask == "private"
    s1, s2 = (calibrate(cfg.epsilon, cfg.delta, cfg.split if selects else None, q, steps) if private
              else (0.0 if selects else None, 0.0))
    base = load_unet(device=torch.device("cpu"))  # the public base weights: the groups, then the delta
    layers = layers_of(base)
    G = group_count(layers)
    t = time.perf_counter()
    events: list[PrivacyEvent] = []
    if selects:
        scores = (_scores_gpu_call(images, cfg.draws, device) if ZERO_GPU else
                  example_scores(images, draws=cfg.draws, device=device, generator=private_generator(device),
                                 progress=progress, cancel=cancel, stage="stage 1 of 2 (choosing rows, then DP-SGD): "))
        rel = release_scores(
            scores,
            epsilon=cfg.split * cfg.epsilon if private else math.inf, delta=cfg.delta, noise_multiplier=s1)
        if cancel is not None and cancel.is_set():
            raise Cancelled("run cancelled; nothing was released.")
        events.append(rel.event)
        chosen = top_groups(rel.scores, cfg.groups)
    elif cfg.mask == "public":
        chosen = top_groups(_public_mask_scores(cfg, device, progress, cancel), cfg.groups)
    else:
        chosen = torch.randperm(G, generator=torch.Generator().manual_seed(0))[:cfg.groups].sort().values
    timings["select"] = time.perf_counter() - t
    mask = masks_from_groups(layers, chosen)

    last = {"at": -1.0, "eps": 0.0}

    def dpsgd_progress(p: dict) -> None:  # epsilon spent by both phases so far (PLD, at most every 2 s)
        if progress is None:
            return
        if private and (time.perf_counter() - last["at"] > 2.0 or p["step"] == p["total"]):
            last.update(at=time.perf_counter(), eps=composed_epsilon(s1 if selects else None, q, s2, p["step"], cfg.delta))
        progress({**p, "epsilon_spent": last["eps"] if private else math.inf})

    state = TrainState(cfg=replace(cfg, samples=0), q=q, planned=planned, total_steps=steps, sigma=s2, mask=mask,
                       physical=PHYSICAL.get(torch.device(device).type))
    res = train_dpsgd(images, replace(cfg, samples=0), progress=dpsgd_progress, cancel=cancel, device=device,
                      state=state)
    timings["train"] = res.timings.get("train", 0.0)
    # The DP-SGD event's own epsilon (a label: the ledger composes from sigma, q and steps) from the same PLD
    # accountant that calibrated sigma_2, not Opacus' PRV (which reads about 1% higher for the same steps).
    alone = composed_epsilon(None, q, s2, res.event.steps, cfg.delta) if private else math.inf
    events.append(replace(res.event, epsilon=alone, accountant="pld (dp_accounting)" if private else res.event.accountant))
    delta = {}
    for name, m in mask.items():
        rows = m.nonzero().flatten()
        delta[f"{name}.rows"] = rows
        delta[f"{name}.delta"] = (res.lora[name].cpu() - base.get_parameter(name).detach())[rows]
    trained = sum(int(v.numel()) for k, v in delta.items() if k.endswith(".delta"))
    total_eps = composed_epsilon(s1 if selects else None, q, s2, res.event.steps, cfg.delta) if private else math.inf
    per_block: dict[str, int] = {}
    for layer in layers:
        if layer.params[0] in mask:
            k = int(mask[layer.params[0]].sum())
            block = ".".join(layer.module.split(".")[:2]) if layer.module.split(".")[0] in ("down_blocks", "up_blocks") \
                else layer.module.split(".")[0]
            per_block[block] = per_block.get(block, 0) + k
    report = {k: v for k, v in res.report.items() if k not in ("samples", "sampling_steps", "sampling_seed")}
    report.update({
        "method": "sparse",
        "epsilon": cfg.epsilon if private else "inf",
        "epsilon_spent": total_eps if private else "inf",
        "epsilon_selection": (cfg.split * cfg.epsilon if selects else 0.0) if private else "inf",
        "epsilon_dpsgd_alone": alone if private else "inf",
        "noise_multiplier_selection": s1 if selects else None,
        "noise_multiplier": s2,
        "accountant": "PLD (dp_accounting) over both phases" if private else "none (non-private)",
        "mask": cfg.mask,
        "groups": int(len(chosen)),
        "groups_total": G,
        "group": "one output row of a Conv2d / Linear weight (with its bias) or one GroupNorm channel",
        "trained_weights": trained,
        "groups_per_block": per_block,
        "split": cfg.split if selects else 0.0,
        "draws": cfg.draws,
        "mechanism": ("gaussian_row_scores (unit-norm per-example row scores, sensitivity 1) then "
                      "dpsgd_poisson_gaussian on the selected rows" if selects else
                      f"dpsgd_poisson_gaussian on a {cfg.mask} mask (no selection cost)"),
    })
    return MethodResult(adapter=delta, report=report, events=tuple(events), timings=timings, losses=res.losses,
                        adapter_format="sparse-delta")


def cost(hp: dict, n: int) -> int:
    """Example-gradient evaluations: the selection's scores (or the public pool's) plus DP-SGD's steps."""
    d = {**tuned_defaults(n, TUNED), "draws": 4, "mask": "private", "public_pool": 256, **hp}
    batch = min(d["batch_size"], n)
    q = 1.0 / math.ceil(n / batch)
    steps = math.ceil(d["epochs"] / q)
    score = {"private": n, "public": d["public_pool"], "random": 0}[d["mask"]] * d["draws"]
    return int(score + steps * n * q * d.get("multiplicity", 1))


def identity() -> dict:
    d = SparseConfig()
    # "defaults": every other shipped setting (not in sweep stamps, which hold the whole config already)
    return {"tuned": [dict(r) for r in TUNED], "groups": d.groups, "split": d.split, "draws": d.draws,
            "group": "conv/linear rows + group-norm channels, RMS score, unit-norm",
            "defaults": shipped_defaults(SparseConfig, exclude=("epochs", "batch_size", "lr", "max_grad_norm"))}


def _stage2(n: int) -> list[dict]:
    """Around stage 1's best: sparsity, the budget split, the clip norm, and the two mask controls."""
    return [{"mask": "random"}, {"mask": "public"}, {"groups": 64}, {"groups": 1024}, {"split": 0.4},
            {"split": 0.1}, {"max_grad_norm": 1.0}, {"multiplicity": 4}, {"ema": 0.999}]


SWEEP = {"stage1": [{"lr": lr, "epochs": ep} for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2) for ep in (10.0, 50.0)],
         "stage2": _stage2}


def audit_scores(cfg, member: np.ndarray, groups: int = 32, k: int = 4) -> np.ndarray:
    """The audit of ``python -m dphyper audit --method sparse``: the selection (``release_scores`` +
    ``top_groups``, as shipped: unit-norm score vectors, their Gaussian sum, then the top k) on 32
    groups: the other records put their score on three groups and a trace on the rest; the canary's
    raw score vector is 100 times a group nobody else uses. The attacker sees the noisy scores and
    the mask. Extra broken variant ``exact-selection``: the rows from the scores without noise (only
    the mask released), the bug of treating "which weights" as free. Scope: the release and the top-k
    as shipped, at the multiplier ``calibrate_gaussian`` gives for the audited epsilon; the
    per-example scores (``example_scores``: a test checks one image's score does not depend on the
    others in its batch) and the split's calibration (tested against independent numbers) are not in
    it. Phase 2 is Opacus' DP-SGD (``make_private``, audited under ``dpsgd``) with
    ``dpsgd.masked_step`` around it (masks before the clip and after the noise; tests/test_sparse.py).

    Statistics: the noisy score of the canary's group 0 beyond what the known records put there, and
    whether group 0 is in the top k (the mask the rest of the run sees).
    """
    from ..privacy import calibrate_gaussian

    g = torch.Generator().manual_seed(cfg.seed)
    data = torch.rand(cfg.n, groups, generator=g, dtype=torch.float64) * 1e-3  # a trace everywhere but group 0
    data[:, 0] = 0.0
    data[:, 1:4] += 1.0  # the records' weight is on groups 1-3
    canary = torch.zeros(1, groups, dtype=torch.float64)
    canary[0, 0] = 100.0  # far outside the unit ball, on a group nobody else touches
    multiplier = calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta)
    known = unit_rows(data).sum(0)[0]
    scores = np.empty((len(member), 2))
    for i, m in enumerate(member):
        x = torch.cat([data, canary]) if m else data
        if cfg.broken == "none":
            noisy = release_scores(x, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=multiplier).scores
        elif cfg.broken == "no-clip":  # raw scores summed, the noise still sized for unit-norm rows
            noisy = x.sum(0) + torch.randn(groups, dtype=torch.float64) * multiplier
        elif cfg.broken == "weak-noise":
            noisy = release_scores(x, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=multiplier / 10).scores
        else:  # exact-selection: the mask from the noiseless sum; only the mask is released
            noisy = release_scores(x, epsilon=math.inf, delta=cfg.delta, noise_multiplier=0.0).scores
        chosen = top_groups(noisy, k)
        scores[i, 0] = 0.0 if cfg.broken == "exact-selection" else float(noisy[0] - known)
        scores[i, 1] = float((chosen == 0).any())
    return scores


def plan(n: int, epsilon: float, delta: float, max_steps: int) -> str:
    """What the app's DP sparse button will do. The selection's noise is the analytic Gaussian's (instant);
    DP-SGD's sigma comes from a PLD bisection of about a second, too slow for every slider move, so the
    plan names the rule and the report gives the number."""
    d = resolve(SparseConfig(max_steps=max_steps), n)
    _, _, steps = schedule(n, d)
    if math.isinf(epsilon):
        return (f"{d.groups} rows chosen from the exact scores, then {steps} steps on them (lr {d.lr:g}, clip C "
                f"{d.max_grad_norm:g}), no noise (ε = ∞).")
    try:
        s1 = calibrate_gaussian(epsilon=d.split * epsilon, delta=delta)
    except ValueError:
        return ""
    return (f"{d.groups} rows chosen by one release with noise σ = {s1:.1f} ({d.split:g} of ε alone), "
            f"then {steps} DP-SGD steps on them (lr {d.lr:g}, clip C {d.max_grad_norm:g}) with the smallest σ that "
            "the PLD accountant composes with the selection to ε (in the report after the run).")


SPARSE = Method(name="sparse", label="DP sparse", config_cls=SparseConfig, train=train, one_shot=False,
                noise="once into row scores (which weights), then every step into their clipped gradients",
                identity=identity, sweep=SWEEP, cost=cost, adapter_format="sparse-delta",
                duration="minutes on CPU: 0.3 s per image, then DP-SGD",
                audit=Audit(audit_scores, variants=(*BROKEN_VARIANTS, "exact-selection")), plan=plan,
                smallest={"max_steps": 3, "draws": 1, "groups": 64},
                budget=StepsBudget("max_steps"), budget_unit="training steps")
