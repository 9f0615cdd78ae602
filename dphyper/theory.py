"""Teaching: the seed paper's synthetic setting, one-shot release vs DP-SGD, exact and simulated.

Setting (bounded mean estimation, the simplest "learn a parameter from a private set"):

* Each dataset has a parameter mu = r v, v uniform on the unit sphere of R^d (the public
  prior: E||mu||^2 = r^2). Its n examples are x_i = mu + s u_i, u_i uniform on the sphere,
  with r + s <= 1, so ||x_i|| <= 1 always.
* Loss l(theta; x) = 1/2 ||theta - x||^2; the excess risk of theta is 1/2 ||theta - mu||^2.

One-shot method (the image path's mechanism, in miniature): release
S~ = sum_i [x_i, c] + N(0, sigma^2 Delta^2 I), Delta = sqrt(1 + c^2), sigma from the analytic
Gaussian calibration; the noisy count is n~ = S~[d] / c and D = max(n~, 1). The
"hypernetwork" is the map theta^ = lambda * S~[:d] / D, with lambda fitted on public
datasets drawn from the prior (least squares). Because the noise, the u_i and mu are
independent and zero-mean where it matters, its risk is exact given n~:

    R(lambda | D) = 1/2 [ (lambda n / D - 1)^2 r^2 + lambda^2 (n s^2 + d sigma^2 Delta^2) / D^2 ]

and the closed form is E over n~ ~ N(n, (sigma Delta / c)^2) (a 1-D integral, computed with
``scipy.integrate.quad``); the best lambda is r^2 E[n/D] / E[(n^2 r^2 + n s^2 + d sigma^2
Delta^2) / D^2]. (E||x_i - mu||^2 = s^2 exactly; cross terms vanish.)

DP-SGD: theta_0 = 0 (the prior mean); each step Poisson-samples examples with rate q,
sums their gradients theta - x_i clipped to C = 2 (a bound on ||theta - x|| since theta is
projected to the unit ball, so clipping never binds and only the noise hurts), adds
N(0, sigma^2 C^2 I), divides by the expected batch q n, steps with learning rate eta and
projects. sigma comes from Opacus' accountant for (epsilon, delta, q, steps), the same
function the image baseline uses. eta and the number of steps are chosen on public
datasets only (a small grid). No closed form (projection and random batch sizes): the
tab shows the simulation's mean and spread.

One-shot in parameter space (the quadratic exponential mechanism, ``methods/qem.py``): the utility
is the loss's quadratic model at theta_0 = 0 (exact here: the Hessian is I, public), so the mechanism
releases the per-example gradients theta_0 - x_i = -x_i (norm <= 1: the same clipping) summed, with
the count, once: here parameter space *is* the data space, so the release is the one-shot sum above.
What differs is the map. The quadratic EM takes the Newton step theta = S~[:d] / D (no public
datasets, no prior) and shrinks it James-Stein style from the release alone, as the image method
does (its ``shrink`` default, kept by the public sweep: at epsilon 0.25 the plain step is worse):
a = max(0, 1 - d sigma_m^2 / ||m~||^2), sigma_m = sigma Delta / D. Closed form for the plain
Newton step (a = 1): the one-shot formula with lambda = 1; with the shrinkage, simulation. (In the
image model the two one-shot methods differ more: the quadratic EM releases k parameter-space
coordinates of a random subspace of the LoRA, the hypernetwork a learned 64-d embedding.)

Assumptions to say out loud: the data are bounded (as clipping would force anyway); the
public prior matches the private data's (where it does not, the one-shot map is biased:
that is the weakness the image benchmark also shows); n is private and estimated from the
same release.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, stats

from .privacy import DEFAULT_DELTA, calibrate_gaussian

R_MU = 0.5  # ||mu||
S_NOISE = 0.5  # ||x_i - mu||
COUNT_SCALE = 1.0
CLIP_SGD = 2.0


@dataclass
class TheoryConfig:
    """`python -m dphyper theory`: one-shot vs DP-SGD in the synthetic setting (see module doc)."""

    epsilon: tuple[float, ...] = field(default=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0), metadata={"help": "privacy budgets"})
    n: tuple[int, ...] = field(default=(1000,), metadata={"help": "dataset sizes"})
    d: tuple[int, ...] = field(default=(10,), metadata={"help": "dimensions"})
    delta: float = field(default=DEFAULT_DELTA, metadata={"help": "delta for both methods"})
    reps: int = field(default=200, metadata={"help": "simulated private datasets per cell"})
    seed: int = field(default=0, metadata={"help": "seed of the simulation (synthetic public data only)"})
    json: bool = field(default=True, metadata={"help": "print the rows as one JSON list"})


# ---------------------------------------------------------------- data

def _sphere(rng: np.random.Generator, shape: tuple[int, ...], d: int) -> np.ndarray:
    v = rng.standard_normal((*shape, d))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _sum_of_sphere(rng: np.random.Generator, reps: int, n: int, d: int) -> np.ndarray:
    """sum of n unit vectors per rep, (reps, d), without materialising (reps, n, d) when big."""
    if reps * n * d <= 20_000_000:
        return _sphere(rng, (reps, n), d).sum(1)
    return np.stack([_sphere(rng, (n,), d).sum(0) for _ in range(reps)])


# ---------------------------------------------------------------- one-shot

@functools.lru_cache(maxsize=4096)
def _oneshot_moments(n: int, d: int, sigma: float) -> tuple[float, float, float]:
    """E[n/D], E[1/D^2] over n~ ~ N(n, (sigma Delta / c)^2), D = max(n~, 1); and Delta."""
    delta_sens = math.sqrt(1 + COUNT_SCALE ** 2)
    sd = sigma * delta_sens / COUNT_SCALE
    if sd == 0:
        D = max(n, 1)
        return n / D, 1 / D ** 2, delta_sens
    p_low = stats.norm.cdf((1 - n) / sd)  # mass where D = 1

    lo, hi = max(1.0, n - 40 * sd), n + 40 * sd  # the mass beyond 40 sd is < 1e-300

    def tail(f):
        pts = [n] if lo < n < hi else None
        return integrate.quad(lambda m: f(m) * stats.norm.pdf(m, n, sd), lo, hi, points=pts, limit=400,
                              epsabs=0, epsrel=1e-11)[0]

    e_inv = p_low * 1.0 + tail(lambda m: 1 / m)
    e_inv2 = p_low * 1.0 + tail(lambda m: 1 / m ** 2)
    return n * e_inv, e_inv2, delta_sens


def oneshot_lambda(n: int, d: int, sigma: float) -> float:
    """The population-optimal one-shot map (what a well-trained hypernetwork converges to)."""
    e_n_over_d, e_inv2, ds = _oneshot_moments(n, d, sigma)
    a = (n ** 2 * R_MU ** 2 + n * S_NOISE ** 2 + d * (sigma * ds) ** 2) * e_inv2
    return R_MU ** 2 * e_n_over_d / a


def oneshot_closed_form(epsilon: float, n: int, d: int, delta: float = DEFAULT_DELTA,
                        lam: float | None = None) -> float:
    """Exact expected excess risk of the one-shot method with map lambda (default: optimal)."""
    sigma = calibrate_gaussian(epsilon=epsilon, delta=delta)
    lam = oneshot_lambda(n, d, sigma) if lam is None else lam
    e_n_over_d, e_inv2, ds = _oneshot_moments(n, d, sigma)
    risk = (lam ** 2 * n ** 2 * e_inv2 - 2 * lam * e_n_over_d + 1) * R_MU ** 2 \
        + lam ** 2 * (n * S_NOISE ** 2 + d * (sigma * ds) ** 2) * e_inv2
    return 0.5 * risk


def _oneshot_estimates(rng, epsilon, n, d, delta, reps, with_count: bool = False):
    """(mu, released mean S~[:d]/D) for ``reps`` datasets drawn from the prior (and D with ``with_count``)."""
    sigma = calibrate_gaussian(epsilon=epsilon, delta=delta)
    ds = math.sqrt(1 + COUNT_SCALE ** 2)
    mu = R_MU * _sphere(rng, (reps,), d)
    total = n * mu + S_NOISE * _sum_of_sphere(rng, reps, n, d)
    total = total + rng.standard_normal((reps, d)) * sigma * ds
    count = n + rng.standard_normal(reps) * sigma * ds / COUNT_SCALE
    denom = np.maximum(count, 1.0)
    if with_count:
        return mu, total / denom[:, None], denom
    return mu, total / denom[:, None]


def oneshot_simulate(epsilon: float, n: int, d: int, delta: float = DEFAULT_DELTA, reps: int = 200,
                     public_sets: int = 2000, seed: int = 0) -> np.ndarray:
    """Excess risks of ``reps`` private datasets; lambda is fitted on ``public_sets`` public ones."""
    rng = np.random.default_rng(seed)
    mu_pub, m_pub = _oneshot_estimates(rng, epsilon, n, d, delta, public_sets)
    lam = float((m_pub * mu_pub).sum() / (m_pub ** 2).sum())  # the "hypernetwork", trained on public sets
    mu, m = _oneshot_estimates(rng, epsilon, n, d, delta, reps)
    return 0.5 * ((lam * m - mu) ** 2).sum(1)


def qem_simulate(epsilon: float, n: int, d: int, delta: float = DEFAULT_DELTA, reps: int = 200, seed: int = 0,
                 shrink: bool = True) -> np.ndarray:
    """Excess risks of the quadratic EM's Newton step from the one release, James-Stein shrunk from the
    release alone (``shrink``) or not (then its mean is ``oneshot_closed_form(..., lam=1.0)``)."""
    sigma = calibrate_gaussian(epsilon=epsilon, delta=delta)
    ds = math.sqrt(1 + COUNT_SCALE ** 2)
    mu, m, denom = _oneshot_estimates(np.random.default_rng(seed + 2), epsilon, n, d, delta, reps, with_count=True)
    a = np.ones(reps)
    if shrink and sigma > 0:
        a = np.maximum(0.0, 1.0 - d * (sigma * ds / denom) ** 2 / np.maximum((m ** 2).sum(1), 1e-300))
    return 0.5 * ((a[:, None] * m - mu) ** 2).sum(1)


# ---------------------------------------------------------------- DP-SGD

@functools.lru_cache(maxsize=512)
def dpsgd_sigma(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv") -> float:
    """Noise multiplier from Opacus' accountant: the same call the image baseline makes."""
    from .dpsgd import dpsgd_noise_multiplier

    return dpsgd_noise_multiplier(epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=steps,
                                  accountant=accountant)


