"""How a measured difference becomes a claim (DESIGN.md section 5): intervals and win / tie / loss.

Two kinds of interval:

- ``paired_difference``: two image sets that are paired image by image (the same initial noise, e.g. one
  adapter sampled by two samplers, or two methods on one sampling seed) and one reference set. A bootstrap
  that resamples the pairs and the reference together, and computes the metric's difference on every
  resample, gives a 95 % percentile interval of the difference; it is a tie when the interval holds 0.
- ``mean_interval``: R independent runs of one cell (fresh privacy noise, training and sampling seeds):
  the mean with a Student-t 95 % half-width (what tables print as mean ± half-width).

FID and KID come from torch-fidelity's own statistics functions on the evaluator's features, computed from
the same uint8 images that ``evaluator.fid_kid`` feeds torch-fidelity, so a bootstrap's centre and a cell's
FID are the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CONFIDENCE = 0.95
BOOTSTRAP = 200  # resamples: the 2.5 % and 97.5 % quantiles from 200 move by about 10 % of the interval
KID_SUBSETS = 10


@torch.no_grad()
def evaluator_features(x: torch.Tensor, model=None, batch_size: int = 512) -> torch.Tensor:
    """The evaluator's 128-d penultimate features of images in [-1, 1], after the same uint8 rounding that
    ``evaluator.fid_kid`` applies (float64, CPU)."""
    from .evaluator import _Uint8Dataset, load_evaluator

    model = model or load_evaluator()
    device = next(model.parameters()).device
    q = _Uint8Dataset(x).x  # the rounding fid_kid's dataset applies
    out = [model.features(b.to(device).float().div(127.5).sub(1.0)).double().cpu() for b in q.split(batch_size)]
    return torch.cat(out)


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between two feature sets (torch-fidelity's statistics)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 feature rows on each side")
    out = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), verbose=False)
    return float(out["frechet_inception_distance"])


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = KID_SUBSETS, seed: int = 0) -> float:
    """KID (unbiased polynomial-kernel MMD^2, torch-fidelity's) averaged over ``subsets`` subsets of the smaller
    side's size; ``seed`` fixes the subsets, so two calls on paired inputs draw the same ones."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(len(a), len(b), 1000)
    out = kid_features_to_metric(a.float(), b.float(), kid_subsets=subsets, kid_subset_size=size, verbose=False,
                                 rng_seed=seed, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    return float(out["kernel_inception_distance_mean"])


@dataclass(frozen=True)
class Difference:
    """metric(a) - metric(b), with its bootstrap interval; lower metric is better, so a negative difference
    whose interval excludes 0 means ``a`` wins."""

    metric: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    resamples: int

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def as_dict(self) -> dict:
        return {"metric": self.metric, "a": self.a, "b": self.b, "diff": self.diff, "low": self.low,
                "high": self.high, "resamples": self.resamples, "verdict": self.verdict}


def verdict(low: float, high: float) -> str:
    """'win' (a better: the interval of a - b lies below 0), 'loss' (above 0) or 'tie' (it holds 0)."""
    if high < 0:
        return "win"
    if low > 0:
        return "loss"
    return "tie"


def paired_difference(a: torch.Tensor, b: torch.Tensor, reference: torch.Tensor, metric: str = "fid",
                      resamples: int = BOOTSTRAP, seed: int = 0, confidence: float = CONFIDENCE) -> Difference:
    """Bootstrap interval of metric(a, ref) - metric(b, ref) for features ``a`` and ``b`` paired row by row.

    Every resample draws one index vector for the pairs (the same rows of ``a`` and ``b``) and one for the
    reference, so what the two sides share (initial noise, reference images) cancels in the difference."""
    if a.shape != b.shape:
        raise ValueError(f"paired features must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    score = {"fid": fid, "kid": kid}[metric]
    gen = np.random.default_rng(seed)
    base_a, base_b = score(a, reference), score(b, reference)
    diffs = np.empty(resamples)
    for r in range(resamples):
        i = torch.as_tensor(gen.integers(len(a), size=len(a)))
        j = torch.as_tensor(gen.integers(len(reference), size=len(reference)))
        ref = reference[j]
        diffs[r] = score(a[i], ref) - score(b[i], ref)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return Difference(metric, base_a, base_b, base_a - base_b, float(low), float(high), resamples)


def mean_interval(values, confidence: float = CONFIDENCE) -> dict:
    """Mean and Student-t half-width of R independent runs (half-width NaN for one run)."""
    from scipy import stats

    v = np.asarray(list(values), dtype=float)
    if len(v) == 0:
        raise ValueError("no values")
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "half_width": math.nan, "runs": 1}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": mean, "half_width": half, "runs": int(len(v))}


# ---------------------------------------------------------------- benchmark cells

METRICS = ("fid", "kid", "precision", "recall", "agreement")
LOWER_IS_BETTER = {"fid": True, "kid": True, "precision": False, "recall": False, "agreement": False}


def _eps_key(cell: dict) -> str:
    e = cell.get("epsilon")
    return "base" if e is None else str(e)


def group_runs(cells) -> dict:
    """(set, method, epsilon key) -> that cell's runs, each run one stored cell (one repeat)."""
    out: dict = {}
    for c in cells:
        out.setdefault((c["set"], c["method"], _eps_key(c)), []).append(c)
    return out


def run_statistics(runs: list[dict]) -> dict:
    """Per metric the runs have: mean, Student-t 95 % half-width and sd over the runs."""
    out = {"runs": len(runs)}
    for m in METRICS:
        vals = [r[m] for r in runs if r.get(m) is not None]
        if vals:
            iv = mean_interval(vals)
            out[m] = {"mean": iv["mean"], "half_width": iv["half_width"],
                      "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan}
    return out


def paired_runs(a: list[dict], b: list[dict], metric: str = "fid") -> dict | None:
    """metric(a) - metric(b) over the runs the two cells share a sampling seed in (the repeat index gives both
    the same seed, so differences are paired): mean, 95 % interval, and the verdict for ``a`` (win: a is
    better, by the metric's direction). None when fewer than 2 runs pair up."""
    by_seed = {r.get("sampling_seed"): r for r in b if r.get(metric) is not None}
    diffs = [r[metric] - by_seed[r.get("sampling_seed")][metric] for r in a
             if r.get(metric) is not None and r.get("sampling_seed") in by_seed]
    if len(diffs) < 2:
        return None
    iv = mean_interval(diffs)
    low, high = iv["mean"] - iv["half_width"], iv["mean"] + iv["half_width"]
    v = verdict(low, high) if LOWER_IS_BETTER[metric] else verdict(-high, -low)
    return {"metric": metric, "diff": iv["mean"], "low": low, "high": high, "runs": len(diffs), "verdict": v}
