"""'Run it again': the spread of the privacy noise, and the base model's own samples."""

from __future__ import annotations

import math
import time

from ..gpu import gpu
from ..ledger import LedgerBook
from ..methods import FLAGSHIP
from ..methods.dpsgd import DPSGD
from ..models import shared_models
from .budget import _epsilon
from .common import UserError
from .figures import utility_figure
from .runs import _require, one_shot_runner, training_runner


# ---------------------------------------------------------------- "run it again": the spread of the privacy noise

RERUN_MAX = 8


def rerun_methods() -> list[str]:
    """The methods a class can re-run in seconds: one-shot ones (one Gaussian release each)."""
    from ..methods import METHODS

    return [name for name, m in METHODS.items() if m.one_shot]


def rerun_cost(log_eps: float, no_privacy: bool, delta: float, k: int) -> str:
    """What k re-runs will spend, said before the click: k Gaussian releases of multiplier s compose exactly to one
    of multiplier s / sqrt(k) (Gaussian DP), the way the ledger composes them."""
    from ..privacy import analytic_gaussian_epsilon, calibrate_gaussian

    k = int(k)
    if no_privacy:
        return f"{k} re-runs without privacy (a reference): nothing is protected, the ledger records them as ε = ∞."
    eps = _epsilon(log_eps, no_privacy)
    s = calibrate_gaussian(epsilon=eps, delta=delta)
    total = analytic_gaussian_epsilon(noise_multiplier=s / math.sqrt(k), delta=delta)
    return (f"Each re-run is a **new release** of your images: {k} runs at ε = {eps:.3g} spend **ε = {total:.3g}** "
            f"together (δ = {delta:g}), and the ledger below will count all of them.")


def rerun(name: str, k: int, data: dict | None, log_eps: float, no_privacy: bool, delta: float, book: LedgerBook,
          runs: list, bench_set: str | None):
    """Run one one-shot method k times at the current ε: each run's first samples in a strip, its class agreement
    as a dot on the curve, and the spread in words. Every run is recorded in the ledger."""
    from ..methods import get_method

    data = _require(data)
    if name not in rerun_methods():
        raise UserError(f"Re-runs are for the one-shot methods ({', '.join(rerun_methods())}).")
    method, k = get_method(name), max(2, min(int(k), RERUN_MAX))
    epsilon = _epsilon(log_eps, no_privacy)
    run_once = one_shot_runner(name)  # each re-run is exactly the column's run: its own token, record and point
    strip, agreements, ledger = [], [], None
    for i in range(k):
        # 16 samples for the agreement; the strip shows 4
        gallery, _, _, _, ledger, *_ = run_once(data, log_eps, no_privacy, delta, 16, book, runs, bench_set)
        agreements.append(runs[-1]["agreement"])
        strip += [(img, f"run {i + 1}") for img in gallery[:4]]
    mean = sum(agreements) / k
    sd = math.sqrt(sum((a - mean) ** 2 for a in agreements) / (k - 1))
    text = (f"**{k} runs of {method.label} at ε = {epsilon:.3g}**, the same images, new privacy noise each time: "
            f"class agreement with your images {mean:.2f} ± {sd:.2f} (sd; from {min(agreements):.2f} to "
            f"{max(agreements):.2f}). That spread is the privacy noise: one run is one draw. Each run is a star on "
            "the curve above (only you see these).")
    return strip, text, ledger, book, runs, utility_figure(log_eps, no_privacy, bench_set, runs)


def runner(name: str):
    from ..methods import get_method

    return one_shot_runner(name) if get_method(name).one_shot else training_runner(name)


# The stable API names of the first two methods, also importable (tests, notebooks).
run_hypernet = one_shot_runner(FLAGSHIP)
run_dpsgd = training_runner(DPSGD.name)


@gpu
def run_base(n_samples: int, seed: int):
    from ..data import to_uint8_images
    from ..diffusion import sample

    x = sample(shared_models().unet, int(n_samples), seed=int(seed))
    return list(to_uint8_images(x))


def run_base_compare(n_samples: int):
    t0 = time.perf_counter()
    imgs = run_base(n_samples, 0)
    return imgs, f"**Base model** (no fine-tuning, public only) — {time.perf_counter() - t0:.1f} s; ε spent 0"
