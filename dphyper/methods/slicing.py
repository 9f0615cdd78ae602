"""slicing: one noisy release of random low-dimensional projections ("slices") of the private
images, then a fit that only post-processes it (Greenewald et al., "Privacy without Noisy
Gradients: Slicing Mechanism for Generative Model Training", NeurIPS 2024; the smoothing of the
generated side follows DP-SWD, Rakotomamonjy & Ralaivola 2021). Our derivation, since no
reference code is public:

The release (the only access to the private images)
----------------------------------------------------
* **Features.** f(x) is either the 1,024 pixels (``space=pixels``, the default) or the public
  encoder's 64-d unit embedding (``space=embedding``). Chosen by the public sweep
  (docs/BENCHMARKS.md, public-coats-100, eps = 1): every embedding cell stayed at the base model's
  FID (318-325), pixels with 4 slices and C = 1 reached 292 (270 with reg = 0). A public centre mu (the mean feature of the public pool) is subtracted.
* **Projection.** V (d x k, orthonormal columns) is drawn from a *public* seed
  (``projection_seed``) and shipped in the report's settings. The paper's analysis can also
  use the randomness of a *secret* V (privacy amplification by random projection); we do not
  claim any of it, so V may be public and re-used, and the fit may use it.
* **Clipping, in code.** Each row r_i = clip((f(x_i) - mu) V, C) has ||r_i|| <= C
  (``privacy.clip_embeddings``; a non-finite row becomes 0).
* **Hiding the count.** One row per image would reveal n. The release always has N rows
  (``rows``, public, e.g. 1,000): the n rows of the folder and N - n zero rows, placed in a
  uniformly random order (an OS-seeded permutation). A folder with n > N is refused before
  anything is computed on it (the uploader's own error message; nothing is released).
* **Noise.** Y = R + sigma Z, Z with N x k i.i.d. N(0, 1) entries, sigma = s C, s from the
  project's exact analytic Gaussian calibration (``privacy.calibrate_gaussian``) for
  (epsilon, delta). The noise generator is seeded by the operating system.

Privacy. Adjacency: add/remove-one image (the app's). Let D' = D + {x}. A uniformly random
arrangement of D's padded multiset (n rows, N - n zeros), followed by replacing a uniformly
random zero row with x's row, is a uniformly random arrangement of D''s padded multiset
(n + 1 rows, N - n - 1 zeros). This couples the two permutations so that every coupled pair of
padded matrices differs in exactly one row, by at most ||r_x - 0|| <= C in Frobenius norm. For
each coupled pair the Gaussian mechanism with multiplier s is (epsilon, delta)-DP (its L2
sensitivity is C), and the hockey-stick divergence is jointly convex, so the mixtures over the
coupling (the actual output distributions) are (epsilon, delta)-indistinguishable in both
directions. The bound holds for every order of the hockey-stick divergence at once, and a shift
of at most C is dominated by a shift of exactly C, so (N(0, 1), N(1/s, 1)) is a dominating pair
of the mechanism (Zhu, Dong & Wang 2022, Def. 7), i.e. it is 1/s-GDP (Dong, Roth & Su 2022):
the ledger composes it as that Gaussian mechanism, an upper bound, like the other one-shot
Gaussian releases. The guarantee is over folders with 1 <= n <= N; the refusal of n > N is
seen only by the uploader, who knows n. Without the shuffle
(rows in folder order) adding one image could shift every later row: the audit's
``no-shuffle`` variant shows it; without the padding the number of rows is n: ``no-padding``.
Everything after Y (the fit, the LoRA training on public images, sampling, the report) reads
only Y, public data and public settings: post-processing, free of privacy cost, so the fit may
be re-run, longer or with another seed, as often as wanted (the app's "Re-fit" does).

Float caveat as in ``privacy``: noise is drawn in float64 with torch (ideal real-valued mechanism).
The private path draws the placement with ``random.SystemRandom().sample`` (exactly uniform from
the OS); torch's CPU ``randperm`` (tests and public tuning only) uses 32-bit modular draws.

The fit (post-processing)
-------------------------
The model of one released row is the mixture
    q_w = w_0 N(0, sigma^2 I) + sum_j w_j N(F_j, sigma^2 I),
where F_j = clip((f(p_j) - mu) V, C) are the public pool's rows (the same map as the private
ones) and w lies on the simplex (w_0 stands for the padding rows, so n/N is estimated too). The
generated side gets the *same* Gaussian smoothing as the release: that is what makes the
divergence consistent (it is zero at the true mixture in expectation), and ``smooth=False``
is the ablation. The divergence is a smoothed sliced MMD: L public random unit directions u_l
in R^k, a Gaussian kernel of width h on each slice, and the MMD between the empirical
distribution of the released u_l^T Y_i and u_l^T q_w. With Gaussian kernels and Gaussian
smoothing every expectation is closed-form (the kernel estimator, no adversary, no sampling):
E k_h(a + sigma Z, b) = h / sqrt(h^2 + sigma^2) exp(-(a - b)^2 / (2 (h^2 + sigma^2))), so the
objective is a quadratic w^T K w - 2 w^T c, minimised over the simplex from the uniform public pool,
with an optional pull towards it (``reg``); the generator (the same LoRA as every method) is then
trained without noise on public images drawn with w. Both steps are ``dphyper.public_fit``, shared
with DP-MERF. Cost: ``fit_steps`` x ``batch`` example gradients, none of them on private data.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import DataError
from ..public_data import public_pool_labelled
from ..sliced_mmd import directions, divergence_terms, mmd2  # noqa: F401  (directions: the tests')
from ..public_fit import check_cancel, check_fit_settings, fit_simplex, stage, top_classes, train_lora_on
from ..run_config import PrivateRunConfig
from ..errors import Cancelled, FailedAfterRelease
from ..privacy import (PrivacyEvent, PrivacyWarning, calibrate_gaussian, check_epsilon_delta, clip_embeddings,
                       private_generator, register_mechanism)
from .base import BROKEN_VARIANTS, Audit, Method, MethodResult, StepsBudget, epsilon_for_report, shipped_defaults

SPACES = ("embedding", "pixels")
PUBLIC_POOL = 4096  # the fixed public pool (Fashion-MNIST train), as in qem and pda-dpmd
# Dominated by one Gaussian mechanism (the argument above): exact GDP composition.
MECHANISM = register_mechanism("gaussian_sliced_rows", exact_gaussian=True,
                               words=lambda e: "one Gaussian release of padded slices")


@dataclass
class SlicingConfig(PrivateRunConfig):
    """`python -m dphyper run slicing`: one noisy release of random slices, then a free fit (minutes)."""

    space: str = field(default="pixels", metadata={"help": "what is projected: pixels or embedding (public encoder)"})
    slices: int = field(default=4, metadata={"help": "k, number of random projections (slices) per image"})
    clip: float = field(default=1.0, metadata={"help": "C, bound on each image's projected row (after centring)"})
    rows: int = field(default=1000, metadata={"help": "N, public maximum number of images: the release always has "
                                                      "N rows (zero rows pad the folder), so n stays private"})
    projection_seed: int = field(default=0, metadata={"help": "public seed of the projection V"})
    directions: int = field(default=32, metadata={"help": "L, random 1-d directions of the sliced divergence"})
    bandwidth: float = field(default=1.0, metadata={"help": "kernel width h, relative to the smoothed spread"})
    smooth: bool = field(default=True, metadata={"help": "smooth the generated side with the release's noise "
                                                         "(off only for the ablation)"})
    reg: float = field(default=0.001, metadata={"help": "pull of the fitted weights towards the uniform public pool"})
    fit_iters: int = field(default=500, metadata={"help": "FISTA iterations of the weight fit"})
    pool: int = field(default=2048, metadata={"help": "public images the fit may weight"})
    fit_steps: int = field(default=100, metadata={"help": "LoRA training steps on the weighted public images"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of the LoRA fit"})
    batch: int = field(default=32, metadata={"help": "images per LoRA training step"})
    fit_seed: int | None = field(default=None, metadata={"help": "seed of the fit (public randomness; none = drawn)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, got {self.space!r}")
        if self.slices < 1 or self.rows < 1 or self.directions < 0:
            raise ValueError("slices and rows must be >= 1; directions >= 0")
        check_fit_settings(self, PUBLIC_POOL, ("clip", "bandwidth", "lr"))


# ---------------------------------------------------------------- the release


@dataclass(frozen=True)
class SlicedRelease:
    """The DP output: everything here is safe to show, keep and fit again."""

    rows: torch.Tensor  # (N, k) float64: the noisy, shuffled, padded projected rows
    noise_std: float  # sigma = s * C, per entry
    clip: float
    event: PrivacyEvent
    settings: tuple = ()  # the public map it was made with (space, slices, clip, projection seed, encoder)
    # Weight fits already computed from this release (a deterministic function of it and public settings),
    # so a re-fit with a new LoRA seed or length does not recompute them. Kept with the release, i.e. in
    # the session that owns it; never shared between sessions.
    fits: dict = field(default_factory=dict, compare=False, repr=False)


def projection(d: int, k: int, seed: int) -> torch.Tensor:
    """V (d, k) with orthonormal columns from a public seed (k <= d)."""
    if k > d:
        raise ValueError(f"slices = {k} is more than the feature dimension {d}")
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64)).Q


def release_slices(projected: torch.Tensor, *, rows: int, clip: float, epsilon: float, delta: float,
                   generator: torch.Generator | None = None) -> SlicedRelease:
    """The mechanism: clip every projected row to C, pad to N rows, shuffle, add N(0, (sC)^2).

    ``projected`` (n, k) is private. ``generator`` is for tests and public-data tuning only; the
    private path leaves it None (OS-seeded permutation and noise). The audit runs this function.
    """
    check_epsilon_delta(epsilon, delta)
    if projected.ndim != 2 or projected.shape[0] == 0:
        raise ValueError("projected must be a non-empty (n, k) tensor")
    _refuse_over(projected.shape[0], rows)
    clipped = clip_embeddings(projected, max_norm=clip)
    return _gaussian_rows(clipped, rows=rows, clip=clip, epsilon=epsilon, delta=delta,
                          noise_multiplier=calibrate_gaussian(epsilon=epsilon, delta=delta), generator=generator)


def _refuse_over(n: int, rows: int) -> None:
    """A folder larger than the public N is the uploader's own error, raised before anything is released."""
    if n > rows:
        raise DataError(f"the folder has {n} images, more than the {rows} that slicing takes: its release hides "
                        f"how many images it holds by padding them to {rows} rows. Use at most {rows} images.")


