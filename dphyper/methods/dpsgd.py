"""dpsgd: DP-SGD on the LoRA with Opacus (clipped per-example gradients, noise every step).

Privacy: Opacus' DP-SGD under add/remove-one adjacency with Poisson sampling at rate
q = 1 / ceil(n / B) (n treated as public, as in Opacus), per-example gradients of the LoRA
parameters clipped to C in code (Opacus' per-sample clipping), Gaussian noise of std
sigma * C per step, sigma found by Opacus' accountant (PRV by default) for the steps that
run. One ``dpsgd_poisson_gaussian`` event (rate q, sigma, steps), which the ledger composes
with dp_accounting's PLD accountant. The training loop lives in ``dphyper.dpsgd``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ..dpsgd import DPSGDConfig, train_dpsgd
from .base import BROKEN_VARIANTS, Audit, Method, MethodResult, StepsBudget


def train(images: torch.Tensor, cfg: DPSGDConfig, models, *, progress=None, cancel=None,
          public: torch.Tensor | None = None, public_batch: int = 64) -> MethodResult:
    res = train_dpsgd(images, replace(cfg, samples=0), progress=progress, cancel=cancel, device=models.device,
                      public=public, public_batch=public_batch)
    report = {k: v for k, v in res.report.items() if k not in ("samples", "sampling_steps", "sampling_seed")}
    return MethodResult(adapter=res.lora, report=report, events=(res.event,), timings=dict(res.timings),
                        losses=res.losses)


def identity() -> dict:
    from ..dpsgd import TUNED

    d = DPSGDConfig()
    # A setting added later counts once its shipped default leaves the value the stored cells ran with.
    moved = {k: v for k, v in d.settings().items() if k in d.NEUTRAL}
    return {"tuned": [dict(r) for r in TUNED], "accountant": d.accountant, **moved}


def _stage2(n: int) -> list[dict]:
    """Around stage 1's best: full batch, a large clip norm, a longer run, and what the DP diffusion recipes add
    (issue 35): several noise/timestep draws per image (DPDM's augmentation multiplicity) and an EMA of the
    weights as the release."""
    return [{"batch_size": n}, {"max_grad_norm": 1.0}, {"epochs": 300.0 if n <= 316 else 200.0},
            {"multiplicity": 4}, {"ema": 0.999}]


# Learning rate x length first (with Adam and C far below the per-example gradient norms, C only
# sets the clipping regime); every run within sweep.COMPUTE_CAP. The rates span 1e-4 to 1e-1 (issue 35: the
# earlier 1e-3..3e-2 put both shipped rates on an edge), 14 stage-1 runs under successive halving.
SWEEP = {"stage1": [{"lr": lr, "max_grad_norm": 0.01, "epochs": ep, "batch_size": 64}
                    for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1) for ep in (10.0, 100.0)],
         "stage2": _stage2}


def audit_scores(cfg, member: np.ndarray, steps: int = 20, batches: int = 10,
                  pda: bool = False, draws: int = 8) -> np.ndarray:
    """The audit of ``python -m dphyper audit --method dpsgd`` (and ``pda-dpmd``): the Opacus DP-SGD
    set-up the baseline uses (``make_private`` with Poisson sampling, per-sample clipping, sigma from
    ``dpsgd_noise_multiplier``, OS-seeded noise) on a small linear model where the canary's gradient
    points in a direction no other example touches (a "Dirac" canary), so the attacker's statistic
    is the final weight on that coordinate. The UNet itself would need hours of runs for the same
    number of trials.

    ``pda``: the PDA-DPMD update instead (``dpsgd.pda_step``: the noisy private gradient mixed
    with a public batch's gradient, weight ``pda_alpha``); its broken variant
    ``private-as-public`` draws the "public" batch from the private records (canary included).

    ``draws``: every record enters as that many rows, whose per-sample gradients the shipped
    ``average_grad_samples`` merges before clipping (augmentation multiplicity, issue 35; k = 1 is the same
    code with nothing to merge). Its broken variant ``clip-each-draw`` skips the merge: each row is clipped as
    if it were a record, so a record moves the sum by k C.
    """
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from ..dpsgd import average_grad_samples, dpsgd_noise_multiplier, make_private, pda_alpha, pda_step, public_gradient

    dim = 8
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.n, dim, generator=g)
    x[:, 0] = 0.0  # no ordinary example touches coordinate 0
    y = torch.randn(cfg.n, 1, generator=g)
    px = torch.randn(64, dim, generator=g)  # public records (also blind to coordinate 0)
    px[:, 0] = 0.0
    py = torch.randn(64, 1, generator=g)
    public = torch.cat([px, py], 1)
    idx_gen = torch.Generator().manual_seed(cfg.seed + 2)  # which public rows: public, not privacy noise
    cx = torch.zeros(1, dim)
    cx[0, 0] = 100.0  # the canary: a huge gradient on coordinate 0 only (clipped to C when correct)
    cy = torch.tensor([[-1e4]])  # far: w0 does not reach the canary's optimum (-100) and turn back within a run
    # The same Poisson rate with and without the canary (what the accountant assumes): a batch size for
    # which n and n + 1 records give the same number of batches.
    batch = math.ceil((cfg.n + 1) / batches)
    if math.ceil(cfg.n / batch) != math.ceil((cfg.n + 1) / batch):
        raise ValueError("choose n so that n and n + 1 give the same number of batches")
    sigma = None
    scores = np.empty((len(member), 2) if pda else len(member))
    clip = 1.0
    for i, m in enumerate(member):
        xs, ys = (torch.cat([x, cx]), torch.cat([y, cy])) if m else (x, y)
        loader = DataLoader(TensorDataset(xs, ys), batch_size=batch)
        if sigma is None:  # calibrated once for the rate without the canary, as for the real run
            sigma = dpsgd_noise_multiplier(epsilon=cfg.epsilon, delta=cfg.delta,
                                           sample_rate=1 / len(loader), steps=steps)
        model = torch.nn.Linear(dim, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        noise_mult, max_norm = sigma, clip
        if cfg.broken == "weak-noise":
            noise_mult = sigma / 10
        if cfg.broken == "no-clip":  # clipping off, noise still sized for C = 1
            max_norm, noise_mult = 1e6, sigma * clip / 1e6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant="prv")
            # The shipped wrapper (OS-seeded Poisson sampling and noise), with the variant's explicit settings.
            model, opt, dl = make_private(engine, model, opt, TensorDataset(xs, ys), batch_size=batch,
                                          max_grad_norm=max_norm, sigma=noise_mult, device=torch.device("cpu"))
            done = 0
            while done < steps:
                for xb, yb in dl:
                    if done >= steps:
                        break
                    opt.zero_grad(set_to_none=True)
                    public_grads = None
                    if pda:  # the shipped public gradient (Opacus' per-sample hooks off), on (x | y) rows
                        rows = torch.cat([xs, ys], 1) if cfg.broken == "private-as-public" else public
                        public_grads = public_gradient(model, list(model.parameters()), rows, len(rows), idx_gen,
                                                       lambda mdl, b: ((mdl(b[:, :dim]) - b[:, dim:]) ** 2).mean())
                    if len(xb):
                        ((model(xb.repeat_interleave(draws, 0)) - yb.repeat_interleave(draws, 0)) ** 2).sum().backward()
                        if cfg.broken != "clip-each-draw":
                            average_grad_samples(list(model.parameters()), draws)
                    else:
                        for p in model.parameters():
                            p.grad_sample = torch.zeros((0, *p.shape))
                    if pda:
                        pda_step(opt, list(model.parameters()), public_grads, pda_alpha(done, steps), private=True)
                    else:
                        opt.step()
                    done += 1
        w0 = model._module.weight[0, 0].item()
        if not math.isfinite(w0):  # an unclipped leak (PDA's private-as-public) can overflow: an observable output
            w0 = 1e30
        # Each clipped canary step pushes w0 down by C / B. With PDA-DPMD, a canary that leaks into the
        # mixed update can also make w0 oscillate and grow: two statistics, -w0 and |w0|, and the
        # audit picks one on the selection half (never on the measured half).
        scores[i] = (-w0, abs(w0)) if pda else -w0
    return scores


def plan(n: int, epsilon: float, delta: float, max_steps: int) -> str:
    from ..dpsgd import resolve, training_plan

    return training_plan(resolve(DPSGDConfig(max_steps=max_steps), n), n, epsilon, delta)


DPSGD = Method(name="dpsgd", label="DP-SGD", config_cls=DPSGDConfig, train=train, one_shot=False,
               noise="every step, into clipped per-example LoRA gradients", identity=identity, sweep=SWEEP,
               audit=Audit(audit_scores, variants=(*BROKEN_VARIANTS, "clip-each-draw"), trials=1000,
                           max_app_trials=1000), plan=plan,
               smallest={"max_steps": 3}, plot_style=("DP-SGD LoRA", "#d62728"),
               budget=StepsBudget("max_steps"), budget_unit="training steps")
