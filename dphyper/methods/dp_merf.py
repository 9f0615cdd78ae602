"""dp-merf: one noisy mean of random Fourier features of the private images, then a free fit (Harder,
Adamczewski & Park, "DP-MERF: Differentially Private Mean Embeddings with Random Features for Practical
Privacy-Preserving Data Generation", AISTATS 2021). The closest prior art of the hypernetwork: the same
"noise once into one low-dimensional dataset embedding" idea, decoded by optimisation instead of an
amortised network.

The release (the only access to the private images)
----------------------------------------------------
* **Features.** ``features=rff`` (the paper's): f(x) = D^(-1/2) [cos(W x), sin(W x)] in R^(2D), x the
  1,024 pixels in [-1, 1], W (D x 1,024) with i.i.d. N(0, 1 / l^2) entries drawn from a *public* seed
  (``feature_seed``), so that f(x) . f(y) estimates the Gaussian kernel exp(-||x - y||^2 / (2 l^2))
  (Rahimi & Recht 2007). l = ``bandwidth`` x the median pairwise distance of a public sample (the
  median heuristic; public). Every row has norm exactly 1 (cos^2 + sin^2 = 1); the clip to 1 is done
  in code anyway (``privacy.release_mean``), so the bound never rests on float arithmetic, and a
  non-finite row becomes 0. ``features=phi``: the public encoder's 64-d embedding, clipped to 1: the
  hypernetwork's own release, so that ``refit`` can decode a hypernetwork release too.
* **One Gaussian release**, ``privacy.release_mean``: the sum of the rows with a constant 1 appended
  (the count travels inside the sum), plus N(0, (s sqrt 2)^2 I), s from the exact analytic Gaussian
  calibration for (epsilon, delta); the noise generator is seeded by the operating system.

Privacy. Adjacency: add/remove-one image (the app's). Adding an image adds one row (f(x), 1) with
||(f(x), 1)|| <= sqrt(1 + 1) = sqrt 2 to the released sum and changes nothing else, so the L2
sensitivity is sqrt 2 and the Gaussian mechanism with noise std s sqrt 2 is (epsilon, delta)-DP by the
analytic Gaussian (Balle & Wang 2018), 1/s-GDP for the ledger's exact composition: one
``gaussian_sum_count`` event, the same mechanism as the hypernetwork's and the quadratic EM's. The
paper's own sensitivity (2/n for the mean under replace-one) assumes a public n; we do not, so n stays
private (the noisy count is part of the release). W, l and every fit setting depend on public data and
public seeds only. Everything after the release (the weight fit, the LoRA trained on public images,
sampling, the report) reads the release, public data and public settings: post-processing, free of
privacy cost, so the fit can be re-run as often as wanted (the app's "Re-fit").

Float caveat as in ``privacy``: noise is drawn in float64 with torch (ideal real-valued mechanism).

The decoding (post-processing)
------------------------------
The paper trains a generator G to minimise ||m~ - mean_z f(G(z))||^2, m~ the released mean. Here, as
slicing does, the generator is fitted through its training distribution: weights w on a fixed public
pool (Fashion-MNIST train, P images with features F) minimise ||F^T w - m~||^2 + reg P ||w - u||^2 over
the simplex (u uniform), a quadratic with K = F F^T and c = F m~ (``public_fit.fit_simplex``). The
target is not m~ itself but m~ shrunk towards the public pool's mean feature F^T u by the release's signal
share rho (``privacy.signal_share``, as the hypernetwork and the quadratic EM do; ``shrink``): m~ is a noisy
sum over a noisy count, so at small n it is inflated (a referee measured E m~ = 1.69 m at n = 10, eps = 1;
1.003 m at n = 100) and noisy, and an inflated or noisy target pulls the simplex fit onto a few images.
Then the same LoRA as every method is trained by the denoising
loss on public images drawn with w (``public_fit.train_lora_on``). The honest difference from the paper:
the fit can only re-weight what the public pool holds (it cannot reach images unlike any public one), and
its samples' features are matched through their training data, not directly: differentiating through a
25-step sampler on a CPU costs hours. Cost: ``fit_steps`` x ``batch`` example gradients, all public.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import Cancelled, FailedAfterRelease
from ..privacy import _gaussian_sum_count, calibrate_gaussian, clip_embeddings, release_mean, signal_share
from ..public_data import public_pool_labelled
from ..public_fit import check_cancel, check_fit_settings, fit_simplex, stage, top_classes, train_lora_on
from ..run_config import PrivateRunConfig
from .base import (Audit, Method, MethodResult, StepsBudget, gaussian_release_report, shipped_defaults,
                   sum_count_noise_check)

FEATURES = ("rff", "phi")
PUBLIC_POOL = 4096  # the fixed public pool (Fashion-MNIST train), as in slicing, qem and pda-dpmd
MEDIAN_SAMPLE = 512  # public images whose median pairwise distance sets the length scale
LABEL = "DP-MERF"
SIGNAL_NOTE = 0.2  # below this signal share the report says the release is mostly noise


@dataclass
class DPMerfConfig(PrivateRunConfig):
    """`python -m dphyper run dp-merf`: one noisy mean of random features, then a free fit (a minute)."""

    features: str = field(default="rff", metadata={"help": "rff: random Fourier features of the pixels (the "
                                                           "paper's); phi: the public encoder's embedding (the "
                                                           "hypernetwork's release)"})
    # frequencies, bandwidth, reg: the public sweep's one_default (BENCHMARKS, sweep section)
    frequencies: int = field(default=250, metadata={"help": "D, random frequencies (2D features)"})
    bandwidth: float = field(default=1.0, metadata={"help": "kernel length scale, times the public median "
                                                            "pairwise pixel distance"})
    feature_seed: int = field(default=0, metadata={"help": "public seed of the random frequencies"})
    reg: float = field(default=0.0, metadata={"help": "pull of the fitted weights towards the uniform public pool"})
    fit_iters: int = field(default=500, metadata={"help": "FISTA iterations of the weight fit"})
    pool: int = field(default=2048, metadata={"help": "public images the fit may weight"})
    fit_steps: int = field(default=100, metadata={"help": "LoRA training steps on the weighted public images"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of the LoRA fit"})
    batch: int = field(default=32, metadata={"help": "images per LoRA training step"})
    fit_seed: int | None = field(default=None, metadata={"help": "seed of the fit (public randomness; none = drawn)"})
    shrink: bool = field(default=True, metadata={"help": "shrink the target towards the public mean by the "
                                                         "release's signal share (off only for the ablation)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {self.features!r}")
        if self.frequencies < 1:
            raise ValueError("frequencies must be >= 1")
        check_fit_settings(self, PUBLIC_POOL, ("bandwidth", "lr"))


# ---------------------------------------------------------------- the feature map (public)


@dataclass(frozen=True)
class FeatureMap:
    """The public map f and the public pool's rows under it."""

    W: torch.Tensor | None  # (D, 1024) frequencies (None for phi)
    length_scale: float  # l (0 for phi)
    F: torch.Tensor  # (P, d) public rows (clipped to 1), the candidates of the fit
    labels: torch.Tensor  # (P,) public class labels (for the report)
    images: torch.Tensor  # (P, 1, 32, 32) the public pool the LoRA fit draws from