def _gaussian_rows(clipped: torch.Tensor, *, rows: int, clip: float, epsilon: float, delta: float,
                   noise_multiplier: float, generator: torch.Generator | None = None,
                   pad: bool = True, shuffle: bool = True) -> SlicedRelease:
    """Padding, shuffle and noise with every privacy parameter explicit.

    ``release_slices`` is the only caller in the private path. The audit calls this directly with
    deliberately wrong arguments (unclipped rows, a tenth of the noise, no padding, no shuffle) to
    show that it catches them: an explicit argument of a separate path, never a patch of this
    module (which every session of the server shares).
    """
    n, k = clipped.shape
    sigma = float(noise_multiplier) * clip
    if not (math.isfinite(sigma) and sigma >= 0 and (sigma > 0 or noise_multiplier == 0)):
        raise ValueError(f"the noise std must be a finite number >= 0, got {sigma}")  # never "no noise" by NaN
    gen = generator if generator is not None else private_generator()
    total = rows if pad else n
    padded = torch.zeros(total, k, dtype=torch.float64)
    if not shuffle:
        where = torch.arange(n)
    elif generator is None:  # the private path: an exactly uniform placement from the OS
        where = torch.tensor(random.SystemRandom().sample(range(total), n), dtype=torch.long)
    else:  # tests and public tuning: reproducible
        where = torch.randperm(total, generator=gen)[:n]
    padded[where] = clipped.to(torch.float64)
    if math.isfinite(epsilon) and delta >= 1.0 / total:
        warnings.warn(f"delta = {delta:g} is not below 1/N (N = {total} rows): the guarantee is weak; use a smaller "
                      "delta.", PrivacyWarning, stacklevel=3)
    if sigma > 0:
        padded = padded + torch.randn(total, k, generator=gen, dtype=torch.float64) * sigma
    event = PrivacyEvent(mechanism=MECHANISM, epsilon=epsilon, delta=delta, noise_multiplier=float(noise_multiplier),
                         sensitivity=clip, accountant="analytic_gaussian" if sigma > 0 else "none (non-private)")
    return SlicedRelease(rows=padded, noise_std=sigma, clip=clip, event=event)


