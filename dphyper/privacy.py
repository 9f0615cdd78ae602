"""The only code that touches private embeddings: clipping, one Gaussian release, accounting.

Mechanism (DESIGN.md section 1, step 3), under add/remove-one adjacency:

* every embedding e_i is clipped to L2 norm <= C here, in code (sensitivity is enforced,
  never assumed), and a constant coordinate c is appended: e~_i = [clip(e_i), c], so
  ||e~_i|| <= Delta = sqrt(C^2 + c^2);
* one Gaussian mechanism releases S~ = sum_i e~_i + N(0, (s * Delta)^2 I), which holds
  the sum and the count together: adding or removing one image moves the sum by at most
  Delta in L2, so this is one (epsilon, delta)-DP release;
* the noisy count is n~ = S~[d] / c and the mean S~[:d] / max(n~, 1) is post-processing.

The noise multiplier s = sigma / Delta comes from the exact analytic Gaussian calibration
(Balle & Wang 2018): delta(s) = Phi(1/(2s) - eps*s) - e^eps * Phi(-1/(2s) - eps*s),
solved for s by bisection in log space. Tests check it against dp_accounting's PLD
accountant and against golden numbers.

Noise comes from a generator seeded by the operating system (``secrets``) unless the
caller passes one; only public-data training and tests pass one. The user's ``--seed``
never reaches this module.

Known limitation: the Gaussian noise is drawn in float64 with torch, not with a
floating-point-safe sampler (Mironov 2012); the guarantee is for the ideal real-valued
mechanism, like Opacus'.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from scipy.special import log_ndtr

DEFAULT_DELTA = 1e-5


class PrivacyWarning(UserWarning):
    """A privacy setting that is legal but weaker than it looks (e.g. delta >= 1/n)."""


# ---------------------------------------------------------------- calibration

def analytic_gaussian_delta(*, noise_multiplier: float, epsilon: float) -> float:
    """Exact delta of the Gaussian mechanism with std = noise_multiplier * sensitivity."""
    s = noise_multiplier
    if s <= 0:
        return 1.0
    a = 1.0 / (2.0 * s)
    b = epsilon * s
    # Phi(a - b) - e^eps Phi(-a - b), the second term in log space to avoid overflow.
    first = math.exp(log_ndtr(a - b))
    second = math.exp(epsilon + log_ndtr(-a - b)) if epsilon < 700 else 0.0
    return max(first - second, 0.0)


def analytic_gaussian_epsilon(*, noise_multiplier: float, delta: float) -> float:
    """Smallest epsilon for which the Gaussian mechanism with this multiplier is (eps, delta)-DP."""
    if noise_multiplier <= 0:
        return math.inf
    if analytic_gaussian_delta(noise_multiplier=noise_multiplier, epsilon=0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while analytic_gaussian_delta(noise_multiplier=noise_multiplier, epsilon=hi) > delta:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    for _ in range(200):  # delta(eps) is decreasing in eps
        mid = 0.5 * (lo + hi)
        if analytic_gaussian_delta(noise_multiplier=noise_multiplier, epsilon=mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def calibrate_gaussian(*, epsilon: float, delta: float = DEFAULT_DELTA) -> float:
    """Noise multiplier sigma / sensitivity so that one Gaussian release is (epsilon, delta)-DP.

    Exact (analytic Gaussian mechanism); returns 0.0 for epsilon = inf (no privacy).
    The returned value is rounded *up* in the bisection, so the guarantee holds.
    """
    check_epsilon_delta(epsilon, delta)
    if math.isinf(epsilon):
        return 0.0
    lo, hi = 1e-3, 1.0
    while analytic_gaussian_delta(noise_multiplier=hi, epsilon=epsilon) > delta:
        hi *= 2.0
    while analytic_gaussian_delta(noise_multiplier=lo, epsilon=epsilon) <= delta:
        lo /= 2.0
    for _ in range(200):  # delta(s) is decreasing in s; keep delta(hi) <= target
        mid = math.sqrt(lo * hi)
        if analytic_gaussian_delta(noise_multiplier=mid, epsilon=epsilon) > delta:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    return hi


def check_epsilon_delta(epsilon: float, delta: float) -> None:
    """Refuse what no mechanism may run with: epsilon <= 0 or NaN, delta outside (0, 1).

    NaN fails every comparison, so each check is written to fail on NaN (``not (x > 0)``):
    a NaN epsilon must never be read as "not finite, hence no privacy".
    """
    if not (epsilon > 0):
        raise ValueError(f"epsilon must be > 0 (or inf for no privacy), got {epsilon}.")
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta}.")


# ---------------------------------------------------------------- events and ledger

@dataclass(frozen=True)
class PrivacyEvent:
    """What happened, once: one mechanism applied to one dataset (immutable)."""

    mechanism: str  # a key of MECHANISMS, registered by the module that makes such events
    epsilon: float
    delta: float
    noise_multiplier: float  # sigma / sensitivity
    sensitivity: float
    sample_rate: float = 1.0
    steps: int = 1
    accountant: str = "analytic_gaussian"
    time: float = field(default_factory=time.time)

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0


class PrivacyLedger:
    """All releases on one dataset in one session, and what they cost together.

    One-shot Gaussian releases compose exactly through Gaussian DP: k Gaussian mechanisms
    with multipliers s_i are together a Gaussian mechanism with multiplier
    (sum_i s_i^-2)^(-1/2), whose (epsilon, delta) is again the analytic formula.
    Other events (DP-SGD) are composed with dp_accounting's PLD accountant.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one object, mutated in place: concurrent records both land
        self._events: list[PrivacyEvent] = []

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        with self._lock:
            return tuple(self._events)

    def record(self, event: PrivacyEvent) -> None:
        check_registered(event)
        with self._lock:
            self._events.append(event)

    def method(self) -> str:
        """How ``total`` composes the recorded events, in words."""
        events = self.events
        if any(not e.private for e in events):
            return "no accountant: a non-private run has no bound (ε = ∞)"
        if all(_one_gaussian(e) for e in events):
            return "exact Gaussian-DP composition"
        return "the PLD accountant (dp_accounting)"

    def total(self, *, delta: float | None = None) -> tuple[float, float]:
        """Composed (epsilon, delta) over every recorded event."""
        events = self.events
        if not events:
            return 0.0, 0.0
        delta = delta if delta is not None else max(e.delta for e in events)
        if any(not e.private for e in events):
            return math.inf, delta
        if all(_one_gaussian(e) for e in events):
            # T Gaussian mechanisms with multiplier s compose to one with s / sqrt(T) (GDP, adaptively too)
            s_total = sum(e.steps * e.noise_multiplier ** -2 for e in events) ** -0.5
            return analytic_gaussian_epsilon(noise_multiplier=s_total, delta=delta), delta
        return _pld_epsilon(list(events), delta), delta