def _dpsgd_run(rng, epsilon, n, d, delta, reps, lr, steps, batch):
    """DP-SGD on ``reps`` fixed datasets of n examples each (every step resamples the *same* n)."""
    q = min(1.0, batch / n)
    sigma = dpsgd_sigma(float(epsilon), float(delta), float(q), int(steps))
    risks = np.empty(reps)
    for r in range(reps):
        mu = R_MU * _sphere(rng, (), d)
        x = mu + S_NOISE * _sphere(rng, (n,), d)  # the private dataset, fixed for the whole run
        theta = np.zeros(d)
        for _ in range(steps):
            picked = x[rng.random(n) < q]  # Poisson sampling
            grad = len(picked) * theta - picked.sum(0) + rng.standard_normal(d) * sigma * CLIP_SGD
            theta = theta - lr * grad / (q * n)
            theta = theta / max(np.linalg.norm(theta), 1.0)  # projection keeps ||theta - x|| <= C
        risks[r] = 0.5 * ((theta - mu) ** 2).sum()
    return risks


DPSGD_GRID = {"lr": (0.1, 0.3, 1.0), "steps": (5, 20, 50), "batch": (256,)}


@functools.lru_cache(maxsize=256)
def dpsgd_tuned(epsilon: float, n: int, d: int, delta: float = DEFAULT_DELTA, public_reps: int = 40,
                seed: int = 12345) -> tuple[float, int, int]:
    """(lr, steps, batch) with the lowest mean risk on *public* simulated datasets."""
    best, best_risk = None, math.inf
    for lr in DPSGD_GRID["lr"]:
        for steps in DPSGD_GRID["steps"]:
            for batch in DPSGD_GRID["batch"]:
                rng = np.random.default_rng(seed)
                risk = _dpsgd_run(rng, epsilon, n, d, delta, public_reps, lr, steps, batch).mean()
                if risk < best_risk:
                    best, best_risk = (lr, steps, batch), risk
    return best


