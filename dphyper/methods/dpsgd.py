"""dpsgd: DP-SGD on the LoRA with Opacus (clipped per-example gradients, noise every step).

Privacy: Opacus' DP-SGD under add/remove-one adjacency with Poisson sampling at rate
q = 1 / ceil(n / B) (n treated as public, as in Opacus), per-example gradients of the LoRA
parameters clipped to C in code (Opacus' per-sample clipping), Gaussian noise of std
sigma * C per step, sigma found by Opacus' accountant (PRV by default) for the steps that
run. One ``dpsgd_poisson_gaussian`` event (rate q, sigma, steps), which the ledger composes
with dp_accounting's PLD accountant. The training loop lives in ``dphyper.dpsgd``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..dpsgd import DPSGDConfig, train_dpsgd
from .base import Method, MethodResult


def train(images: torch.Tensor, cfg: DPSGDConfig, models, *, progress=None, cancel=None,
          public: torch.Tensor | None = None, public_batch: int = 64) -> MethodResult:
    res = train_dpsgd(images, replace(cfg, samples=0), progress=progress, cancel=cancel, device=models.device,
                      public=public, public_batch=public_batch)
    report = {k: v for k, v in res.report.items() if k not in ("samples", "sampling_steps", "sampling_seed")}
    return MethodResult(adapter=res.lora, report=report, events=(res.event,), timings=dict(res.timings),
                        losses=res.losses)


def identity() -> dict:
    from ..dpsgd import TUNED

    return {"tuned": [dict(r) for r in TUNED], "accountant": DPSGDConfig().accountant}


def _stage2(n: int) -> list[dict]:
    """Around stage 1's best: full batch, a large clip norm, and a longer run."""
    return [{"batch_size": n}, {"max_grad_norm": 1.0}, {"epochs": 300.0 if n <= 316 else 200.0}]


# Learning rate x length first (with Adam and C far below the per-example gradient norms, C only
# sets the clipping regime); every run within compare.COMPUTE_CAP.
SWEEP = {"stage1": [{"lr": lr, "max_grad_norm": 0.01, "epochs": ep, "batch_size": 64}
                    for lr in (1e-3, 1e-2, 3e-2) for ep in (10.0, 100.0)],
         "stage2": _stage2}

DPSGD = Method(name="dpsgd", label="DP-SGD", config_cls=DPSGDConfig, train=train, one_shot=False,
               noise="every step, into clipped per-example LoRA gradients", identity=identity, sweep=SWEEP)