# ---------------------------------------------------------------- public side (cached)


@dataclass(frozen=True)
class PublicSlices:
    V: torch.Tensor  # (d, k)
    center: torch.Tensor  # (d,)
    F: torch.Tensor  # (P, k) clipped public rows, the candidates of the fit
    labels: torch.Tensor  # (P,) public class labels (for the report)
    images: torch.Tensor  # (P, 1, 32, 32) the public pool the LoRA fit draws from


_public_lock = threading.Lock()
_public: dict[tuple, PublicSlices] = {}


def features(images: torch.Tensor, space: str, models) -> torch.Tensor:
    """f(x): the public encoder's embedding or the flattened pixels, float64 on the CPU."""
    if space == "pixels":
        return images.reshape(len(images), -1).to(torch.float64).cpu()
    from ..encoder import embed

    return embed(images, models.encoder).to(torch.float64)


def _map_id(cfg: SlicingConfig) -> tuple:
    """The public settings that define the projection map (a release is re-fitted only under the same map)."""
    from ..checkpoints import encoder_id

    return (cfg.space, cfg.slices, cfg.clip, cfg.pool, cfg.projection_seed,
            encoder_id() if cfg.space == "embedding" else "")


def public_slices(cfg: SlicingConfig, models) -> PublicSlices:
    """V, the public centre and the public candidates' rows: computed once per process and setting."""
    key = _map_id(cfg)
    with _public_lock:
        if key not in _public:
            images, labels = public_pool_labelled(cfg.pool, PUBLIC_POOL)
            feats = features(images, cfg.space, models)
            center = feats.mean(0)
            V = projection(feats.shape[1], cfg.slices, cfg.projection_seed)
            F = clip_embeddings((feats - center) @ V, max_norm=cfg.clip)
            _public[key] = PublicSlices(V=V, center=center, F=F, labels=labels, images=images)
        return _public[key]


