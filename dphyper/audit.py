"""Empirical privacy audit: can an attacker tell whether a canary was in the private set?

``python -m dphyper audit --method METHOD --epsilon E [--trials T]`` runs the
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

Each registered method brings its own audit (``Method.audit``, a ``methods.base.Audit``): the
function that runs its release per trial, as shipped or broken, with its set-up (the canary, what
the attacker knows, the statistics) in that function's docstring, in the method's file:
``methods/hypernet.py`` (``privacy.release_mean`` on real encoder embeddings), ``methods/dpsgd.py``
(Opacus DP-SGD on a linear model with a Dirac canary; PDA-DPMD reuses it with its mixed update
and the extra variant ``private-as-public``), ``methods/qem.py`` (``clip-before-whitening``),
``methods/slicing.py`` (``no-padding``, ``no-shuffle``) and ``methods/sparse.py``
(``exact-selection``). This module does the statistics, the same for every method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AuditConfig:
    """`python -m dphyper audit`: empirical lower bound on epsilon from a canary membership test."""

    # The default is the flagship (methods.FLAGSHIP, not imported here: the CLI builds this without the registry).
    method: str = field(default="hypernet", metadata={"help": "a registered method (`run --help` lists them)"})
    epsilon: float = field(default=1.0, metadata={"help": "epsilon the mechanism claims"})
    delta: float = field(default=1e-5, metadata={"help": "delta the mechanism claims"})
    trials: int = field(default=0, metadata={"help": "runs with and without the canary (0 = the method's default: 20000, "
                                                         "1000 for dpsgd and pda-dpmd)"})
    confidence: float = field(default=0.95, metadata={"help": "confidence of the lower bound"})
    n: int = field(default=100, metadata={"help": "size of the audited dataset (without the canary)"})
    seed: int = field(default=0, metadata={"help": "seed of the canary coin flips and thresholds (not the DP noise)"})
    broken: str = field(default="none", metadata={"help": "TEST ONLY: a wrong mechanism: none, no-clip, weak-noise, or the "
                                                          "method's own (pda-dpmd: private-as-public, qem: "
                                                          "clip-before-whitening, slicing: no-padding, no-shuffle, "
                                                          "sparse: exact-selection)"})


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


def audit_variants() -> dict[str, tuple[str, ...]]:
    """Method name -> ("none", then the bugs its audit can simulate), for every registered method with an
    audit (``Method.audit``; a test requires every method to have one), in the registry's order."""
    from .methods import METHODS  # here, not at import: a method file may import this module

    return {name: m.audit.variants for name, m in METHODS.items() if m.audit is not None}


def detectable_epsilon(members: int, non_members: int, delta: float, confidence: float) -> float:
    """The largest lower bound these measured trials can give: a perfect attack on this split.

    A claim at or above it cannot be refuted by this audit, whatever the mechanism does: the
    verdict is then "inconclusive", not "consistent".
    """
    return epsilon_lower_bound(members, 0, 0, non_members, delta, confidence)


def run_audit(cfg: AuditConfig, with_scores: bool = False) -> dict:
    """The audit's verdict as JSON; ``with_scores`` adds the measured half's attack scores (``scores``: member /
    non_member lists, for the app's histogram; the CLI prints the verdict only)."""
    from .methods import METHODS

    method = METHODS.get(cfg.method)
    audit = method.audit if method is not None else None
    if audit is None:
        raise ValueError(f"method must be one of {', '.join(audit_variants())}")
    if cfg.broken not in audit.variants:
        raise ValueError(f"unknown broken variant {cfg.broken!r} for {cfg.method}: {', '.join(audit.variants)}")
    if not (math.isfinite(cfg.epsilon) and cfg.epsilon > 0):
        raise ValueError(f"the audited epsilon must be finite and > 0, got {cfg.epsilon}")
    trials = cfg.trials or audit.trials
    rng = np.random.default_rng(cfg.seed + 1)
    member = rng.random(trials) < 0.5
    t0 = time.perf_counter()
    scores = np.asarray(audit.scores(cfg, member), dtype=float)
    half = np.arange(trials) < trials // 2  # select statistic and threshold on one half, measure on the other
    if scores.ndim == 1:  # one statistic, or several to choose from (one column each)
        scores = scores[:, None]
    picks = [_best_threshold(scores[half, k], member[half], cfg.delta) for k in range(scores.shape[1])]
    statistic = int(np.argmax([v for v, _ in picks]))
    scores_all = scores
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
    out = {"method": cfg.method, "broken": cfg.broken, "epsilon_claimed": cfg.epsilon, "delta": cfg.delta,
            "epsilon_lower_bound": lb, "confidence": cfg.confidence, "trials": trials,
            "trials_measured": int((~half).sum()), "tpr": tp / max(tp + fn, 1), "fpr": fp / max(fp + tn, 1),
            "counts": {"tp": tp, "fn": fn, "fp": fp, "tn": tn}, "threshold": thr,
            # Which score the attack used: a method's audit may offer several (one column each, its docstring
            # names them); the selection half picked this one.
            "statistic": f"score column {statistic} of {scores_all.shape[1]} (picked on the selection half)",
            "n": cfg.n,
            "detectable_max": detectable, "verdict": verdict,
            "seconds": round(time.perf_counter() - t0, 1),
            "passed": (verdict == "consistent") if cfg.broken == "none" else (verdict == "violated")}
    if with_scores:
        measured = scores[~half]
        out["scores"] = {"member": measured[mem].tolist(), "non_member": measured[~mem].tolist()}
    return out