def dpsgd_simulate(epsilon: float, n: int, d: int, delta: float = DEFAULT_DELTA, reps: int = 200,
                   seed: int = 0) -> np.ndarray:
    lr, steps, batch = dpsgd_tuned(float(epsilon), int(n), int(d), float(delta))
    return _dpsgd_run(np.random.default_rng(seed + 1), epsilon, n, d, delta, reps, lr, steps, batch)


# ---------------------------------------------------------------- rows

# The keys of a stored row name the synthetic mechanisms of this toy problem, not registry methods: the
# one-shot release (what the hypernetwork does, with a public prior), the parameter-space exponential
# mechanism (the quadratic EM's analogue) and noisy SGD.
ONE_SHOT, PARAM_EM, NOISY_SGD = "one_shot", "param_em", "noisy_sgd"

def rows(cfg: TheoryConfig) -> list[dict]:
    out = []
    for d in cfg.d:
        for n in cfg.n:
            for eps in cfg.epsilon:
                one = oneshot_simulate(eps, n, d, cfg.delta, cfg.reps, seed=cfg.seed)
                sgd = dpsgd_simulate(eps, n, d, cfg.delta, cfg.reps, seed=cfg.seed)
                qem = qem_simulate(eps, n, d, cfg.delta, cfg.reps, seed=cfg.seed)
                out.append({"epsilon": eps, "n": n, "d": d,
                            ONE_SHOT: {"mean": float(one.mean()), "std": float(one.std()),
                                         "closed_form": oneshot_closed_form(eps, n, d, cfg.delta)},
                            # closed form of the plain Newton step (no shrinkage); the simulation shrinks
                            PARAM_EM: {"mean": float(qem.mean()), "std": float(qem.std()),
                                    "closed_form_newton": oneshot_closed_form(eps, n, d, cfg.delta, lam=1.0)},
                            NOISY_SGD: {"mean": float(sgd.mean()), "std": float(sgd.std()), "closed_form": None,
                                      "hyperparameters": dict(zip(("lr", "steps", "batch"),
                                                                  dpsgd_tuned(float(eps), n, d, cfg.delta)))}})
    return out
