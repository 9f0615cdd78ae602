"""evidence.py: paired bootstrap differences, verdicts and run intervals."""

import math

import numpy as np
import pytest
import torch

from dphyper import evidence


def _feats(n, shift=0.0, seed=0, d=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_the_same_features_tie_at_exactly_zero():
    a, ref = _feats(300, seed=1), _feats(400, seed=2)
    d = evidence.paired_difference(a, a.clone(), ref, resamples=50)
    assert d.diff == 0 and d.low == 0 and d.high == 0 and d.verdict == "tie"


def test_a_shifted_set_loses_and_the_pairs_cancel_what_they_share():
    ref = _feats(500, seed=2)
    a = _feats(300, seed=1)
    worse = a + 0.5  # the same rows, moved away from the reference
    d = evidence.paired_difference(worse, a, ref, resamples=100)
    assert d.verdict == "loss" and d.low > 0
    assert d.diff == pytest.approx(evidence.fid(worse, ref) - evidence.fid(a, ref))
    # Reversed, the same difference is a win.
    assert evidence.paired_difference(a, worse, ref, resamples=100).verdict == "win"
    # A tiny shift of paired rows is a tie although unpaired sampling noise would hide far larger ones.
    tiny = evidence.paired_difference(a + 1e-4, a, ref, resamples=100)
    assert tiny.low <= 0 <= tiny.high or abs(tiny.diff) < 1e-3


def test_kid_is_paired_too():
    ref, a = _feats(400, seed=2), _feats(300, seed=1)
    assert evidence.paired_difference(a + 0.5, a, ref, metric="kid", resamples=40).verdict == "loss"


def test_the_fid_is_the_cells_fid():
    """The bootstrap's centre is the number a benchmark cell stores (evaluator.fid_kid through torch-fidelity)."""
    from dphyper.evaluator import fid_kid, load_evaluator

    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 32, 32, generator=g) * 2 - 1
    y = torch.rand(220, 1, 32, 32, generator=g).pow(2) * 2 - 1
    ev = load_evaluator()
    mine = evidence.fid(evidence.evaluator_features(x, ev), evidence.evaluator_features(y, ev))
    assert mine == pytest.approx(fid_kid(x, y)["fid"], rel=1e-3)


def test_the_run_interval_is_students_t():
    v = [10.0, 12.0, 11.0, 13.0, 9.0]
    out = evidence.mean_interval(v)
    # t_{0.975, 4} = 2.7764 (tables), sd = 1.5811
    assert out["mean"] == 11.0
    assert out["half_width"] == pytest.approx(2.7764 * np.std(v, ddof=1) / math.sqrt(5), rel=1e-4)
    assert math.isnan(evidence.mean_interval([3.0])["half_width"])
    with pytest.raises(ValueError):
        evidence.mean_interval([])


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="paired"):
        evidence.paired_difference(_feats(10), _feats(11), _feats(20))