@dataclass(frozen=True)
class Mechanism:
    """What the ledger knows about a kind of event; the module that makes such events registers it (with the
    argument for ``exact_gaussian`` in its docstring), so this module names no method."""

    # True: an event is exactly (or dominated by) ``steps`` Gaussian mechanisms with its multiplier, each on
    # the whole dataset, so events compose exactly in Gaussian DP; False: the PLD accountant composes it.
    exact_gaussian: bool
    words: Callable[[PrivacyEvent], str]  # the ledger row's words after the method's label


MECHANISMS: dict[str, Mechanism] = {}


def register_mechanism(name: str, *, exact_gaussian: bool, words: Callable[[PrivacyEvent], str]) -> str:
    """Register how the ledger composes and words a mechanism's events. A name is registered once: a second
    registration that would change how its events compose is refused (another method's events use it too)."""
    old = MECHANISMS.get(name)
    if old is not None and old.exact_gaussian != exact_gaussian:
        raise ValueError(f"privacy mechanism {name!r} is already registered with exact_gaussian={old.exact_gaussian}")
    MECHANISMS[name] = Mechanism(exact_gaussian, words)
    return name


SUM_COUNT = register_mechanism("gaussian_sum_count", exact_gaussian=True, words=lambda e: "one Gaussian release")