def project_private(images: torch.Tensor, cfg: SlicingConfig, pub: PublicSlices, models) -> torch.Tensor:
    return (features(images, cfg.space, models) - pub.center) @ pub.V


# ---------------------------------------------------------------- the fit (post-processing)


def fit_weights(K: torch.Tensor, c: torch.Tensor, cfg: SlicingConfig, start: torch.Tensor, cancel=None) -> torch.Tensor:
    """argmin over the simplex of w^T K w - 2 w^T c + reg C ||w - start||^2, by FISTA (``public_fit.fit_simplex``).

    ``start`` (the uniform public pool mixed with the best padding weight) is the first iterate and
    the centre of the pull, so the fit moves away from the base model's own data only as far as
    the release asks."""
    return fit_simplex(K, c, start, reg=cfg.reg, iters=cfg.fit_iters, cancel=cancel, label="Slicing")


@dataclass(frozen=True)
class Fit:
    weights: torch.Tensor  # (P,) over the public pool, sums to 1
    padding: float  # fitted weight of the padding rows: n is estimated as (1 - padding) N
    divergence: float  # smoothed sliced MMD^2 at the fit
    divergence_uniform: float  # ... at the uniform public pool (the base model's own data)
    effective_size: float  # 1 / sum w^2


def fit_release(rel: SlicedRelease, pub: PublicSlices, cfg: SlicingConfig, cancel=None) -> Fit:
    cand = torch.cat([torch.zeros(1, pub.F.shape[1], dtype=torch.float64), pub.F])
    K, c, const, _ = divergence_terms(rel.rows, cand, rel.noise_std, cfg)
    _check(cancel)
    # The reference: the uniform public pool with the padding weight that fits best (a 1-d quadratic).
    u = torch.full((len(pub.F),), 1.0 / len(pub.F), dtype=torch.float64)
    base = _best_padding_mix(K, c, u)
    w = fit_weights(K, c, cfg, base, cancel=cancel)
    # The release read as (nearly) all padding: rescaling a public mass of ~1e-4 would leave a few arbitrary
    # images, so fall back to the uniform public pool (never an error after the release).
    if float(w[1:].sum()) < 1e-2:
        w = torch.cat([w[:1], (1 - w[0]) * u]) if float(w[0]) < 1 else torch.cat([torch.zeros(1, dtype=torch.float64), u])
    pub_w = w[1:] / w[1:].sum()
    return Fit(weights=pub_w, padding=float(w[0]), divergence=mmd2(K, c, const, w),
               divergence_uniform=mmd2(K, c, const, base), effective_size=float(1 / (pub_w ** 2).sum()))