_public_lock = threading.Lock()
_public: dict[tuple, FeatureMap] = {}


def median_distance(images: torch.Tensor) -> float:
    """The median pairwise L2 distance of (public) images' pixels."""
    x = images.reshape(len(images), -1).double()
    d = torch.cdist(x, x)
    return float(d[torch.triu_indices(len(x), len(x), 1).unbind()].median())


def frequencies(d: int, count: int, length_scale: float, seed: int) -> torch.Tensor:
    """W (count, d): i.i.d. N(0, 1 / l^2) from a public seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, d, generator=g, dtype=torch.float64) / length_scale


def rff(images: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """f(x) = D^(-1/2) [cos(W x), sin(W x)]: rows of norm 1 (float64, CPU)."""
    proj = images.reshape(len(images), -1).to(torch.float64).cpu() @ W.T
    return torch.cat([proj.cos(), proj.sin()], 1) / math.sqrt(W.shape[0])


def _map_id(cfg: DPMerfConfig) -> tuple:
    from ..checkpoints import encoder_id

    if cfg.features == "phi":
        return ("phi", cfg.pool, encoder_id())
    return ("rff", cfg.pool, cfg.frequencies, cfg.bandwidth, cfg.feature_seed)


def feature_map(cfg: DPMerfConfig, models) -> FeatureMap:
    """W, l and the public candidates' rows: computed once per process and setting."""
    from ..encoder import embed

    key = _map_id(cfg)
    with _public_lock:
        if key not in _public:
            images, labels = public_pool_labelled(cfg.pool, PUBLIC_POOL)
            if cfg.features == "phi":
                W, ell, F = None, 0.0, embed(images, models.encoder).double()
            else:
                sample, _ = public_pool_labelled(min(MEDIAN_SAMPLE, PUBLIC_POOL), PUBLIC_POOL)
                ell = cfg.bandwidth * median_distance(sample)
                W = frequencies(images[0].numel(), cfg.frequencies, ell, cfg.feature_seed)
                F = rff(images, W)
            _public[key] = FeatureMap(W=W, length_scale=ell, F=clip_embeddings(F, max_norm=1.0), labels=labels,
                                      images=images)
        return _public[key]


