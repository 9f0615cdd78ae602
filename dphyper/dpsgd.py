"""The classic baseline: DP-SGD fine-tuning of the same LoRA with Opacus.

Same base UNet, LoRA targets and rank as the hypernetwork (``lora.add_lora``), same image
loader, same (epsilon, delta). Poisson sampling under add/remove-one adjacency; the noise multiplier is found by
Opacus' ``get_noise_multiplier`` (what ``make_private_with_epsilon`` calls) for the chosen
accountant (PRV by default, RDP available) over the steps that will run (the planned
epochs, or the user's lower step budget), then ``make_private`` applies it; the
report states the epsilon the accountant says was spent. Only LoRA parameters train and
only they are clipped per sample. ``epsilon = inf`` trains the same LoRA with the same
schedule without clipping or noise (the non-private floor).

Grad-sample mode: ``hooks`` (Opacus' default). The LoRA layers are plain ``nn.Linear``
modules inside peft, which hooks support; per-step cost is measured in docs/BENCHMARKS.md.
Hyperparameter defaults come from a sweep on public sets only (never the private folder).

Two settings the DP diffusion recipes tune (issue 35), each with its privacy argument:

* ``multiplicity`` k (DPDM's augmentation multiplicity): an image enters a step as k rows, each with its own
  noise and timestep draw. The k per-row gradients are averaged into one per-image gradient *before* clipping
  (``dpsgd_steps.average_grad_samples``), so one image still moves the clipped sum by at most C: the Gaussian
  noise sigma C, the Poisson rate and the accountant are exactly those of k = 1. Clipping each row as if it
  were an image would give sensitivity k C; the audit's ``clip-each-draw`` variant is that bug, and is caught.
* ``ema`` d: the release is an exponential moving average of the iterates. Every iterate is already an output
  of the accounted mechanism (the accountant bounds the whole sequence), so the average is post-processing.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch.utils.data import DataLoader, TensorDataset

from .config import get_device
from .errors import Cancelled
from .diffusion import denoising_loss, draw_noise, load_unet, make_train_scheduler, noised_loss, sample
from .gpu import ZERO_GPU, gpu
from .lora import add_lora, lora_model_fn
from .run_config import PrivateRunConfig
from .privacy import PrivacyEvent, check_epsilon_delta, private_generator
from .dpsgd_sigma import _SIGMA_MEMO, dpsgd_noise_multiplier, sigma_memo  # noqa: F401  (the family's)
from .dpsgd_steps import (DPSGD_EVENT, DRAW_PIECE, PHYSICAL_BATCH, _mask_grad_samples, _mask_views,  # noqa: F401
                          accumulate_physical, average_grad_samples, draw_piece, ema_update, masked_step, pda_alpha, pda_step, physical_batch, public_gradient)  # the family's


# Opacus' RDP analysis warns "Optimal order is the largest alpha" whenever its fixed order grid could be extended;
# our accountant is PRV (RDP only bounds its domain), so it says nothing about our epsilon and printed dozens of times
# into a CLI bar. One filter, set at import (a per-call catch_warnings swaps the filters under other sessions).
warnings.filterwarnings("ignore", message=r"Optimal order is the largest alpha")
# PRV at sample rate 1 (full batch) evaluates log(1 - q) = -inf inside Opacus and numpy warns; the result is right.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"opacus\.accountants\.analysis\.prv")


@dataclass
class DPSGDConfig(PrivateRunConfig):
    """`python -m dphyper dpsgd`: a DP LoRA from a private folder with DP-SGD (minutes)."""

    out: Path = field(default=Path("out-dpsgd"), metadata={"help": "output folder (lora.safetensors, samples/, grid.png, report.json)"})
    epochs: float = field(default=0.0, metadata={"help": "expected passes over the private set (0 = tuned default)"})
    batch_size: int = field(default=0, metadata={"help": "expected Poisson batch size (0 = tuned default)"})
    lr: float = field(default=0.0, metadata={"help": "Adam learning rate (0 = tuned default)"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "per-sample clipping norm C (0 = tuned default)"})
    max_steps: int = field(default=0, metadata={"help": "step budget (0 = epochs / sample rate); sigma is calibrated for the steps that run"})
    accountant: str = field(default="prv", metadata={"help": "Opacus accountant: prv or rdp"})
    multiplicity: int = field(default=1, metadata={"help": "noise/timestep draws per image per step, averaged "
                                                   "before clipping (DPDM's augmentation multiplicity; same sensitivity C)"})
    ema: float = field(default=0.0, metadata={"help": "release an exponential moving average of the weights with "
                                              "this decay (0 = the last iterate; post-processing of the noisy steps)"})
    NEUTRAL: ClassVar[dict] = {"multiplicity": 1, "ema": 0.0}  # issue 35's additions (run_config.NEUTRAL)
    chunk_seconds: float = field(default=0.0, metadata={"help": "train in GPU calls of at most this many seconds "
                                                              "(ZeroGPU); 0 = one call. The accounting is identical"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "batch_size", "lr", "max_grad_norm", "max_steps", "chunk_seconds"):
            if not (getattr(self, name) >= 0):  # NaN fails too
                raise ValueError(f"{name} must be >= 0 (0 = the default), got {getattr(self, name)}")
        if not (isinstance(self.multiplicity, int) and self.multiplicity >= 1) or not 0.0 <= self.ema < 1.0:
            raise ValueError(f"multiplicity must be an integer >= 1 and ema in [0, 1), got {self.multiplicity}, {self.ema}")


# Chosen by the public sweep (`python -m dphyper bench --suite sweep --methods dpsgd`, bench/sweep.json) on
# public (train-split) sets at epsilon = 1, one row per size regime: the best cell of each set after stage 2
# (stage 1: learning rate x length, C = 0.01, batch 64; stage 2: full batch, C = 1 and a longer run around
# stage 1's best; docs/BENCHMARKS.md "Public sweep of every tunable method"; a test checks these rows against
# the sweep's best). n <= 316: public-coats-100, where nothing moves the model far from the base (every cell
# within FID noise of it). Larger n: public-mixed-1000, 100 epochs at lr 0.001 with C = 1 (FID 71.2; C = 0.01:
# 73.4; full batch with C = 1: 75.0; 200 epochs with C = 1: 79.3; 10 epochs: 75.0), complete 2026-12-02. Every
# one of these is within that set's FID noise (sd 8.6) of the others: the mix cannot tell them apart, and the
# rule (best cell at epsilon = 1) is applied as stated all the same. DP-SGD treats n as public (as Opacus
# does), so choosing by n costs no privacy.
TUNED = (
    {"n_max": 316, "tuned_on": "public-coats-100", "lr": 3e-2, "max_grad_norm": 0.01, "epochs": 10.0,
     "batch_size": 64},
    {"n_max": None, "tuned_on": "public-mixed-1000", "lr": 1e-3, "max_grad_norm": 1.0, "epochs": 100.0,
     "batch_size": 64},
)


TUNED_KEYS = ("lr", "max_grad_norm", "epochs", "batch_size")  # what a tuned row sets


def tuned_defaults(n: int, table: tuple[dict, ...] = TUNED) -> dict:
    """The sweep's hyperparameters for a private set of n images (``table``: a method's per-regime rows)."""
    for row in table:
        if row["n_max"] is None or n <= row["n_max"]:
            return {k: row[k] for k in TUNED_KEYS}
    raise AssertionError("unreachable")


def resolve(cfg: "DPSGDConfig", n: int, table: tuple[dict, ...] = TUNED) -> "DPSGDConfig":
    """Fill every 0 hyperparameter with the tuned default for this n (explicit values win)."""
    from dataclasses import replace

    tuned = tuned_defaults(n, table)
    return replace(cfg, **{k: v for k, v in tuned.items() if not getattr(cfg, k)})


def schedule(n: int, cfg: "DPSGDConfig") -> tuple[float, int, int]:
    """(Poisson rate, planned steps, steps that will run) for n images and resolved settings.

    The rate is Opacus' for a loader of batch B over n items, 1 / ceil(n / B) (expected batch
    n / ceil(n / B)); planned steps = epochs / rate; the step budget caps them.
    """
    q = 1.0 / math.ceil(n / min(cfg.batch_size, n))
    planned = max(1, int(math.ceil(cfg.epochs / q)))
    return q, planned, (min(planned, cfg.max_steps) if cfg.max_steps else planned)


def training_plan(d: "DPSGDConfig", n: int, epsilon: float, delta: float) -> str:
    """A DP-SGD-like schedule for n images (resolved settings ``d``), in words (the app's plan line)."""
    q, _, steps = schedule(n, d)  # the same schedule train_dpsgd will run
    text = f"{steps} steps, expected batch {n * q:.0f} (sample rate {q:.3g}), lr {d.lr:g}, clip C {d.max_grad_norm:g}"
    if math.isinf(epsilon):
        return text + ", no noise (ε = ∞)."
    try:
        sigma = dpsgd_noise_multiplier(epsilon=epsilon, delta=delta, sample_rate=q, steps=steps)
        return text + f", noise multiplier σ = {sigma:.2f} per step (Opacus PRV accountant)."
    except Exception:  # noqa: BLE001 - the accountant's search can fail at extreme settings
        return text + "."


@dataclass
class DPSGDResult:
    lora: dict[str, torch.Tensor]
    samples: torch.Tensor
    report: dict
    event: PrivacyEvent  # epsilon = inf and noise 0 for the non-private reference
    losses: list[float]
    # Seconds per stage, never in report.json (training time follows the true Poisson batch sizes).
    timings: dict[str, float] = field(default_factory=dict)


def make_private(engine, module: torch.nn.Module, opt: torch.optim.Optimizer, dataset, *, batch_size: int,
                 max_grad_norm: float, sigma: float, device: torch.device):
    """Opacus' ``make_private`` with both private draws on OS-seeded generators.

    * Poisson sampling: Opacus' DPDataLoader takes the generator of the loader it wraps
      (``secure_mode`` off), so the loader gets a CPU ``private_generator()``; without it the
      batches would come from torch's global generator, which anything in the process can seed.
    * Gaussian noise: Opacus draws it on the parameters' device with ``noise_generator``, which
      must live on that device (a CPU generator fails for CUDA parameters).
    """
    loader = DataLoader(dataset, batch_size=batch_size, generator=private_generator())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine.make_private(
            module=module, optimizer=opt, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=max_grad_norm, poisson_sampling=True, grad_sample_mode="hooks",
            noise_generator=private_generator(device))  # OS-seeded, never the user's seed


def loss_pieces(x0: torch.Tensor, scheduler, generator: torch.Generator, device: torch.device,
                physical: int | None = None, piece: int | None = None, multiplicity: int = 1):
    """(images, noise, timesteps) of a batch in physical pieces, the draws made per ``draw_piece`` images; with
    ``multiplicity`` k, each image is k consecutive rows with their own draws (a piece holds whole images)."""
    phys = max(1, physical_batch(device, physical, piece) // multiplicity) * multiplicity
    for xd in x0.split(draw_piece(device, piece)):
        xd = xd.repeat_interleave(multiplicity, 0) if multiplicity > 1 else xd
        noise, t = draw_noise(xd, scheduler, generator)
        yield from zip(xd.split(phys), noise.split(phys), t.split(phys))


@dataclass
class TrainState:
    """Everything one chunk of DP-SGD hands to the next (and to ``finish_dpsgd``).

    A training run can be a sequence of short calls (a ZeroGPU Space gives a GPU for a limited
    time per call, and a call may run in another process): the LoRA and Adam's moments after the
    steps so far (post-processing of the noisy steps), Opacus' accountant history, the step count.
    The accounting is the same whether a run is chunked or not: Opacus' accountant merges the
    restored history with the new steps, (sigma, q, steps) exactly as one call would record it.
    """

    cfg: DPSGDConfig  # resolved for this n
    q: float
    planned: int
    total_steps: int
    sigma: float
    step: int = 0
    lora: dict[str, torch.Tensor] | None = None
    opt_state: dict | None = None
    history: list = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    ema: dict[str, torch.Tensor] | None = None  # the weights' moving average (cfg.ema > 0), what the run releases
    train_seconds: float = 0.0
    # Sparse DP-SGD (``methods/sparse.py``): base-UNet parameter name -> boolean mask of its trained rows
    # (dim 0). None = the LoRA (DP-SGD, PDA-DPMD). The mask is public or a DP output (post-processing).
    mask: dict[str, torch.Tensor] | None = None
    # Images per forward/backward (memory only, not part of a run's identity); None: ``physical_batch(device)``.
    physical: int | None = None
    # Images per draw of the loss's noise (None: ``DRAW_PIECE``): the sparse suite's cost probe only (it changes draws).
    piece: int | None = None

    @property
    def private(self) -> bool:
        return math.isfinite(self.cfg.epsilon)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps


def start_dpsgd(n: int, cfg: DPSGDConfig) -> TrainState:
    """Resolve the settings for n and calibrate sigma for the steps that will run (no data touched)."""
    cfg = resolve(cfg, n)
    check_epsilon_delta(cfg.epsilon, cfg.delta)  # a NaN epsilon is an error, never "non-private"
    q, planned, total_steps = schedule(n, cfg)
    sigma = 0.0
    if math.isfinite(cfg.epsilon):
        # Calibrate sigma for the steps that will actually run (a lower step budget buys less noise),
        # with Opacus' own search: the same thing make_private_with_epsilon does for whole epochs.
        sigma = dpsgd_noise_multiplier(epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=q, steps=total_steps,
                                       accountant=cfg.accountant)
    return TrainState(cfg=cfg, q=q, planned=planned, total_steps=total_steps, sigma=sigma)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def advance_dpsgd(images: torch.Tensor, state: TrainState, *, max_steps: int = 0, max_seconds: float = 0.0,
                  progress: Callable[[dict], None] | None = None, cancel: threading.Event | None = None,
                  device: torch.device | None = None, public: torch.Tensor | None = None,
                  public_batch: int = 64) -> TrainState:
    """Run the next chunk: at most ``max_steps`` steps and/or ``max_seconds`` (0 = no limit), then
    return the new state (on the CPU, so that it can leave a GPU worker process)."""
    from opacus import PrivacyEngine

    device = device or get_device()
    cfg, n = state.cfg, len(images)
    if state.mask is None:
        unet = add_lora(load_unet(device=device))  # the LoRA trains (peft freezes the base)
    else:  # sparse: the base UNet's tensors that hold a selected row train, masked to those rows
        unet = load_unet(device=device)
        for name in state.mask:
            unet.get_parameter(name).requires_grad_(True)
    unet.train()
    names = [name for name, p in unet.named_parameters() if p.requires_grad]
    params = [p for p in unet.parameters() if p.requires_grad]
    masks = [state.mask[name].to(device) for name in names] if state.mask is not None else None
    if state.lora is not None:
        with torch.no_grad():
            for name, p in zip(names, params):
                p.copy_(state.lora[name].to(device))
    opt = torch.optim.Adam(params, lr=cfg.lr)
    k = cfg.multiplicity
    ema = None if not cfg.ema else [state.ema[name].to(device, copy=True) for name in names] if state.ema else [
        p.detach().clone() for p in params]
    if state.opt_state is not None:
        opt.load_state_dict(state.opt_state)
    loader = DataLoader(TensorDataset(images), batch_size=min(cfg.batch_size, n), shuffle=True)  # non-private only
    model, engine = unet, None
    if state.private:
        with warnings.catch_warnings():  # "Secure RNG turned off": both private draws use OS-seeded generators
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            engine = PrivacyEngine(accountant=cfg.accountant, secure_mode=False)
        engine.accountant.history = list(state.history)  # the steps of earlier chunks
        model, opt, loader = make_private(engine, unet, opt, TensorDataset(images), batch_size=min(cfg.batch_size, n),
                                          max_grad_norm=cfg.max_grad_norm, sigma=state.sigma, device=device)
        if abs(loader.sample_rate - state.q) > 1e-12:
            raise RuntimeError(f"Opacus sample rate {loader.sample_rate} != calibrated {state.q}")
    sched = make_train_scheduler()
    # The training randomness (timesteps and noise of the loss, the public batches) comes from
    # generators of this run only, OS-seeded: the global generator would carry hidden state from
    # the Poisson batch sizes into the public draws, and anything in the process can seed it.
    gen = private_generator(device)
    pub_gen = private_generator(device)
    pub_idx_gen = private_generator()

    def diffusion_loss(m, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return denoising_loss(lambda x, t: m(x, t).sample, x0, sched, g)

    def step_with(public_grads: list[torch.Tensor] | None, alpha: float) -> None:
        if masks is not None:
            masked_step(opt, params, masks, private=engine is not None)
        elif public_grads is None:
            opt.step()
        else:
            pda_step(opt, params, public_grads, alpha, private=engine is not None)

    total_steps = state.total_steps
    stop_at = min(total_steps, state.step + max_steps) if max_steps else total_steps
    losses, step, t0 = list(state.losses), state.step, time.perf_counter()
    deadline = t0 + max_seconds if max_seconds else math.inf
    first = step

    def out_of_time() -> bool:  # every chunk takes at least one step
        return step > first and time.perf_counter() >= deadline

    while step < stop_at and not out_of_time():
        for (x0,) in loader:
            if cancel is not None and cancel.is_set():
                raise Cancelled("DP-SGD run cancelled; nothing was released.")
            if step >= stop_at or out_of_time():
                break
            x0 = x0.to(device)
            opt.zero_grad(set_to_none=True)
            pub, alpha = None, 1.0
            if public is not None:
                alpha = pda_alpha(step, total_steps)
                pub = public_gradient(model, params, public, public_batch, pub_idx_gen,
                                      lambda m, x: diffusion_loss(m, x, pub_gen))
            if x0.shape[0] == 0:  # an empty Poisson batch still takes a (pure-noise) step
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), device=device)
                step_with(pub, alpha)
            else:
                pieces = list(loss_pieces(x0, sched, gen, device, state.physical, state.piece, k))
                total = 0.0
                for i, (xp, noise, t) in enumerate(pieces):
                    loss = noised_loss(lambda x, tt: model(x, tt).sample, xp, noise, t, sched)
                    total += loss.item() * len(xp) / k
                    if engine is None:  # plain gradient accumulation: the batch mean
                        loss = loss * (len(xp) / (k * len(x0)))
                    with warnings.catch_warnings():  # Opacus' full backward hooks on a frozen input: expected
                        warnings.simplefilter("ignore", UserWarning)
                        loss.backward()
                    if engine is not None and k > 1:  # one row per image before any clipping
                        average_grad_samples(params, k)
                    if engine is not None and i < len(pieces) - 1:
                        accumulate_physical(opt, params, masks)
                step_with(pub, alpha)
                losses.append(total / len(x0))
            if ema is not None:
                ema_update(ema, params, cfg.ema, step)
            if engine is not None and getattr(opt, "_is_last_step_skipped", False):
                raise RuntimeError("Opacus skipped a step: the step count would not match the accountant")
            step += 1
            if progress is not None:
                spent = engine.get_epsilon(cfg.delta) if engine is not None else math.inf
                elapsed = state.train_seconds + time.perf_counter() - t0
                progress({"stage": "train", "step": step, "total": total_steps, "epsilon_spent": spent,
                          "eta_seconds": elapsed / step * (total_steps - step)})
    lora = {name: p.detach().cpu().clone() for name, p in zip(names, params)}
    if hasattr(model, "_close"):  # remove Opacus' hooks from the UNet
        model._close()
    base_opt = opt.original_optimizer if engine is not None else opt
    return replace(state, step=step, lora=lora, opt_state=_to_cpu(base_opt.state_dict()),
                   ema=None if ema is None else {name: e.detach().cpu().clone() for name, e in zip(names, ema)},
                   history=list(engine.accountant.history) if engine is not None else [], losses=losses,
                   train_seconds=state.train_seconds + time.perf_counter() - t0)


def epsilon_spent(state: TrainState) -> float:
    """What Opacus' accountant says the steps so far spent (inf for a non-private run)."""
    if not state.private:
        return math.inf
    from opacus.accountants import create_accountant

    acc = create_accountant(state.cfg.accountant)
    acc.history = list(state.history)
    return float(acc.get_epsilon(state.cfg.delta)) if state.history else 0.0


def finish_dpsgd(state: TrainState, *, device: torch.device | None = None, t_all: float | None = None) -> DPSGDResult:
    """The release of a finished (or stopped) run: its LoRA, samples, report and privacy event."""
    device = device or get_device()
    cfg, private = state.cfg, state.private
    if private and sum(k for _, _, k in state.history) != state.step:
        raise RuntimeError("the accountant's steps and the run's steps differ")
    eps_spent = epsilon_spent(state)
    lora = dict(state.ema or state.lora or {})  # with cfg.ema, the average of the iterates is the release
    t1 = time.perf_counter()
    cfg = replace(cfg, seed=cfg.seed if cfg.seed is not None else secrets.randbits(31))  # reported, see pipeline
    if cfg.samples:
        unet = add_lora(load_unet(device=device)).eval()
        x = sample(unet, cfg.samples, steps=cfg.steps, seed=cfg.seed, model_fn=lora_model_fn(unet, lora))
    else:
        x = torch.empty(0, 1, 32, 32)
    sample_seconds = time.perf_counter() - t1
    # A non-private run is a release too: the ledger must show that it has no bound (epsilon = inf).
    event = PrivacyEvent(mechanism=DPSGD_EVENT, epsilon=float(eps_spent) if private else math.inf,
                         delta=cfg.delta, noise_multiplier=float(state.sigma),
                         sensitivity=cfg.max_grad_norm if private else math.inf, sample_rate=state.q, steps=state.step,
                         accountant=cfg.accountant if private else "none (non-private)")
    report = {  # the method's name comes from the registry (``sample_into``)
        "private": private,
        "epsilon": cfg.epsilon if private else "inf",
        "epsilon_spent": float(eps_spent) if private else "inf",
        "delta": cfg.delta,
        "noise_multiplier": float(state.sigma),
        "max_grad_norm": cfg.max_grad_norm if private else None,
        "epochs": cfg.epochs,
        "sample_rate": state.q,
        "steps": state.step,
        "planned_steps": state.planned,
        "accountant": cfg.accountant if private else "none (non-private)",
        "grad_sample_mode": "hooks" if private else None,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "multiplicity": cfg.multiplicity,
        "ema": cfg.ema,
        "samples": int(x.shape[0]),
        "sampling_steps": cfg.steps,
        "sampling_seed": cfg.seed,
    }
    timings = {"train": state.train_seconds, "sample": sample_seconds}
    if t_all is not None:
        timings["total"] = time.perf_counter() - t_all
    if not private:
        report["warning"] = "epsilon = inf: NO privacy (non-private reference)"
    return DPSGDResult(lora=lora, samples=x, report=report, event=event, losses=list(state.losses), timings=timings)


def train_dpsgd(images: torch.Tensor, cfg: DPSGDConfig, *, progress: Callable[[dict], None] | None = None,
                cancel: threading.Event | None = None, device: torch.device | None = None,
                public: torch.Tensor | None = None, public_batch: int = 64, chunk_steps: int = 0,
                state: TrainState | None = None) -> DPSGDResult:
    """DP-SGD on LoRA parameters; images (n, 1, 32, 32) are private.

    ``public`` (public images, e.g. the Fashion-MNIST train split) turns the run into PDA-DPMD
    (``methods/pda_dpmd.py``): each step mixes the noisy private gradient with the gradient of
    the same loss on a public batch of ``public_batch`` images, weight cos(pi t / 2T) on the
    private part. The public gradient costs no privacy; the accounting is unchanged.
    ``chunk_steps`` runs the same training as a sequence of chunks (``advance_dpsgd``), each
    rebuilding its model, optimiser and accountant from the previous chunk's state. ``state`` is a
    run already set up by the caller (sparse DP-SGD: its own sigma and mask); None = ``start_dpsgd``.
    """
    t_all = time.perf_counter()
    state = state if state is not None else start_dpsgd(len(images), cfg)
    chunked = bool(chunk_steps or cfg.chunk_seconds)
    # Across a ZeroGPU process boundary no callback can go in: progress and Cancel are then handled
    # here, between chunks.
    inside = not (chunked and ZERO_GPU)
    while not state.done:
        if cancel is not None and cancel.is_set():
            raise Cancelled("DP-SGD run cancelled; nothing was released.")
        before = state.step
        # One short GPU call per chunk when chunked; else one call for the whole run.
        state = (_advance_on_gpu if chunked else _advance_chunk)(
            images, state, chunk_steps, cfg.chunk_seconds, progress if inside else None, cancel if inside else None,
            device, public, public_batch)
        if progress is not None and not inside:
            progress({"stage": "train", "step": state.step, "total": state.total_steps, "epsilon_spent": epsilon_spent(state),
                      "eta_seconds": state.train_seconds / state.step * (state.total_steps - state.step)})
        if state.step == before:
            raise RuntimeError("a DP-SGD chunk made no progress")
    return finish_dpsgd(state, device=device, t_all=t_all)


def _gpu_duration(images, state, chunk_steps, chunk_seconds, *args) -> int:
    """ZeroGPU's duration of one chunk: its training time plus room for loading the model."""
    return int(chunk_seconds or 60) + 30


def _advance_chunk(images, state, chunk_steps, chunk_seconds, progress, cancel, device, public, public_batch):
    return advance_dpsgd(images, state, max_steps=chunk_steps, max_seconds=chunk_seconds, progress=progress,
                         cancel=cancel, device=device, public=public, public_batch=public_batch)


@gpu(duration=_gpu_duration)
def _advance_on_gpu(*args):
    """One chunk as one GPU call (``spaces.GPU`` on ZeroGPU, decorated once at import; a plain call elsewhere)."""
    return _advance_chunk(*args)