def check_registered(event: PrivacyEvent) -> None:
    """How an event composes must be known, never guessed: an unregistered mechanism is refused on record."""
    if event.mechanism not in MECHANISMS:
        raise ValueError(f"unregistered privacy mechanism {event.mechanism!r}: its module registers it with "
                         "privacy.register_mechanism (is the method's module imported?)")


def _one_gaussian(e: PrivacyEvent) -> bool:
    m = MECHANISMS[e.mechanism]  # PrivacyLedger.record refuses an unregistered mechanism
    return m.exact_gaussian and e.steps >= 1 and e.sample_rate == 1.0


def _pld_epsilon(events: list[PrivacyEvent], delta: float) -> float:
    from dp_accounting import dp_event as dpe
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    for e in events:
        if e.steps < 1:  # a run stopped before its first step released nothing
            continue
        g = dpe.GaussianDpEvent(e.noise_multiplier)
        if e.sample_rate < 1.0:
            g = dpe.PoissonSampledDpEvent(e.sample_rate, g)
        acc.compose(dpe.SelfComposedDpEvent(g, e.steps) if e.steps > 1 else g)
    return float(acc.get_epsilon(delta))


# ---------------------------------------------------------------- the release

def clip_embeddings(embeddings: torch.Tensor, *, max_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm <= max_norm (rows already inside are unchanged).

    A row with a NaN or infinite entry becomes the zero vector: left alone it would turn
    the whole released sum into NaN and so reveal its presence (unbounded privacy loss).
    """
    if not (max_norm > 0 and math.isfinite(max_norm)):  # NaN included: never "no clipping"
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm}")
    e = embeddings.to(torch.float64)
    e = torch.where(torch.isfinite(e).all(dim=1, keepdim=True), e, torch.zeros_like(e))
    norms = e.norm(dim=1, keepdim=True)
    clipped = e * torch.clamp(max_norm / norms.clamp_min(1e-300), max=1.0)
    # Guard against rounding: the bound is what the guarantee rests on.
    over = clipped.norm(dim=1) > max_norm
    if over.any():
        clipped[over] = clipped[over] * (max_norm / clipped[over].norm(dim=1, keepdim=True)) * (1 - 1e-12)
    return clipped


def clipped_mean(embeddings: torch.Tensor, *, max_norm: float = 1.0) -> torch.Tensor:
    """The exact (not private) mean of the clipped embeddings, as ``release_mean`` clips them.

    For public data (H's anchor) or the data owner's own view only; never released.
    """
    return clip_embeddings(embeddings, max_norm=max_norm).mean(0).float()


def private_generator(device: torch.device | str | None = None) -> torch.Generator:
    """A generator seeded by the OS, for noise on private data, on the device the noise is drawn on.

    Opacus draws DP-SGD's noise on the parameters' device and needs a generator there (a CPU
    generator for CUDA parameters fails); Poisson sampling and the one-shot releases use the CPU.
    """
    return torch.Generator(device=torch.device(device or "cpu")).manual_seed(secrets.randbits(63))


@dataclass(frozen=True)
class ReleasedMean:
    """The DP output of one release: everything here is safe to show and to keep."""

    mean: torch.Tensor  # (d,) noisy mean embedding (float32)
    noisy_count: float
    noise_std_mean: float  # std of the noise in ``mean``: sigma * Delta / max(n~, 1)
    event: PrivacyEvent


def release_mean(
    embeddings: torch.Tensor,
    *,
    epsilon: float,
    delta: float = DEFAULT_DELTA,
    clip_norm: float = 1.0,
    count_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> ReleasedMean:
    """One (epsilon, delta)-DP release of the mean embedding and count of a private set.

    ``embeddings`` (n, d) is private. ``generator`` is for public-data training and
    tests only; the private path leaves it None (OS-seeded noise).
    """
    check_epsilon_delta(epsilon, delta)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError("embeddings must be a non-empty (n, d) tensor")
    if count_scale <= 0:
        raise ValueError("count_scale must be > 0")
    clipped = clip_embeddings(embeddings, max_norm=clip_norm)
    multiplier = calibrate_gaussian(epsilon=epsilon, delta=delta)
    return _gaussian_sum_count(clipped, epsilon=epsilon, delta=delta, noise_multiplier=multiplier,
                              clip_norm=clip_norm, count_scale=count_scale, generator=generator)


def signal_share(mean: torch.Tensor, noise_std: float, anchor: torch.Tensor | None = None) -> float:
    """rho = max(0, 1 - d s^2 / ||m~ - a||^2): the share of a released mean's distance from a public point a
    (default 0) that the noise does not explain (E||m~ - a||^2 = ||m - a||^2 + d s^2), James-Stein style, with
    s the noise std of each of the d coordinates. A function of the release and public constants only
    (post-processing). The hypernetwork scales its LoRA by it (measured first, issue 18: a fixed scale of 2
    helped at epsilon >= 1 and doubled FID on least-seen-100 at epsilon <= 0.5, where the release is mostly
    noise); the quadratic EM shrinks its step by it."""
    m = mean.detach().reshape(-1).double().cpu()
    a = torch.zeros_like(m) if anchor is None else anchor.detach().reshape(-1).double().cpu()
    dist2 = float(((m - a) ** 2).sum())
    noise2 = m.numel() * float(noise_std) ** 2
    if not math.isfinite(noise2) or not math.isfinite(dist2) or dist2 <= 0:
        return 0.0
    return max(0.0, 1.0 - noise2 / dist2)


def _gaussian_sum_count(
    clipped: torch.Tensor,
    *,
    epsilon: float,
    delta: float,
    noise_multiplier: float,
    clip_norm: float,
    count_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> ReleasedMean:
    """The noisy sum-and-count step of ``release_mean``, with every privacy parameter explicit.

    ``release_mean`` is the only caller in the private path: it passes rows it clipped itself
    and the multiplier it calibrated. The audit calls this directly with deliberately wrong
    arguments (unclipped rows, a tenth of the noise) to show that it catches them; that is
    an explicit argument of a separate path, never a patch of this module (which every
    session of the server shares).
    """
    d = clipped.shape[1]
    rows = clipped.to(torch.float64)
    augmented = torch.cat([rows, torch.full((rows.shape[0], 1), float(count_scale), dtype=torch.float64)], 1)
    total = augmented.sum(0)
    sensitivity = math.sqrt(clip_norm ** 2 + count_scale ** 2)
    multiplier = float(noise_multiplier)
    if multiplier > 0:
        gen = generator if generator is not None else private_generator()
        total = total + torch.randn(d + 1, generator=gen, dtype=torch.float64) * (multiplier * sensitivity)
    noisy_count = float(total[d] / count_scale)
    denom = max(noisy_count, 1.0)  # no blow-up when noise drives the count near or below 0
    mean = (total[:d] / denom).to(torch.float32)
    if math.isfinite(epsilon) and delta >= 1.0 / denom:
        warnings.warn(f"delta = {delta:g} is not below 1/n (n ~ {noisy_count:.0f}): the guarantee is weak; "
                      "use a smaller delta.", PrivacyWarning, stacklevel=3)
    event = PrivacyEvent(mechanism=SUM_COUNT, epsilon=epsilon, delta=delta,
                         noise_multiplier=multiplier, sensitivity=sensitivity,
                         accountant="analytic_gaussian" if multiplier > 0 else "none (non-private)")
    return ReleasedMean(mean=mean, noisy_count=noisy_count,
                        noise_std_mean=multiplier * sensitivity / denom, event=event)