def private_features(images: torch.Tensor, cfg: DPMerfConfig, fmap: FeatureMap, models) -> torch.Tensor:
    if cfg.features == "phi":
        from ..encoder import embed

        return embed(images, models.encoder).double()
    return rff(images, fmap.W)


# ---------------------------------------------------------------- the fit (post-processing)


@dataclass(frozen=True)
class MerfRelease:
    """The DP output with the public map it was made with (a release is re-fitted only under the same map)."""

    release: object  # a privacy.ReleasedMean
    settings: tuple

    @property
    def event(self):
        return self.release.event


@dataclass(frozen=True)
class Fit:
    weights: torch.Tensor  # (P,) over the public pool, sums to 1
    distance: float  # ||F^T w - m~|| at the fit
    distance_uniform: float  # ... at the uniform public pool (the base model's own data)
    effective_size: float  # 1 / sum w^2


def target(rel, fmap: FeatureMap, rho: float) -> torch.Tensor:
    """The fit's target: the released mean shrunk towards the public mean feature by ``rho`` (1 = the release)."""
    center = fmap.F.mean(0)
    return center + rho * (rel.mean.double().reshape(-1) - center)


def fit_release(mean: torch.Tensor, fmap: FeatureMap, cfg: DPMerfConfig, cancel=None) -> Fit:
    """The public weights whose feature mean is nearest the released mean (``public_fit.fit_simplex``)."""
    m = mean.double().reshape(-1)
    F = fmap.F
    K, c = F @ F.T, F @ m
    u = torch.full((len(F),), 1.0 / len(F), dtype=torch.float64)
    w = fit_simplex(K, c, u, reg=cfg.reg, iters=cfg.fit_iters, cancel=cancel, label=LABEL)
    return Fit(weights=w, distance=float((F.T @ w - m).norm()), distance_uniform=float((F.T @ u - m).norm()),
               effective_size=float(1 / (w ** 2).sum()))


