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


def test_precision_and_recall_tell_a_collapsed_set_from_a_good_one():
    """Issue 34: beside FID and KID, precision/recall (torch-fidelity, 3 neighbours): a held-out half of one class
    scores high on both, another class scores ~0 on both, and one image repeated (mode collapse) loses recall."""
    from dphyper.data import load_fashion_mnist
    from dphyper.evaluator import fid_kid

    x, y = load_fashion_mnist("test")
    coats, sneakers = x[y == 4], x[y == 7]
    good = fid_kid(coats[:300], coats[300:900])
    assert good["precision"] > 0.7 and good["recall"] > 0.7
    other = fid_kid(sneakers[:300], coats[300:900])
    assert other["precision"] < 0.05 and other["recall"] < 0.05
    collapsed = fid_kid(coats[10:11].repeat(300, 1, 1, 1), coats[300:900])
    assert collapsed["recall"] < 0.05
    assert "precision" not in fid_kid(coats[:3], coats[3:6])  # too few images for 3 neighbours: not reported


def _run(method, seed, fid, eps=1.0, s="sneakers-100", **kw):
    return {"set": s, "method": method, "epsilon": eps, "sampling_seed": seed, "fid": fid, "kid": fid / 1000,
            "agreement": 0.5, **kw}


def test_paired_runs_count_a_win_only_when_the_interval_excludes_zero():
    # The flagship is better by exactly 10 in every run, although each run's level moves by far more: a win.
    flag = [_run("hypernet", k, 100 + 40 * k) for k in range(5)]
    other = [_run("dpsgd", k, 110 + 40 * k) for k in range(5)]
    v = evidence.paired_runs(flag, other)
    assert v["diff"] == pytest.approx(-10) and v["verdict"] == "win" and v["runs"] == 5
    # Differences of both signs: a tie. Precision is higher-is-better, so its sign flips the verdict.
    noisy = [_run("qem", k, 100 + 40 * k + (15 if k % 2 else -15)) for k in range(5)]
    assert evidence.paired_runs(flag, noisy)["verdict"] == "tie"
    hi = [dict(r, precision=0.9) for r in flag]
    lo = [dict(r, precision=0.5 + 0.01 * k) for k, r in enumerate(other)]
    assert evidence.paired_runs(hi, lo, "precision")["verdict"] == "win"
    # Runs pair by sampling seed only; fewer than 2 pairs give no verdict.
    assert evidence.paired_runs(flag[:1], other) is None
    assert evidence.paired_runs(flag, [_run("dpsgd", 99, 1.0)]) is None


def test_the_evidence_section_is_generated_from_the_runs(monkeypatch):
    from dphyper.bench import evidence_suite as evidence_table

    cells = [_run("hypernet", k, 60 + k) for k in range(5)] + [_run("dpsgd", k, 300 + 3 * k) for k in range(3)] + \
        [_run("base", 0, 310.0, eps=None)]
    monkeypatch.setattr(evidence_table, "evidence_cells", lambda res, steps=25: cells)
    text = evidence_table.text({})
    st = evidence.run_statistics(cells[:5])
    assert st["runs"] == 5 and st["fid"]["mean"] == 62
    assert f"| hypernet | 1.0 | 5 | 62.0 ± {st['fid']['half_width']:.1f} |" in text
    assert "| dpsgd | 1.0 | 3 | 303.0 ± " in text and " win |" in text
    assert "dpsgd 1 win / 0 tie / 0 loss" in text
    assert "(9 runs stored so far)" in text
