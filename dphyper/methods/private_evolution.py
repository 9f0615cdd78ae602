"""private-evolution (alias ``pe``): no parameter is adapted at all. The base model's sampler is the random API, a
noise-and-denoise variation of an image (SDEdit) the variation API, and the private images only ever vote
(Lin et al., "Differentially Private Synthetic Data via Foundation Model APIs 1: Images", ICLR 2024; our
implementation of the paper's Algorithm 1, written from the paper: microsoft/DPSDA was read, not copied).

The algorithm
-------------
1. A population S_0 of M images from the base model (``population``; DDIM, the sampling steps).
2. For t = 1 .. T (``rounds``): every private image votes for its ``votes`` = k nearest members of S_{t-1} in
   an embedding that is not the evaluator's (``space``: the public encoder phi, or the pixels), each vote of
   weight 1 / sqrt(k); the histogram h_t (M bins) is released with Gaussian noise; every bin is lowered by
   ``threshold`` x the noise std and those below 0 dropped (the paper's max(h - H, 0)); M images are drawn from
   S_{t-1} with probability proportional to what is left
   (all zero: S_{t-1} is kept as it is); S_t is their SDEdit variation at a strength falling linearly from
   ``strength`` to ``strength_end``.
3. The released set: ``final`` images drawn the same way by the last histogram and varied at ``strength_end``.
   The method's samples are drawn from that set (``adapters.FORMATS["images"]``: its artifact is the set).

Privacy (the whole argument)
----------------------------
Adjacency: add/remove-one image (the app's). The only access to the private images is the T histograms.
In round t, image x adds the vector v_t(x) with k entries 1 / sqrt(k) (its k nearest candidates, whatever
the values: a NaN embedding still casts exactly k votes), ||v_t(x)|| = 1, and changes nothing else, so each
histogram has L2 sensitivity 1. It is released with N(0, sigma^2 I), sigma = sqrt(T) s, s from the exact
analytic Gaussian calibration for (epsilon, delta) (OS-seeded noise). The candidates S_{t-1} of round t are
a function of the earlier noisy histograms and public randomness only, so the rounds are an adaptive
composition of T Gaussian mechanisms, each 1/sigma-GDP; by the GDP composition theorem (Dong, Roth & Su
2022, Cor. 2; adaptive) together sqrt(T)/sigma = 1/s-GDP, i.e. (epsilon, delta)-DP for exactly the
calibrated pair. The ledger records one ``gaussian_vote_histograms`` event with ``steps`` = T and composes
it exactly as that Gaussian. Thresholding, resampling, variations, the final set, its draws and the report
read only the noisy histograms and public data: post-processing. The total of a noisy histogram is a noisy
count (the release, so covered); no exact count is ever shown. The public randomness (the initial noise, the
variations and the resampling) comes from ``pe_seed``, reported; a fixed seed reproduces everything except
the privacy noise.

Model calls. M x steps for S_0, about M x strength_t x steps per round, about ``final`` x strength_end x steps
for the released set (``model_calls`` in the report: UNet evaluations of one image). The literature (PCEvolve)
reports that PE struggles on small private sets: with n = 100 votes over M bins a bin holds n / M votes on
average, against a noise std of sqrt(T) s (about 5.3 at epsilon = 1 with the default T = 2; 7.5 at T = 4): the
release is then mostly
noise and the threshold keeps the population near the base model's. The benchmark shows it, honestly.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..privacy import PrivacyEvent, calibrate_gaussian, check_epsilon_delta, private_generator, register_mechanism
from ..errors import Cancelled, FailedAfterRelease
from ..public_fit import check_cancel
from ..run_config import PrivateRunConfig
from .base import Audit, Method, MethodResult, epsilon_for_report

SPACES = ("phi", "pixels")
# T adaptively chosen Gaussian histograms on the whole set (the argument above): exact GDP composition.
MECHANISM = register_mechanism("gaussian_vote_histograms", exact_gaussian=True,
                               words=lambda e: f"{e.steps} rounds of noisy votes")
LABEL = "Private Evolution"
SAMPLE_CHUNK = 32  # the initial population is drawn this many images at a time (progress, cancel)


@dataclass
class PEConfig(PrivateRunConfig):
    """`python -m dphyper run private-evolution`: noisy nearest-neighbour votes steer the base model's samples."""

    # population, rounds, votes, strength: the public sweep's one_default (BENCHMARKS, sweep section)
    population: int = field(default=64, metadata={"help": "M, synthetic images per round"})
    rounds: int = field(default=2, metadata={"help": "T, noisy vote histograms (the budget is split over them)"})
    votes: int = field(default=4, metadata={"help": "k, nearest synthetic images each private image votes for "
                                                    "(each vote 1/sqrt(k): sensitivity 1)"})
    space: str = field(default="phi", metadata={"help": "where the votes' distances are taken: phi (the public "
                                                        "encoder) or pixels"})
    threshold: float = field(default=2.0, metadata={"help": "H in noise stds: each bin is lowered by H and those "
                                                               "below 0 dropped"})
    strength: float = field(default=0.8, metadata={"help": "SDEdit strength of the first round's variations"})
    strength_end: float = field(default=0.2, metadata={"help": "... of the last round's and the released set's"})
    final: int = field(default=512, metadata={"help": "size of the released synthetic set"})
    pe_seed: int | None = field(default=None, metadata={"help": "seed of the public randomness (sampling, "
                                                                "variations, resampling; none = drawn)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, got {self.space!r}")
        if self.population < 1 or self.rounds < 1 or self.final < 1 or not 1 <= self.votes <= self.population:
            raise ValueError("population, rounds and final must be >= 1; votes in [1, population]")
        for name in ("strength", "strength_end"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not (self.threshold >= 0 and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold}")


# ---------------------------------------------------------------- the release


def nearest(private: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) indices of each private row's k nearest candidates (always k distinct indices per row).

    Each row's votes depend on that row and the candidates only, bit for bit: distances without cdist's
    matrix-multiply path (whose rounding depends on the other rows; a DP review found one vote in 5,980 moved
    when a row was removed, with duplicate candidates), and ties broken by a stable sort (lowest index)."""
    d = torch.cdist(private.double(), candidates.double(), compute_mode="donot_use_mm_for_euclid_dist")
    d = torch.nan_to_num(d, nan=math.inf)  # a NaN row still votes (k arbitrary bins), never more
    return torch.sort(d, dim=1, stable=True).indices[:, :k]


def vote_histogram(idx: torch.Tensor, bins: int, *, noise_std: float, weight: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The released histogram: ``weight`` per vote (the private path: 1 / sqrt(k)) plus N(0, noise_std^2) per bin.

    ``vote_round`` is the only caller in the private path; the audit calls this with deliberately wrong
    arguments (weight 1 with k votes, a tenth of the noise, one round's noise) to show that it catches them."""
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"the noise std must be a finite number >= 0, got {noise_std}")  # never "no noise" by NaN
    hist = torch.zeros(bins, dtype=torch.float64).index_add_(
        0, idx.reshape(-1), torch.full((idx.numel(),), float(weight), dtype=torch.float64))
    if noise_std > 0:
        gen = generator if generator is not None else private_generator()
        hist = hist + torch.randn(bins, generator=gen, dtype=torch.float64) * noise_std
    return hist


def round_noise(epsilon: float, delta: float, rounds: int) -> tuple[float, float]:
    """(s, sigma): the multiplier of the whole run and the noise std of each round's histogram, sqrt(T) s."""
    check_epsilon_delta(epsilon, delta)
    s = calibrate_gaussian(epsilon=epsilon, delta=delta)
    return s, s * math.sqrt(rounds)


def release_votes(idx: torch.Tensor, bins: int, *, votes: int, noise_std: float) -> torch.Tensor:
    """The shipped weighting: each of a row's ``votes`` = k votes weighs 1 / sqrt(k) (sensitivity 1)."""
    if idx.ndim != 2 or idx.shape[1] != votes:
        raise ValueError(f"every private image casts exactly {votes} votes")
    # 1/sqrt(k) rounds up for some k (k w^2 = 1 + 2e-16): a relative margin of 1e-12, far above any summation
    # order's rounding, keeps the squared norm of a row's votes <= 1 however it is added up
    w = (1.0 - 1e-12) / math.sqrt(votes)
    return vote_histogram(idx, bins, noise_std=noise_std, weight=w)


def vote_round(private: torch.Tensor, candidates: torch.Tensor, *, votes: int, noise_std: float) -> torch.Tensor:
    """One round's release (private path: OS-seeded noise)."""
    return release_votes(nearest(private, candidates, votes), len(candidates), votes=votes, noise_std=noise_std)


# ---------------------------------------------------------------- the run


def embed_for_votes(images: torch.Tensor, space: str, models, *, alone: bool = False) -> torch.Tensor:
    """The votes' space. ``alone``: each image through the encoder by itself (the private images: the encoder's
    batched arithmetic differs in the last bits with the batch, and a row's vote must not depend on the others)."""
    if space == "pixels":
        return images.reshape(len(images), -1).double().cpu()
    from ..encoder import embed

    return embed(images, models.encoder, batch_size=1 if alone else 64).double()


def resample(pop: torch.Tensor, hist: torch.Tensor, cut: float, size: int, gen: torch.Generator) -> tuple:
    """``size`` members of ``pop`` drawn by the thresholded noisy histogram (post-processing); the number of
    bins that survived the threshold."""
    kept = (hist - cut).clamp_min(0) if cut > 0 else hist.clamp_min(0)
    alive = int((kept > 0).sum())
    if alive == 0:  # the release was all noise: keep the population's own distribution
        kept = torch.ones_like(hist)
    idx = torch.multinomial(kept, size, replacement=True, generator=gen)
    return pop[idx], alive


def strengths(cfg: PEConfig) -> list[float]:
    T = cfg.rounds
    return [cfg.strength + (cfg.strength_end - cfg.strength) * (t / (T - 1) if T > 1 else 1.0) for t in range(T)]


def _calls(images: int, strength: float, steps: int) -> int:
    start = min(max(int(round((1.0 - strength) * steps)), 0), steps)
    return images * (steps - start)


def train(images: torch.Tensor, cfg: PEConfig, models, *, progress=None, cancel=None) -> MethodResult:
    from ..diffusion import sample, vary

    s, sigma = round_noise(cfg.epsilon, cfg.delta, cfg.rounds)
    seed = cfg.pe_seed if cfg.pe_seed is not None else secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    timings: dict[str, float] = {}

    def report_stage(step: int, desc: str) -> None:
        if progress is not None:
            progress({"stage": "evolve", "step": step, "total": total, "eta_seconds": None, "desc": desc})

    chunks = [min(SAMPLE_CHUNK, cfg.population - i) for i in range(0, cfg.population, SAMPLE_CHUNK)]
    total = len(chunks) + cfg.rounds + 1
    t = time.perf_counter()
    parts = []
    for i, size in enumerate(chunks):  # the base model's own images, a chunk at a time (progress, cancel)
        check_cancel(cancel, LABEL)
        parts.append(sample(models.unet, size, steps=cfg.steps, seed=seed + i))
        if progress is not None:
            per = (time.perf_counter() - t) / (i + 1)
            progress({"stage": "evolve", "step": i + 1, "total": total,
                      "eta_seconds": per * (len(chunks) - i - 1) * 1.8,  # the rounds cost about 0.8 of this
                      "desc": f"{LABEL}: {cfg.population} images from the base model, "
                              f"{sum(chunks[:i + 1])} / {cfg.population}"})
    pop = torch.cat(parts)
    calls = cfg.population * cfg.steps
    timings["sample_population"] = time.perf_counter() - t
    t = time.perf_counter()
    private = embed_for_votes(images, cfg.space, models, alone=True)  # private; only the votes below read it
    timings["embed"] = time.perf_counter() - t
    cut = cfg.threshold * sigma
    alive, hist = [], None
    vary_seconds = vote_seconds = 0.0
    votes_made = 0
    try:
        for r, st in enumerate(strengths(cfg)):
            check_cancel(cancel, LABEL)
            report_stage(len(chunks) + r + 1, f"{LABEL}: round {r + 1} / {cfg.rounds}, noisy votes and variations")
            t = time.perf_counter()
            hist = vote_round(private, embed_for_votes(pop, cfg.space, models), votes=cfg.votes, noise_std=sigma)
            votes_made += 1
            vote_seconds += time.perf_counter() - t
            if r == cfg.rounds - 1:
                break  # the last histogram picks the released set below
            chosen, a = resample(pop, hist, cut, cfg.population, gen)
            alive.append(a)
            t = time.perf_counter()
            pop = vary(models.unet, chosen, st, steps=cfg.steps, seed=int(torch.randint(2 ** 31, (1,), generator=gen)))
            vary_seconds += time.perf_counter() - t
            calls += _calls(cfg.population, st, cfg.steps)
        del private  # nothing below reads the private images
        check_cancel(cancel, LABEL)
        report_stage(total, f"{LABEL}: the released set ({cfg.final} images; post-processing)")
        chosen, a = resample(pop, hist, cut, cfg.final, gen)
        alive.append(a)
        t = time.perf_counter()
        released = vary(models.unet, chosen, cfg.strength_end, steps=cfg.steps,
                        seed=int(torch.randint(2 ** 31, (1,), generator=gen)))
        vary_seconds += time.perf_counter() - t
        calls += _calls(cfg.final, cfg.strength_end, cfg.steps)
    except Cancelled:
        raise  # nothing was shown: the histograms are dropped with the run
    except Exception as exc:  # noqa: BLE001  (histograms were made: the caller's ledger must still count them)
        if votes_made == 0:
            raise
        raise FailedAfterRelease((_event(cfg, sigma, votes_made),), exc) from exc
    timings.update({"votes": vote_seconds, "variations": vary_seconds})
    event = _event(cfg, sigma, cfg.rounds)
    report = {
        "method": "private-evolution", "private": event.private, "epsilon": epsilon_for_report(cfg.epsilon),
        "delta": cfg.delta, "noise_multiplier": sigma, "sensitivity": 1.0, "multiplier_of_the_run": s,
        "mechanism": f"{MECHANISM} ({cfg.rounds} rounds of {cfg.votes}-nearest-neighbour votes over "
                     f"{cfg.population} synthetic images in {cfg.space} space)",
        "accountant": event.accountant, "rounds": cfg.rounds, "population": cfg.population, "votes": cfg.votes,
        "space": cfg.space, "threshold": cfg.threshold, "strengths": [round(x, 3) for x in strengths(cfg)],
        "final": cfg.final, "pe_seed": seed, "model_calls": calls,
        "bins_above_threshold": alive,  # per round (a function of the noisy histograms)
        "note": ("the noisy votes steered the population" if min(alive) > 0 else
                 "at this ε some rounds' votes were all below the noise threshold: those rounds kept the base "
                 "model's samples"),
    }
    if not event.private:
        report["warning"] = "epsilon = inf: NO privacy (non-private reference)"
    return MethodResult(adapter={"images": released}, report=report, events=(event,), timings=timings,
                        adapter_format="images")


def budget(k: int) -> dict:
    """The page's step budget k: a population of k images (8 to 256) and a released set of 2k (16 to 512)."""
    return {"population": min(max(k, 8), 256), "final": min(max(2 * k, 16), 512)}


def plan(n: int, epsilon: float, delta: float, max_steps: int) -> str:
    cfg = PEConfig(**budget(max_steps)) if max_steps else PEConfig()
    calls = cost({"population": cfg.population, "final": cfg.final}, n)
    noise = (f"each round's vote noise std {round_noise(epsilon, delta, cfg.rounds)[1]:.1f} votes against about "
             f"{n / cfg.population:.1f} votes per image" if math.isfinite(epsilon) else "no noise (ε = ∞)")
    return (f"{cfg.rounds} rounds over {cfg.population} of the base model's images ({noise}); a released set of "
            f"{cfg.final} images; about {calls:,} model calls")


def _event(cfg: PEConfig, sigma: float, rounds: int) -> PrivacyEvent:
    """The run's privacy event: ``rounds`` Gaussian histograms of noise std sigma (sensitivity 1); a run that failed
    after r < T of them records r (its epsilon field is the run's claim, the ledger composes the r rounds)."""
    return PrivacyEvent(mechanism=MECHANISM, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=sigma,
                        sensitivity=1.0, steps=rounds,
                        accountant="analytic_gaussian (GDP composition)" if sigma > 0 else "none (non-private)")


def cost(hp: dict, n: int) -> int:
    """UNet evaluations of one image (forward only; the sweep's cap counts forward + backward as one, so this
    over-counts PE three-fold)."""
    d = PEConfig()
    cfg = PEConfig(**{k: v for k, v in hp.items() if k in PEConfig.__dataclass_fields__})
    calls = cfg.population * d.steps + sum(_calls(cfg.population, st, d.steps) for st in strengths(cfg)[:-1])
    return int(calls + _calls(cfg.final, cfg.strength_end, d.steps))


def identity() -> dict:
    from ..checkpoints import encoder_id
    from .base import shipped_defaults

    return {"defaults": shipped_defaults(PEConfig), "encoder": encoder_id()}


SWEEP = {"stage1": [{"population": M, "rounds": T} for M in (64, 256) for T in (2, 4)],
         "stage2": lambda n: [{"votes": 4}, {"threshold": 1.0}, {"strength": 0.8}, {"space": "pixels"}]}


# ---------------------------------------------------------------- audit

VARIANTS = ("none", "no-clip", "weak-noise", "one-round-noise")


# The audit's rounds T and votes k per variant: each bug shows most where it is largest (no-clip's excess is
# sqrt k, one-round-noise's sqrt T); the shipped mechanism and weak-noise at a middle size.
AUDIT_SHAPE = {"no-clip": (4, 64), "one-round-noise": (64, 1)}


def audit_scores(cfg, member: np.ndarray, bins: int = 128) -> np.ndarray:
    """The audit of ``python -m dphyper audit --method private-evolution``: the T-round vote release
    (``release_votes`` as shipped, on votes fixed in advance: k votes of weight 1/sqrt(k), noise sqrt(T) s per
    round; ``nearest``, which picks the votes, is covered by the tests). The n known records
    vote for fixed random bins; the canary votes for bins 0..k-1 in every round (the worst case: its votes
    never move). Score: the canary bins' noisy excess over the known votes, summed over the rounds. Broken
    variants, each an explicit argument of ``vote_histogram``: ``no-clip`` (each vote weight 1: sensitivity
    sqrt k, noise sized for 1), ``weak-noise`` (a tenth of the noise), ``one-round-noise`` (the noise of one
    round in each of the T rounds: the composition forgotten)."""
    rounds, k = AUDIT_SHAPE.get(cfg.broken, (8, 8))
    g = torch.Generator().manual_seed(cfg.seed)
    known = torch.randint(k, bins, (cfg.n, k), generator=g)  # others never vote for the canary's bins
    canary = torch.arange(k)[None]
    s, sigma = round_noise(cfg.epsilon, cfg.delta, rounds)
    w = 1.0 / math.sqrt(k)
    base = torch.zeros(bins, dtype=torch.float64).index_add_(0, known.reshape(-1),
                                                              torch.full((known.numel(),), w, dtype=torch.float64))
    # The T rounds of one trial in one call: round t's votes go to bins t*B .. t*B + B - 1 of one histogram of
    # T*B bins, which (independent noise per bin) is exactly T releases of B bins.
    offsets = (torch.arange(rounds) * bins)[:, None, None]
    mine = np.zeros(rounds * bins, dtype=bool)
    for t in range(rounds):
        mine[t * bins:t * bins + k] = True
    scores = np.empty(len(member))
    for i, m in enumerate(member):
        idx = torch.cat([known, canary]) if m else known
        stacked = (idx[None] + offsets).reshape(-1, k)
        if cfg.broken == "none":
            h = release_votes(stacked, rounds * bins, votes=k, noise_std=sigma)  # OS-seeded, as shipped
        else:
            h = vote_histogram(stacked, rounds * bins, noise_std={"weak-noise": sigma / 10, "one-round-noise": s}.get(
                cfg.broken, sigma), weight=1.0 if cfg.broken == "no-clip" else w)
        expected = base[:k] / w if cfg.broken == "no-clip" else base[:k]
        scores[i] = float(h[torch.from_numpy(mine)].sum() - rounds * expected.sum())
    return scores


PRIVATE_EVOLUTION = Method(
    name="private-evolution", label="Private Evolution", config_cls=PEConfig, train=train, one_shot=False,
    noise=f"into {PEConfig().rounds} rounds of votes: each private image picks the closest of the base model's own "
          "images",
    identity=identity, sweep=SWEEP, one_default=True, cost=cost, duration="minutes on CPU", budget=budget, plan=plan,
    budget_unit="images per round",
    adapter_format="images", audit=Audit(audit_scores, variants=VARIANTS),
    smallest={"population": 8, "rounds": 2, "final": 8}, aliases=("pe",),
    relation="No parameter is adapted at all: the private images only vote, round after round, for the base "
             "model's own samples that look like them. Its output is a set of images, not weights.")