def refit(rel, cfg: DPMerfConfig, models, *, progress=None, cancel=None) -> MethodResult:
    """Everything after the release (a ``privacy.ReleasedMean``: this method's, or with ``features=phi`` the
    hypernetwork's): reads only the release, public data and settings (no privacy cost)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    stage(progress, f"{LABEL}: weighting the public images to match the release (post-processing: no further ε)",
          cfg.fit_steps)
    fmap = feature_map(cfg, models)
    kept = rel
    # A bare ReleasedMean is the hypernetwork's (phi embeddings, clipped to 1): only features=phi decodes it.
    settings = rel.settings if isinstance(rel, MerfRelease) else _map_id(DPMerfConfig(features="phi", pool=cfg.pool))
    rel = rel.release if isinstance(rel, MerfRelease) else rel
    if settings[:1] + settings[2:] != _map_id(cfg)[:1] + _map_id(cfg)[2:] or rel.mean.numel() != fmap.F.shape[1]:
        raise ValueError(f"this release was made with another feature map ({settings[0]}, {rel.mean.numel()} "
                         "coordinates): re-fit it with its own settings")
    share_of_signal = signal_share(rel.mean, rel.noise_std_mean, fmap.F.mean(0))
    fit = fit_release(target(rel, fmap, share_of_signal if cfg.shrink else 1.0), fmap, cfg, cancel=cancel)
    timings["fit_weights"] = time.perf_counter() - t
    seed = cfg.fit_seed if cfg.fit_seed is not None else secrets.randbits(31)
    t = time.perf_counter()
    lora, losses = train_lora_on(fit.weights, fmap.images, models, torch.Generator().manual_seed(seed),
                                 steps=cfg.fit_steps, lr=cfg.lr, batch=cfg.batch, label=LABEL, progress=progress,
                                 cancel=cancel)
    timings["fit_lora"] = time.perf_counter() - t
    shares, top, top_share = top_classes(fit.weights, fmap.labels)
    what = (f"{2 * cfg.frequencies} random Fourier features (cos and sin of {cfg.frequencies} random frequencies) "
            f"of the pixels, length scale {fmap.length_scale:.3g}"
            if cfg.features == "rff" else "the public encoder's 64-d embedding")
    report = gaussian_release_report("dp-merf", rel, rel.event.epsilon, detail=f"mean of {what}, each row "
                                                                                "clipped to 1, + count")
    report.update({
        "features": cfg.features, "frequencies": cfg.frequencies if cfg.features == "rff" else None,
        "bandwidth": cfg.bandwidth if cfg.features == "rff" else None, "feature_seed": cfg.feature_seed,
        "reg": cfg.reg, "pool": cfg.pool, "fit_steps": cfg.fit_steps, "lr": cfg.lr, "fit_seed": seed,
        "distance": round(fit.distance, 4), "distance_uniform": round(fit.distance_uniform, 4),
        "effective_public_images": round(fit.effective_size, 1),
        "public_class_shares": shares,
        "signal_share": round(share_of_signal, 3),
        "note": (f"the fit weighted the public images towards {top} "
                 f"({top_share:.0%}); re-fitting costs no ε" if share_of_signal >= SIGNAL_NOTE else
                 f"at this ε the release is mostly noise (signal share {share_of_signal:.2f}): the fit stays near "
                 "the public data; re-fitting costs no ε"),
    })
    return MethodResult(adapter=lora, report=report, events=(), timings=timings, losses=losses,
                        owner={"release": kept})


def train(images: torch.Tensor, cfg: DPMerfConfig, models, *, progress=None, cancel=None) -> MethodResult:
    t = time.perf_counter()
    stage(progress, f"{LABEL}: the public feature map (once per server and setting)", cfg.fit_steps)
    fmap = feature_map(cfg, models)
    public_seconds = time.perf_counter() - t
    check_cancel(cancel, LABEL)  # a cancel before the release: nothing is released
    stage(progress, f"{LABEL}: the one noisy release of your images' mean features", cfg.fit_steps)
    t = time.perf_counter()
    feats = private_features(images, cfg, fmap, models)
    rel = release_mean(feats, epsilon=cfg.epsilon, delta=cfg.delta)  # clip to 1, + count, OS-seeded noise
    clean = clip_embeddings(feats, max_norm=1.0).mean(0)  # owner-only view; never written
    n = len(feats)
    del feats  # private; nothing below sees it
    release_seconds = time.perf_counter() - t
    try:
        result = refit(MerfRelease(rel, _map_id(cfg)), cfg, models, progress=progress, cancel=cancel)
    except Cancelled:
        raise  # before anything was shown: the release is dropped with the run
    except Exception as exc:  # noqa: BLE001  (the release was made: the caller's ledger must still count it)
        raise FailedAfterRelease((rel.event,), exc) from exc
    result.events = (rel.event,)
    result.owner["noise_check"] = sum_count_noise_check(rel, clean, n)
    result.timings.update({"public_features": public_seconds, "release": release_seconds})
    return result


def plan(n: int, epsilon: float, delta: float, max_steps: int) -> str:
    d = DPMerfConfig()
    return (f"one noisy mean of {2 * d.frequencies} random features, then a free fit of {max_steps or d.fit_steps} "
            "steps on weighted public images")


def identity() -> dict:
    from ..checkpoints import encoder_id, hypernet_a_id

    # the encoder (features=phi) and H's public A with the base UNet (the LoRA it fits starts there)
    return {"defaults": shipped_defaults(DPMerfConfig), "encoder": encoder_id(), "A": hypernet_a_id()}


def cost(hp: dict, n: int) -> int:
    """Example-gradient evaluations: the LoRA fit on public images (the release itself is a forward pass)."""
    d = DPMerfConfig()
    return int(hp.get("fit_steps", d.fit_steps) * hp.get("batch", d.batch))


SWEEP = {"stage1": [{"frequencies": D, "bandwidth": b} for D in (250, 1000) for b in (0.25, 0.5, 1.0)],
         # reg 1e6 pins the weights to the uniform public pool: the public-only control; phi: the same
         # decoder on the hypernetwork's kind of release
         "stage2": lambda n: [{"reg": 1e6}, {"reg": 0.0}, {"reg": 0.01}, {"fit_steps": 300}, {"features": "phi"}]}


# ---------------------------------------------------------------- audit

VARIANTS = ("none", "no-clip", "weak-noise", "exact-count")


def _audited_sum(rows: torch.Tensor, cfg) -> tuple[torch.Tensor, float]:
    """The released (sum, count) under audit: the shipped ``release_mean`` on DP-MERF's rows, or an explicitly
    broken copy (never a patch of ``dphyper.privacy``, which a server shares with every session).

    ``rows`` are the *unscaled* features (D^(1/2) f(x), norm sqrt D): as shipped they are scaled by
    D^(-1/2) first and clipped in code. ``no-clip``: the scale forgotten and no clip (the noise still sized
    for norm 1; rff rows have norm 1 by construction, so dropping the clip alone would be harmless: the bug
    that matters is the two together); ``weak-noise``: a tenth of the noise; ``exact-count``: the count released without noise."""
    D = rows.shape[1] / 2
    multiplier = calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta)
    if cfg.broken == "none":
        rel = release_mean(rows / math.sqrt(D), epsilon=cfg.epsilon, delta=cfg.delta)  # as shipped, OS-seeded
    elif cfg.broken == "no-clip":
        rel = _gaussian_sum_count(rows, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=multiplier,
                                  clip_norm=1.0)
    else:
        mult = multiplier / 10 if cfg.broken == "weak-noise" else multiplier
        rel = _gaussian_sum_count(clip_embeddings(rows / math.sqrt(D), max_norm=1.0), epsilon=cfg.epsilon,
                                  delta=cfg.delta, noise_multiplier=mult, clip_norm=1.0)
    count = float(len(rows)) if cfg.broken == "exact-count" else rel.noisy_count
    return rel.mean.double() * max(rel.noisy_count, 1.0), count


def audit_scores(cfg, member: np.ndarray, frequencies_: int = 250) -> np.ndarray:
    """The audit of ``python -m dphyper audit --method dp-merf`` (``dphyper.audit`` does the statistics).

    Real random Fourier features (the shipped map's construction with D = 250; l from the median heuristic on
    the audited records themselves, fixed over the trials and without the canary) of n public Fashion-MNIST
    images; the canary is a public image turned upside down and inverted (far from the
    data in pixel space); the attacker knows every other record. Score: the noisy sum's excess along the
    canary's feature row plus the noisy count's excess (each moves by exactly 1 under the shipped map), or the
    count's excess alone (the audit picks one on its selection half)."""
    from ..data import load_fashion_mnist_uint8, uint8_to_tensor

    images, _ = load_fashion_mnist_uint8("train")
    rng = np.random.default_rng(cfg.seed)
    pick = uint8_to_tensor(images[rng.choice(len(images), cfg.n + 1, replace=False)])
    data, canary = pick[:cfg.n], -pick[cfg.n:].flip(-2)
    W = frequencies(data[0].numel(), frequencies_, median_distance(data[:MEDIAN_SAMPLE]), cfg.seed)
    unscaled = rff(torch.cat([data, canary]), W) * math.sqrt(frequencies_)  # norm sqrt D per row
    rows, crow = unscaled[:cfg.n], unscaled[cfg.n:]
    u = crow[0] / crow[0].norm()
    # the attacker knows every other record (as the variant releases them: unscaled without the clip)
    known = rows.sum(0) if cfg.broken == "no-clip" else rows.sum(0) / math.sqrt(frequencies_)
    scores = np.empty((len(member), 2))
    for i, m in enumerate(member):
        x = torch.cat([rows, crow]) if m else rows
        total, count = _audited_sum(x, cfg)
        scores[i] = float((total - known) @ u) + (count - cfg.n), count - cfg.n
    return scores


DP_MERF = Method(name="dp-merf", label="DP-MERF", config_cls=DPMerfConfig, train=train, one_shot=False,
                 noise=f"once, into the mean of {2 * DPMerfConfig().frequencies:,} random features of the pixels and "
                       "the count (then a free fit)",
                 identity=identity, sweep=SWEEP, one_default=True, cost=cost, duration="about 30 s on CPU", plan=plan,
                 refit=refit, audit=Audit(audit_scores, variants=VARIANTS),
                 smallest={"frequencies": 16, "pool": 64, "fit_iters": 20, "fit_steps": 3, "batch": 4},
                 budget=StepsBudget("fit_steps"), budget_unit="steps of the free fit", refit_fresh=("fit_seed",),
                 relation="The hypernetwork's idea before it: one noisy mean embedding of the images. DP-MERF "
                          "decodes it by optimisation (a fit to the release) instead of one forward pass.")
