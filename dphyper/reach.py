"""Is the private set within reach of the public data? A check on the hypernetwork's release.

The hypernetwork H was trained on sets of *public* images (Fashion-MNIST train). For a folder
unlike anything public (handwritten digits, noise, drawings), H still returns a LoRA and the
samples are clothes: without a check the user cannot tell "the method failed on my data" from
"this is my data". This module tells them, from the DP release only.

The statistic
-------------
The release is the noisy mean m~ = m + z of the clipped, unit-norm embeddings phi(x_i), with
z ~ N(0, s^2 I_d) and s = ``noise_std_mean`` (public: the calibrated noise over the *noisy*
count n~). The question "could n public images have this mean embedding?" is geometric: the
means of n images of a public bank E (P x d) are the points E^T w with w in the capped simplex
{0 <= w_i <= 1/n, sum w = 1} (fractional subsets; every real n-subset is a vertex). The check
computes

    D = min_{w in capped simplex(1/n~)} || E^T w - m~ ||^2

by FISTA with an exact projection (a convex problem, so no local minima). D = 0 means some n
public images have the released mean. Measured on the shipped encoder at epsilon = inf (no noise;
docs/BENCHMARKS.md, ``bench --suite reach``): every public test-split set (single-class,
k-NN, two-neighbourhood, uniform mixture) has D <= 2e-4; sets the project draws itself that are
unlike the public data have D >= 0.03 at n = 100 and more at n = 1,000 (typed digits, letters,
pixel noise, blurred blobs, inverted clothes), so these are told apart. Solid shapes stay
within reach at n = 100 (D ~ 2e-3: phi maps them near bags) and are flagged at n = 1,000
(D ~ 0.018): the check is about what phi can see.

Noise. The reachable set K (means of n public images) is convex, so for a reachable mean m the
distance of m~ = m + z to K is at most ||z|| (projection onto a convex set is non-expansive):
D <= ||z||^2 ~ s^2 chi^2_d. With d = 64 and c = 1.5, P(D > c d s^2) <= P(chi^2_64 > 96) ~ 0.6%
for a set within reach (approximately: m~ is also scaled by n / n~ through the noisy count, which
tau0 covers for n~ near n). Measured on public sets, D stays below 1.3 d s^2. The verdict:

* ``outside`` when D > tau0 + c d s^2 (tau0 = 0.005, c = 1.5): more than the noise explains; the
  app warns "Your images look unlike the pictures this model learned from" (VERDICT_TEXT).
* ``cannot tell`` when that bound exceeds ``DETECTABLE`` (0.025, below the distance of the
  nearest far-away sets measured, ~0.03 at n = 100 and no noise): at this epsilon and number of
  images the noise could hide them, and the app says so instead of a false "all is well"; also
  when n~ < 50 (not calibrated: one public image alone is ~0.02 from the bank's means) or the
  release's numbers are not finite.
* ``within`` otherwise: *no sign* of a far-away set. The check is necessary, not sufficient: it
  sees only the mean embedding (solid shapes pass at n = 100).

The cap uses min(n~, 500): any mean of n >= 500 images is also a mean of 500-subsets, and the
bank holds only ~1,000 images per class, so a tight public set of 2,000 images would otherwise
look out of reach.

tau0, c and DETECTABLE were chosen on public train/test sets and the synthetic sets above, never
on a user's data; ``bench --suite reach`` re-measures the verdict rates.

Privacy (no extra cost)
-----------------------
D and the verdict are a deterministic function of (m~, n~, s) and of public constants (the
bank of public embeddings, tau0, c, DETECTABLE). (m~, n~) is the output of the one
(epsilon, delta)-DP release, and s is a function of n~ and the public noise multiplier. By the
post-processing property of differential privacy, anything computed from a DP output alone
(without touching the private images again) is (epsilon, delta)-DP with the same parameters:
no event is added to the ledger. The code enforces this by taking a ``ReleasedMean`` and nothing
else of the run. The owner-only exact mean is never passed here.

The bank: 10,000 embeddings of a seeded sample of the Fashion-MNIST **train** split, built by
``python -m dphyper train public-bank`` with the hash of the encoder it was made with (a test
checks they match), float16, 1.3 MB.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import ASSETS_DIR

BANK_PATH = ASSETS_DIR / "public_bank" / "public_bank.safetensors"
TAU0 = 0.005  # distance a public set may have at no noise (measured max 2e-4), with margin
NOISE_FACTOR = 1.5  # D <= ||z||^2 for a reachable mean; P(chi2_64 > 96) ~ 0.6%
DETECTABLE = 0.025  # above this bound the noise could hide the nearest far-away sets (D ~ 0.03 at n = 100)
N_MAX = 500  # the cap's n: a mean of n >= 500 images is a mean of 500-subsets too (the bank has ~1,000 per class)
N_MIN = 50  # below this the check was not calibrated (one image's own distance is ~0.02): cannot tell
ITERS = 200

# Plain words for a projector (the first symbol says the verdict at a glance); the technical reading is in
# VERDICT_DETAIL. Both use DP outputs only ({n}: the noisy count, rounded and capped at N_MAX).
VERDICT_TEXT = {
    "outside": ("⚠ Your images look unlike the pictures this model learned from: expect samples that look "
                "like those public pictures, not like yours."),
    "cannot tell": ("ⓘ At this ε the release is too noisy to tell whether your images are like the pictures this "
                    "model learned from. A larger ε or more images would tell; running again spends more ε and "
                    "can read differently."),
    "too few": ("ⓘ Too few images (under {n_min}) to check whether they are like the pictures this model "
                "learned from."),
    "within": "✓ Your images look like the pictures this model learned from (checked on their released average only).",
    "unavailable": "The check of whether your images are like the model's pictures is unavailable on this server.",
}
VERDICT_DETAIL = {
    "outside": ("the released mean embedding is farther from the mean of every group of about {n} public images "
                "than the noise can explain"),
    "cannot tell": ("the noise could hide the distance between the released mean embedding and the public data's "
                    "(bound above the detectable level)"),
    "too few": "the check is calibrated for about {n_min} or more images (by the noisy count)",
    "within": ("the released mean embedding is as close to the mean of some group of about {n} public images as "
               "the noise allows; this says nothing about single images"),
}


@dataclass
class PublicBankConfig:
    """`python -m dphyper train public-bank`: the public embeddings behind the reach check (a small asset)."""

    out: Path = field(default=BANK_PATH, metadata={"help": "safetensors file to write"})
    points: int = field(default=10000, metadata={"help": "public train-split images in the bank"})
    seed: int = field(default=0, metadata={"help": "seed of the public sample"})


def build(cfg: PublicBankConfig = PublicBankConfig()) -> dict:
    from safetensors.torch import save_file

    from .data import load_fashion_mnist_uint8, uint8_to_tensor
    from .encoder import embed
    from .models import shared_models
    from .public_map import encoder_hash

    t0 = time.perf_counter()
    images, _ = load_fashion_mnist_uint8("train")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.points].numpy()
    emb = embed(uint8_to_tensor(images[idx]), shared_models().encoder).cpu()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"encoder": encoder_hash(), "points_from": f"Fashion-MNIST train, {cfg.points} images, seed {cfg.seed}",
            "command": "python -m dphyper train public-bank"}
    save_file({"embeddings": emb.to(torch.float16).contiguous()}, str(out), metadata=meta)
    return {"out": str(out), "points": cfg.points, "bytes": out.stat().st_size, "encoder": meta["encoder"],
            "seconds": round(time.perf_counter() - t0, 2)}


@dataclass(frozen=True)
class Bank:
    E: torch.Tensor  # (P, d) float64
    lip: float  # Lipschitz constant of the gradient of ||E^T w - m||^2

    @classmethod
    def of(cls, E: torch.Tensor) -> "Bank":
        E = E.to(torch.float64)
        return cls(E=E, lip=2 * float(torch.linalg.eigvalsh(E.T @ E).max()))


_bank: dict[tuple, Bank] = {}
_bank_lock = threading.Lock()


def load_bank(path: Path = BANK_PATH) -> Bank:
    """The shipped bank (cached per process); a clear error when missing or made with another encoder."""
    from safetensors import safe_open

    from .config import ENCODER_PATH
    from .public_map import encoder_hash

    path = Path(path)
    # A rebuilt encoder in the same process is not served a stale bank; the file's stat, not its hash,
    # so a run does not re-read the encoder (the hash is checked when the bank loads).
    enc = ENCODER_PATH.stat() if ENCODER_PATH.exists() else None
    key = (str(path), enc.st_mtime_ns if enc else None, enc.st_size if enc else None)
    with _bank_lock:
        if key not in _bank:
            if not path.exists():
                raise FileNotFoundError(f"No public bank at {path.name}: run `python -m dphyper train public-bank`.")
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                E = f.get_tensor("embeddings").to(torch.float64)
            if meta.get("encoder") != encoder_hash():
                raise ValueError("The public bank was built with another encoder: run "
                                 "`python -m dphyper train public-bank`.")
            _bank[key] = Bank.of(E)
        return _bank[key]


def project_capped_simplex(v: torch.Tensor, cap: float, guess: float | None = None) -> tuple[torch.Tensor, float]:
    """Euclidean projection of v onto {0 <= w <= cap, sum w = 1} (needs cap * len(v) >= 1), and its shift t.

    w = clip(v - t, 0, cap), where f(t) = sum clip(v - t, 0, cap) - 1 is piecewise linear and
    decreasing: safeguarded Newton steps (the slope is minus the number of coordinates strictly
    between the bounds) land on the root of the current linear piece, so a few passes over v
    suffice, fewer from ``guess`` (the previous iteration's t); bisection when a step leaves the
    bracket."""
    if cap * len(v) < 1 - 1e-12:
        raise ValueError("the capped simplex is empty: cap * len(v) < 1")
    lo, hi = float(v.min()) - 1.0, float(v.max())  # f(lo) >= 0 > f(hi)
    t = guess if guess is not None and lo < guess < hi else (lo + hi) / 2
    for _ in range(100):
        d = v - t
        f = float(d.clamp(0, cap).sum()) - 1.0
        if abs(f) <= 1e-13:
            break
        if f > 0:
            lo = t
        else:
            hi = t
        slope = int(((d > 0) & (d < cap)).sum())
        step = t + f / slope if slope else (lo + hi) / 2
        t = step if lo < step < hi else (lo + hi) / 2
    return (v - t).clamp(0, cap), t


def distance_to_public(mean: torch.Tensor, n: float, bank: Bank, iters: int = ITERS) -> float:
    """min over fractional n-subsets of the bank of ||their mean - mean||^2 (FISTA, exact projection)."""
    E = bank.E
    m = mean.reshape(-1).to(torch.float64)
    if m.shape[0] != E.shape[1]:
        raise ValueError(f"mean has {m.shape[0]} dimensions, the bank {E.shape[1]}")
    if not torch.isfinite(m).all():
        raise ValueError("the released mean is not finite")
    cap = 1.0 / min(max(float(n), 1.0), N_MAX, len(E))
    w = torch.full((len(E),), 1.0 / len(E), dtype=torch.float64)
    y, t, shift = w.clone(), 1.0, None
    for _ in range(iters):
        grad = 2 * (E @ (E.T @ y - m))
        w_next, shift = project_capped_simplex(y - grad / bank.lip, cap, shift)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = w_next + ((t - 1) / t_next) * (w_next - w)
        w, t = w_next, t_next
    return float(((E.T @ w - m) ** 2).sum())


def reach_check(release, bank: Bank | None = None) -> dict:
    """The verdict for one hypernetwork release (a ``privacy.ReleasedMean``): DP outputs only."""
    d = release.mean.numel()
    n = max(float(release.noisy_count), 1.0)
    s = float(release.noise_std_mean)
    if not (math.isfinite(s) and math.isfinite(n) and bool(torch.isfinite(release.mean).all())) or n < N_MIN:
        # A release so noisy that its numbers overflow, or too few images for the calibration above.
        why = "too few" if math.isfinite(n) and n < N_MIN else "cannot tell"
        return {"verdict": "cannot tell", "distance": None, "noise_level": None, "bound": None,
                "message": VERDICT_TEXT[why].format(n_min=N_MIN), "detail": VERDICT_DETAIL[why].format(n_min=N_MIN)}
    bank = bank or load_bank()
    D = distance_to_public(release.mean, n, bank)
    noise = d * s * s
    bound = TAU0 + NOISE_FACTOR * noise
    verdict = "outside" if D > bound else "cannot tell" if bound > DETECTABLE else "within"
    return {"verdict": verdict, "distance": round(D, 5), "noise_level": round(noise, 5), "bound": round(bound, 5),
            "message": VERDICT_TEXT[verdict], "detail": VERDICT_DETAIL[verdict].format(n=int(round(min(n, N_MAX))))}


# ---------------------------------------------------------------- sets unlike the public data (tests, benchmark)

OOD_KINDS = ("digits", "letters", "noise", "blobs", "inverted", "shapes")


def synthetic_set(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    """n images (n, 1, 32, 32) in [-1, 1] of a kind the project draws itself, through the same
    preprocessing as an upload: typed digits or letters (Pillow's built-in font, random size,
    place and tilt), pixel noise, blurred random blobs, solid shapes; 'inverted' is public test
    images with black and white swapped (needs Fashion-MNIST)."""
    from PIL import Image, ImageDraw, ImageFont

    from .data import pil_to_tensor

    rng = np.random.default_rng(seed)
    if kind == "inverted":
        from .data import load_fashion_mnist

        x, _ = load_fashion_mnist("test")
        return -x[torch.as_tensor(rng.permutation(len(x))[:n])]
    if kind not in OOD_KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose from {', '.join(OOD_KINDS)}")
    out = []
    for _ in range(n):
        im = Image.new("L", (64, 64), 0)
        draw = ImageDraw.Draw(im)
        if kind in ("digits", "letters"):
            ch = str(rng.integers(10)) if kind == "digits" else chr(65 + int(rng.integers(26)))
            font = ImageFont.load_default(size=int(rng.integers(30, 56)))
            draw.text((int(rng.integers(2, 20)), int(rng.integers(-6, 10))), ch, fill=255, font=font)
            im = im.rotate(float(rng.uniform(-15, 15)))
        elif kind == "shapes":
            x0, y0 = (int(v) for v in rng.integers(4, 24, 2))
            x1, y1 = (int(v) for v in rng.integers(40, 60, 2))
            fill = 255 if rng.random() < 0.5 else None
            shape = int(rng.integers(3))
            if shape == 0:
                draw.ellipse([x0, y0, x1, y1], fill=fill, outline=255, width=3)
            elif shape == 1:
                draw.rectangle([x0, y0, x1, y1], fill=fill, outline=255, width=3)
            else:
                draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill, outline=255)
        elif kind == "noise":
            im = Image.fromarray(rng.integers(0, 256, (64, 64)).astype(np.uint8))
        else:  # blobs
            a = rng.normal(size=(8, 8))
            im = Image.fromarray((255 / (1 + np.exp(-2 * a))).astype(np.uint8)).resize((64, 64), Image.BICUBIC)
        out.append(pil_to_tensor(im))
    return torch.stack(out)

