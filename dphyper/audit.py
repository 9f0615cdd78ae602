"""Empirical privacy audit: can an attacker tell whether a canary was in the private set?

``python -m dphyper audit --method {hypernet,dpsgd,pda-dpmd} --epsilon E [--trials T]`` runs the
mechanism many times, half of them with a canary added to the data (add/remove-one
adjacency), lets a membership test guess from the released output alone, and turns its
true/false positive rates into a lower bound on epsilon (Jagielski, Ullman and Oprea 2020):
for any (epsilon, delta)-DP mechanism, TPR <= e^eps * FPR + delta and
(1 - FPR) <= e^eps * (1 - TPR) + delta. The rates carry Clopper-Pearson intervals, so the
bound holds with the stated confidence. The threshold of the test is picked on one half of
the trials and the rates are measured on the other half.

A correct implementation must give ``epsilon_lower_bound <= epsilon_claimed``. T trials can
never prove more than ``detectable_max`` (about 2.6 / 4.2 / 5.6 / 7.2 at 200 / 1,000 / 4,000 /
20,000 trials): a claim at or above it is reported "inconclusive", never "consistent". The
``--broken`` flag (for tests and teaching only) runs a deliberately wrong mechanism, as an
explicit argument of a separate code path (the shipped privacy module is never patched):
``no-clip`` skips clipping while the noise still assumes it, ``weak-noise`` divides the
noise by 10. Those must be caught: ``epsilon_lower_bound > epsilon_claimed``.

* ``hypernet`` audits ``privacy.release_mean`` itself (the exact function the private path
  calls) on real encoder embeddings of public images; the canary is a far-out embedding
  and the attacker knows every other record (the worst case the guarantee covers).
* ``dpsgd`` audits the Opacus DP-SGD set-up the baseline uses (``make_private`` with
  Poisson sampling, per-sample clipping, sigma from ``dpsgd_noise_multiplier``, OS-seeded
  noise) on a small linear model where the canary's gradient points in a direction no other
  example touches (a "Dirac" canary), so the attacker's statistic is the final weight on
  that coordinate. The UNet itself would need hours of runs for the same number of trials.
* ``pda-dpmd`` audits the same set-up with the shipped PDA-DPMD update (``dpsgd.pda_step``:
  the noisy gradient mixed with a public batch's gradient). Its extra broken variant,
  ``private-as-public``, feeds the private records (canary included) as the "public" batch:
  the bug that would make the public gradient cost privacy.
* ``qem`` audits the quadratic exponential mechanism's release (``methods.qem.release_gradients``:
  whitening, clipping and the Gaussian sum-and-count) in a public geometry whose curvature spans
  four orders of magnitude, with a canary gradient along its flattest direction. Its extra broken
  variant, ``clip-before-whitening``, clips before whitening (the sensitivity grows by
  1 / sqrt(lambda_min)). What the method computes after the release is post-processing.
* ``slicing`` audits the slicing release (``methods.slicing.release_slices``: clipping, padding
  to N rows, the random order, the Gaussian noise). The other records are rows of norm C
  orthogonal to the canary's direction; the attacker knows them. Its extra broken variants:
  ``no-padding`` (one row per image: the row count is n) and ``no-shuffle`` (rows in folder
  order with the canary first, so every other row moves by one place).
* ``sparse`` audits the selection of DP sparse fine-tuning (``methods.sparse.release_scores``, as
  shipped: unit-norm score vectors, their Gaussian sum, then ``top_groups``) on 32 groups: the
  other records put their score on three groups and a trace on the rest; the canary's raw score
  vector is 100 times a group nobody else uses. The attacker sees the noisy scores and the mask.
  Its extra broken variant, ``exact-selection``, picks the rows from the scores without noise
  (releasing only the mask): the bug of treating "which weights" as free. Scope: the release and the
  top-k as shipped, at the multiplier ``calibrate_gaussian`` gives for the audited epsilon; the
  per-example scores (``example_scores``: a test checks one image's score does not depend on the
  others in its batch) and the split's calibration (tested against independent numbers) are not in
  it. Phase 2 is Opacus' DP-SGD (``make_private``, audited under ``dpsgd``) with
  ``dpsgd.masked_step`` around it (masks before the clip and after the noise; tested in
  tests/test_sparse.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class AuditConfig:
    """`python -m dphyper audit`: empirical lower bound on epsilon from a canary membership test."""

    method: str = field(default="hypernet", metadata={"help": "hypernet, dpsgd, pda-dpmd, qem, slicing or sparse"})
    epsilon: float = field(default=1.0, metadata={"help": "epsilon the mechanism claims"})
    delta: float = field(default=1e-5, metadata={"help": "delta the mechanism claims"})
    trials: int = field(default=0, metadata={"help": "runs with and without the canary (0 = 20000 hypernet, qem, slicing, sparse; "
                                                         "1000 dpsgd and pda-dpmd)"})
    confidence: float = field(default=0.95, metadata={"help": "confidence of the lower bound"})
    n: int = field(default=100, metadata={"help": "size of the audited dataset (without the canary)"})
    seed: int = field(default=0, metadata={"help": "seed of the canary coin flips and thresholds (not the DP noise)"})
    broken: str = field(default="none", metadata={"help": "TEST ONLY: none, no-clip, weak-noise, (pda-dpmd) "
                                                          "private-as-public, (qem) clip-before-whitening, "
                                                          "(slicing) no-padding or no-shuffle, (sparse) exact-selection "
                                                          "(a wrong mechanism)"})


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) interval for a binomial proportion."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def epsilon_lower_bound(tp: int, fn: int, fp: int, tn: int, delta: float, confidence: float) -> float:
    """The largest epsilon the confidence intervals of (TPR, FPR) force, from both inequalities."""
    alpha = 1 - confidence  # split between the two rates (Bonferroni): each interval at 1 - alpha / 2
    tpr_lo, _ = clopper_pearson(tp, tp + fn, alpha)
    _, fpr_hi = clopper_pearson(fp, fp + tn, alpha)
    bounds = [0.0]
    if fpr_hi > 0 and tpr_lo - delta > 0:
        bounds.append(math.log((tpr_lo - delta) / fpr_hi))
    if tpr_lo < 1 and (1 - fpr_hi) - delta > 0:
        bounds.append(math.log(((1 - fpr_hi) - delta) / (1 - tpr_lo)))
    return max(bounds)


def _best_threshold(scores: np.ndarray, member: np.ndarray, delta: float) -> tuple[float, float]:
    """(empirical bound, threshold) maximising the bound on the selection half."""
    best, best_t = -1.0, float(np.median(scores))
    candidates = np.quantile(scores, np.linspace(0.5, 0.999, 60))
    distinct = np.unique(scores)
    if len(distinct) <= 60:  # a statistic with few values (a row count): every value is a threshold
        candidates = np.concatenate([candidates, distinct])
    for t in candidates:
        pred = scores > t
        tp, fp = int((pred & member).sum()), int((pred & ~member).sum())
        fn, tn = int((~pred & member).sum()), int((~pred & ~member).sum())
        tpr, fpr = tp / max(tp + fn, 1), (fp + 1) / max(fp + tn, 1)
        val = math.log(max(tpr - delta, 1e-12) / fpr)
        if val > best:
            best, best_t = val, float(t)
    return best, best_t


BROKEN_VARIANTS = ("none", "no-clip", "weak-noise")
# Every registered method has an audit, with the variants it can be broken in (tests check both).
AUDIT_VARIANTS = {"hypernet": BROKEN_VARIANTS, "dpsgd": BROKEN_VARIANTS,
                  "pda-dpmd": (*BROKEN_VARIANTS, "private-as-public"),
                  "qem": (*BROKEN_VARIANTS, "clip-before-whitening"),
                  "slicing": (*BROKEN_VARIANTS, "no-padding", "no-shuffle"),
                  "sparse": (*BROKEN_VARIANTS, "exact-selection")}


def _check_broken(kind: str, method: str = "hypernet") -> None:
    allowed = AUDIT_VARIANTS.get(method, BROKEN_VARIANTS)
    if kind not in allowed:
        raise ValueError(f"unknown broken variant {kind!r} for {method}: {', '.join(allowed)}")


def _audited_release(x: torch.Tensor, cfg: "AuditConfig"):
    """The release under audit: the shipped ``release_mean`` itself, or an explicitly broken copy.

    The broken variants call the noisy sum-and-count step with wrong arguments; they never
    touch ``dphyper.privacy`` (a server shares it with every session: patching it would weaken
    other visitors' real releases while an audit runs).
    """
    from .privacy import _gaussian_sum_count, calibrate_gaussian, clip_embeddings, release_mean

    if cfg.broken == "none":
        return release_mean(x, epsilon=cfg.epsilon, delta=cfg.delta)  # OS-seeded noise, as shipped
    if cfg.broken == "no-clip":  # clipping off, the noise still sized for C = 1
        rows, multiplier = x.to(torch.float64), calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta)
    else:  # weak-noise
        rows, multiplier = clip_embeddings(x, max_norm=1.0), calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta) / 10
    return _gaussian_sum_count(rows, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=multiplier, clip_norm=1.0)


def detectable_epsilon(members: int, non_members: int, delta: float, confidence: float) -> float:
    """The largest lower bound these measured trials can give: a perfect attack on this split.

    A claim at or above it cannot be refuted by this audit, whatever the mechanism does: the
    verdict is then "inconclusive", not "consistent".
    """
    return epsilon_lower_bound(members, 0, 0, non_members, delta, confidence)


def _hypernet_scores(cfg: AuditConfig, member: np.ndarray) -> np.ndarray:
    """Release the mean of (D or D + canary) per trial; score = noisy sum along the canary."""
    from .data import load_fashion_mnist_uint8, uint8_to_tensor
    from .encoder import embed, load_encoder
    from .privacy import clip_embeddings

    images, _ = load_fashion_mnist_uint8("train")
    rng = np.random.default_rng(cfg.seed)
    data = embed(uint8_to_tensor(images[rng.choice(len(images), cfg.n, replace=False)]), load_encoder()).double()
    mean_dir = data.mean(0)
    canary = torch.randn(data.shape[1], generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64)
    canary -= (canary @ mean_dir) / (mean_dir @ mean_dir) * mean_dir  # away from the data
    canary = canary / canary.norm() * 100.0  # far outside the clipping ball
    known = clip_embeddings(data, max_norm=1.0).sum(0)  # the attacker knows every other record
    u = canary / canary.norm()
    scores = np.empty(len(member))
    for i, m in enumerate(member):
        x = torch.cat([data, canary[None]]) if m else data
        rel = _audited_release(x, cfg)
        total = rel.mean.double() * max(rel.noisy_count, 1.0)
        scores[i] = float((total - known) @ u) + (rel.noisy_count - cfg.n)  # both coordinates move by 1
    return scores


def _qem_scores(cfg: AuditConfig, member: np.ndarray, k: int = 16) -> np.ndarray:
    """The quadratic EM's release (``methods.qem.release_gradients``, as shipped) on gradients of 2k
    weights projected onto a k-dim public subspace whose curvature spans four orders of magnitude.

    The per-example gradients are Gaussian rows; the canary's gradient points along the flattest
    direction of the curvature (where whitening amplifies most) with a huge norm, and the attacker
    knows every other record. ``clip-before-whitening`` clips the raw gradient and then whitens
    (sensitivity C / sqrt(lambda_min), not 1): the bug the module docstring warns about.
    """
    from .methods.qem import Geometry, QEMConfig, release_gradients, whitened_rows
    from .privacy import _gaussian_sum_count, calibrate_gaussian, clip_embeddings

    g = torch.Generator().manual_seed(cfg.seed)
    evecs = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64)).Q
    evals = torch.logspace(-4, 0, k, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(2 * k, k, generator=g, dtype=torch.float64)).Q  # a k-dim subspace of 2k weights
    geo = Geometry(basis=basis, evecs=evecs, evals=evals, dim=k)
    qcfg = QEMConfig(epsilon=cfg.epsilon, delta=cfg.delta, clip=1.0, damping=0.01, samples=0)
    data = torch.randn(cfg.n, 2 * k, generator=g, dtype=torch.float64) * 0.05
    canary = basis @ evecs[:, 0] * 100.0  # the flattest direction, far outside the clipping ball
    W = geo.whitener(qcfg.damping)
    multiplier = calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta)

    def rows_of(x: torch.Tensor) -> torch.Tensor:
        if cfg.broken == "clip-before-whitening":
            return clip_embeddings(geo.project(x) / qcfg.clip, max_norm=1.0) @ W
        if cfg.broken == "no-clip":
            return whitened_rows(x, geo, qcfg)
        return clip_embeddings(whitened_rows(x, geo, qcfg), max_norm=1.0)

    known = rows_of(data).sum(0)  # the attacker knows every other record
    c_row = rows_of(canary[None])[0]
    u = c_row / c_row.norm()
    scores = np.empty(len(member))
    for i, m in enumerate(member):
        x = torch.cat([data, canary[None]]) if m else data
        if cfg.broken == "none":
            rel = release_gradients(x, geo, qcfg)  # OS-seeded noise, as shipped
        else:
            mult = multiplier / 10 if cfg.broken == "weak-noise" else multiplier
            rel = _gaussian_sum_count(rows_of(x), epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=mult,
                                      clip_norm=1.0)
        total = rel.mean.double() * max(rel.noisy_count, 1.0)
        scores[i] = float((total - known) @ u) + (rel.noisy_count - cfg.n)
    return scores


def _slicing_scores(cfg: AuditConfig, member: np.ndarray, k: int = 8, spare: int = 8) -> np.ndarray:
    """The slicing release (``methods.slicing.release_slices``, as shipped) with N = n + ``spare`` rows.

    The n known records are rows of norm C = 1 in random directions orthogonal to the canary's
    direction u; the canary is 100 u (far outside the clipping ball). Statistics (the audit picks
    one on half the trials): the largest u-coordinate of a released row; the log-sum-exp likelihood
    ratio of "one row has C u added" at the claimed noise; the number of rows; the likelihood ratio
    of the one-place shift that an unshuffled release with the canary first would show.
    """
    from .methods.slicing import _gaussian_rows, release_slices
    from .privacy import calibrate_gaussian, clip_embeddings

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


def _sparse_scores(cfg: AuditConfig, member: np.ndarray, groups: int = 32, k: int = 4) -> np.ndarray:
    """The sparse method's selection (``methods.sparse.release_scores`` + ``top_groups``, as shipped).

    Statistics: the noisy score of the canary's group 0 beyond what the known records put there, and
    whether group 0 is in the top k (the mask the rest of the run sees).
    """
    from .methods.sparse import release_scores, top_groups, unit_rows
    from .privacy import calibrate_gaussian

    g = torch.Generator().manual_seed(cfg.seed)
    data = torch.rand(cfg.n, groups, generator=g, dtype=torch.float64) * 1e-3  # a trace everywhere but group 0
    data[:, 0] = 0.0
    data[:, 1:4] += 1.0  # the records' weight is on groups 1-3
    canary = torch.zeros(1, groups, dtype=torch.float64)
    canary[0, 0] = 100.0  # far outside the unit ball, on a group nobody else touches
    multiplier = calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta)
    known = unit_rows(data).sum(0)[0]
    scores = np.empty((len(member), 2))
    for i, m in enumerate(member):
        x = torch.cat([data, canary]) if m else data
        if cfg.broken == "none":
            noisy = release_scores(x, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=multiplier).scores
        elif cfg.broken == "no-clip":  # raw scores summed, the noise still sized for unit-norm rows
            noisy = x.sum(0) + torch.randn(groups, dtype=torch.float64) * multiplier
        elif cfg.broken == "weak-noise":
            noisy = release_scores(x, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=multiplier / 10).scores
        else:  # exact-selection: the mask from the noiseless sum; only the mask is released
            noisy = release_scores(x, epsilon=math.inf, delta=cfg.delta, noise_multiplier=0.0).scores
        chosen = top_groups(noisy, k)
        scores[i, 0] = 0.0 if cfg.broken == "exact-selection" else float(noisy[0] - known)
        scores[i, 1] = float((chosen == 0).any())
    return scores


def _dpsgd_scores(cfg: AuditConfig, member: np.ndarray, steps: int = 20, batches: int = 10,
                  pda: bool = False) -> np.ndarray:
    """Opacus DP-SGD (as the baseline sets it up) on a linear model with a Dirac canary.

    ``pda``: the PDA-DPMD update instead (``dpsgd.pda_step``: the noisy private gradient mixed
    with a public batch's gradient, weight ``pda_alpha``); its broken variant
    ``private-as-public`` draws the "public" batch from the private records (canary included).
    """
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from .dpsgd import dpsgd_noise_multiplier, make_private, pda_alpha, pda_step, public_gradient

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
    cy = torch.tensor([[-100.0]])
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
                        ((model(xb) - yb) ** 2).sum().backward()
                    else:
                        for p in model.parameters():
                            p.grad_sample = torch.zeros((0, *p.shape))
                    if pda:
                        pda_step(opt, list(model.parameters()), public_grads, pda_alpha(done, steps), private=True)
                    else:
                        opt.step()
                    done += 1
        w0 = model._module.weight[0, 0].item()
        # Each clipped canary step pushes w0 down by C / B. With PDA-DPMD, a canary that leaks into the
        # mixed update can also make w0 oscillate and grow: two statistics, -w0 and |w0|, and the
        # audit picks one on the selection half (never on the measured half).
        scores[i] = (-w0, abs(w0)) if pda else -w0
    return scores


def run_audit(cfg: AuditConfig) -> dict:
    if cfg.method not in AUDIT_VARIANTS:
        raise ValueError(f"method must be one of {', '.join(AUDIT_VARIANTS)}")
    _check_broken(cfg.broken, cfg.method)
    if not (math.isfinite(cfg.epsilon) and cfg.epsilon > 0):
        raise ValueError(f"the audited epsilon must be finite and > 0, got {cfg.epsilon}")
    trials = cfg.trials or (20000 if cfg.method in ("hypernet", "qem", "slicing", "sparse") else 1000)
    rng = np.random.default_rng(cfg.seed + 1)
    member = rng.random(trials) < 0.5
    t0 = time.perf_counter()
    if cfg.method == "hypernet":
        scores = _hypernet_scores(cfg, member)
    elif cfg.method == "qem":
        scores = _qem_scores(cfg, member)
    elif cfg.method == "slicing":
        scores = _slicing_scores(cfg, member)
    elif cfg.method == "sparse":
        scores = _sparse_scores(cfg, member)
    else:
        scores = _dpsgd_scores(cfg, member, pda=cfg.method == "pda-dpmd")
    half = np.arange(trials) < trials // 2  # select statistic and threshold on one half, measure on the other
    if scores.ndim == 1:  # one statistic, or several to choose from (one column each)
        scores = scores[:, None]
    picks = [_best_threshold(scores[half, k], member[half], cfg.delta) for k in range(scores.shape[1])]
    statistic = int(np.argmax([v for v, _ in picks]))
    scores, thr = scores[:, statistic], picks[statistic][1]
    pred, mem = scores[~half] > thr, member[~half]
    tp, fp = int((pred & mem).sum()), int((pred & ~mem).sum())
    fn, tn = int((~pred & mem).sum()), int((~pred & ~mem).sum())
    lb = epsilon_lower_bound(tp, fn, fp, tn, cfg.delta, cfg.confidence)
    detectable = detectable_epsilon(int(mem.sum()), int((~mem).sum()), cfg.delta, cfg.confidence)
    # A claim the trials cannot reach is neither confirmed nor refuted: say so instead of "consistent".
    if lb > cfg.epsilon:
        verdict = "violated"
    elif cfg.epsilon >= detectable:
        verdict = "inconclusive"
    else:
        verdict = "consistent"
    return {"method": cfg.method, "broken": cfg.broken, "epsilon_claimed": cfg.epsilon, "delta": cfg.delta,
            "epsilon_lower_bound": lb, "confidence": cfg.confidence, "trials": trials,
            "trials_measured": int((~half).sum()), "tpr": tp / max(tp + fn, 1), "fpr": fp / max(fp + tn, 1),
            "counts": {"tp": tp, "fn": fn, "fp": fp, "tn": tn}, "threshold": thr, "statistic": statistic,
            "n": cfg.n,
            "detectable_max": detectable, "verdict": verdict,
            "seconds": round(time.perf_counter() - t0, 1),
            "passed": (verdict == "consistent") if cfg.broken == "none" else (verdict == "violated")}