def _best_padding_mix(K: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    e0 = torch.zeros(len(c), dtype=torch.float64)
    e0[0] = 1.0
    b = torch.cat([torch.zeros(1, dtype=torch.float64), u])
    d = b - e0  # w(t) = e0 + t d, t in [0, 1]
    a2, a1 = float(d @ K @ d), float(2 * (e0 @ K @ d) - 2 * (d @ c))
    t = min(max(-a1 / (2 * a2), 0.0), 1.0) if a2 > 0 else 1.0
    return e0 + t * d


def _check(cancel) -> None:
    check_cancel(cancel, "Slicing")


def refit(rel: SlicedRelease, cfg: SlicingConfig, models, *, progress=None, cancel=None) -> MethodResult:
    """Everything after the release: reads only the release, public data and settings (no privacy cost)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    pub = public_slices(cfg, models)
    if rel.rows.shape[1] != pub.V.shape[1] or rel.clip != cfg.clip or (rel.settings and rel.settings != _map_id(cfg)):
        raise ValueError("this release was made with another projection (space, slices, clip or seed); "
                         "re-fit it with its own settings")
    fit_key = (_map_id(cfg), cfg.directions, cfg.bandwidth, cfg.smooth, cfg.reg, cfg.fit_iters)
    if fit_key not in rel.fits:
        stage(progress, "Slicing: weighting the public images to match the release (post-processing: no further ε)",
               cfg.fit_steps)
        rel.fits[fit_key] = fit_release(rel, pub, cfg, cancel=cancel)
    fit = rel.fits[fit_key]
    timings["fit_weights"] = time.perf_counter() - t
    seed = cfg.fit_seed if cfg.fit_seed is not None else secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    lora, losses = train_lora_on(fit.weights, pub.images, models, gen, steps=cfg.fit_steps, lr=cfg.lr,
                                 batch=cfg.batch, label="Slicing", progress=progress, cancel=cancel)
    timings["fit_lora"] = time.perf_counter() - t
    shares, top, top_share = top_classes(fit.weights, pub.labels)
    report = {
        "method": "slicing",
        "private": rel.event.private,
        "epsilon": epsilon_for_report(rel.event.epsilon),
        "delta": rel.event.delta,
        "noise_multiplier": rel.event.noise_multiplier,
        "sensitivity": rel.event.sensitivity,
        "mechanism": f"{MECHANISM} ({len(rel.rows)} padded, shuffled rows x {rel.rows.shape[1]} slices "
                     f"of the {cfg.space}, each row clipped to {cfg.clip})",
        "accountant": rel.event.accountant,
        "noise_std": rel.noise_std,
        "space": cfg.space, "slices": cfg.slices, "rows": len(rel.rows), "clip": cfg.clip,
        "projection_seed": cfg.projection_seed, "directions": cfg.directions, "bandwidth": cfg.bandwidth,
        "smooth": cfg.smooth, "reg": cfg.reg, "pool": cfg.pool, "fit_steps": cfg.fit_steps, "lr": cfg.lr,
        "fit_seed": seed,
        "divergence": fit.divergence, "divergence_uniform": fit.divergence_uniform,
        "effective_public_images": round(fit.effective_size, 1),
        "public_class_shares": shares,
        "note": (f"the fit weighted the public images towards {top} "
                 f"({top_share:.0%}); re-fitting costs no ε" if top_share >= 0.15 else
                 "at this ε the release was too noisy to move the fit away from the public data (near-uniform "
                 "weights); re-fitting costs no ε"),
    }
    if top_share >= 0.15:
        # (1 - padding weight) N read off the release: post-processing, and only shown when the release
        # moved the fit (when it did not, the padding weight is set by noise and the number means nothing).
        report["estimated_count"] = round((1 - fit.padding) * len(rel.rows), 1)
    if not rel.event.private:
        report["warning"] = "epsilon = inf: NO privacy (non-private reference)"
    return MethodResult(adapter=lora, report=report, events=(), timings=timings, losses=losses,
                        owner={"release": rel})


def train(images: torch.Tensor, cfg: SlicingConfig, models, *, progress=None, cancel=None) -> MethodResult:
    t = time.perf_counter()
    _refuse_over(len(images), cfg.rows)  # before any computation on the images
    stage(progress, "Slicing: projecting the public pool (once per server and setting)", cfg.fit_steps)
    pub = public_slices(cfg, models)
    public_seconds = time.perf_counter() - t
    _check(cancel)  # a cancel before the release: nothing is released
    stage(progress, "Slicing: the one noisy release of your images' projections", cfg.fit_steps)
    t = time.perf_counter()
    projected = project_private(images, cfg, pub, models)
    rel = release_slices(projected, rows=cfg.rows, clip=cfg.clip, epsilon=cfg.epsilon, delta=cfg.delta)
    rel = dataclasses.replace(rel, settings=_map_id(cfg))  # public settings, kept with the release for a re-fit
    del projected  # private; nothing below sees it
    release_seconds = time.perf_counter() - t
    try:
        result = refit(rel, cfg, models, progress=progress, cancel=cancel)
    except Cancelled:
        raise  # before anything was shown: the release is dropped with the run
    except Exception as exc:  # noqa: BLE001  (the release was made: the caller's ledger must still count it)
        raise FailedAfterRelease((rel.event,), exc) from exc
    result.events = (rel.event,)
    result.timings.update({"public_slices": public_seconds, "release": release_seconds})
    return result


def identity() -> dict:
    from ..checkpoints import encoder_id, hypernet_a_id

    # the encoder (embedding space) and H's public A with the base UNet (the LoRA it fits starts there)
    return {"defaults": shipped_defaults(SlicingConfig), "encoder": encoder_id(), "A": hypernet_a_id()}


def cost(hp: dict, n: int) -> int:
    """Example-gradient evaluations: the LoRA fit on public images (the release itself is a forward pass)."""
    d = SlicingConfig()
    return int(hp.get("fit_steps", d.fit_steps) * hp.get("batch", d.batch))


SWEEP = {"stage1": [{"space": sp, "slices": k, "clip": c}
                    for sp in ("embedding", "pixels") for k in (4, 16) for c in (0.25, 1.0)],
         # reg 1e6 pins the weights to the uniform public pool: the public-only control (what the LoRA fit on
         # public data does without the release), so a gain can be told from "more training on public data".
         "stage2": lambda n: [{"reg": 1e6}, {"reg": 0.0}, {"reg": 0.01}, {"fit_steps": 300}, {"bandwidth": 0.5},
                              {"smooth": False}]}


def audit_scores(cfg, member: np.ndarray, k: int = 8, spare: int = 8) -> np.ndarray:
    """The audit of ``python -m dphyper audit --method slicing``: the slicing release
    (``release_slices``, as shipped: clipping, padding to N = n + ``spare`` rows, the random order, the
    Gaussian noise). Extra broken variants: ``no-padding`` (one row per image: the row count is n)
    and ``no-shuffle`` (rows in folder order with the canary first, so every other row moves by one place).

    The n known records are rows of norm C = 1 in random directions orthogonal to the canary's
    direction u; the canary is 100 u (far outside the clipping ball). Statistics (the audit picks
    one on half the trials): the largest u-coordinate of a released row; the log-sum-exp likelihood
    ratio of "one row has C u added" at the claimed noise; the number of rows; the likelihood ratio
    of the one-place shift that an unshuffled release with the canary first would show.
    """
    from ..privacy import calibrate_gaussian, clip_embeddings

    g = torch.Generator().manual_seed(cfg.seed)
    u = torch.zeros(k, dtype=torch.float64)
    u[0] = 1.0
    data = torch.randn(cfg.n, k, generator=g, dtype=torch.float64)
    data[:, 0] = 0.0
    data = data / data.norm(dim=1, keepdim=True)  # norm C = 1, orthogonal to u
    canary = 100.0 * u
    rows = cfg.n + spare
    multiplier = calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta)
    mu = 1.0 / multiplier  # the canary's clipped row over the claimed noise
    # The unshuffled release's expected rows without and with the canary first (padding rows are 0).
    m0 = torch.zeros(rows, k, dtype=torch.float64)
    m0[:cfg.n] = data
    m1 = torch.zeros(rows, k, dtype=torch.float64)
    m1[0] = u
    m1[1:cfg.n + 1] = data
    shift = m1 - m0
    scores = np.empty((len(member), 4))
    for i, m in enumerate(member):
        x = torch.cat([canary[None], data]) if m else data  # canary first: only an unshuffled release sees order
        if cfg.broken == "none":
            rel = release_slices(x, rows=rows, clip=1.0, epsilon=cfg.epsilon, delta=cfg.delta)  # OS-seeded
        else:
            clipped = x if cfg.broken == "no-clip" else clip_embeddings(x, max_norm=1.0)
            mult = multiplier / 10 if cfg.broken == "weak-noise" else multiplier
            rel = _gaussian_rows(clipped, rows=rows, clip=1.0, epsilon=cfg.epsilon, delta=cfg.delta,
                                 noise_multiplier=mult, pad=cfg.broken != "no-padding",
                                 shuffle=cfg.broken != "no-shuffle")
        y = rel.rows
        along = y[:, 0] / multiplier  # in units of the claimed noise
        scores[i, 0] = float(along.max())
        scores[i, 1] = float(torch.logsumexp(mu * along - mu ** 2 / 2, 0))
        scores[i, 2] = float(len(y))
        scores[i, 3] = float(((y - m0[:len(y)]) * shift[:len(y)]).sum())
    return scores


SLICING = Method(name="slicing", label="Slicing", config_cls=SlicingConfig, train=train, one_shot=False,
                 noise="once, into N padded random projections of the images (then a free fit)",
                 identity=identity, sweep=SWEEP, one_default=True, cost=cost, duration="1-2 minutes on CPU", refit=refit,
                 audit=Audit(audit_scores, variants=(*BROKEN_VARIANTS, "no-padding", "no-shuffle")),
                 smallest={"slices": 4, "pool": 64, "directions": 4, "fit_iters": 20, "fit_steps": 3, "batch": 4,
                           "rows": 40}, budget=StepsBudget("fit_steps"), budget_unit="steps of the free fit",
                 refit_fresh=("fit_seed",))
