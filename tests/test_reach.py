"""The reach check: is the hypernetwork's private set within reach of the public data?"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dphyper.reach import (DETECTABLE, Bank, distance_to_public, load_bank, project_capped_simplex, reach_check,
                           synthetic_set)

from .test_hypernet import needs_models


def _bisect_projection(v: np.ndarray, cap: float) -> np.ndarray:
    """An independent projection onto the capped simplex: plain bisection on the shift, in numpy."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        t = (lo + hi) / 2
        if np.clip(v - t, 0, cap).sum() > 1:
            lo = t
        else:
            hi = t
    return np.clip(v - (lo + hi) / 2, 0, cap)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), inv_cap=st.integers(1, 300), scale=st.floats(1e-3, 1e4), seed=st.integers(0, 10**6),
       nudge=st.floats(-1.0, 1.0))
def test_capped_simplex_projection_matches_an_independent_bisection(n, inv_cap, scale, seed, nudge):
    inv_cap = min(inv_cap, n)  # the set is empty when cap * n < 1
    v = np.random.default_rng(seed).normal(size=n) * scale
    w, t = project_capped_simplex(torch.tensor(v), 1.0 / inv_cap)
    ref = _bisect_projection(v, 1.0 / inv_cap)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert float(w.min()) >= 0 and float(w.max()) <= 1.0 / inv_cap + 1e-12
    assert np.abs(w.numpy() - ref).max() < 1e-8 * max(1.0, scale)
    # Started from a guess (as FISTA's next iteration does), good or off, the result is the same.
    w2, _ = project_capped_simplex(torch.tensor(v), 1.0 / inv_cap, guess=t + nudge * scale)
    assert np.abs(w2.numpy() - ref).max() < 1e-8 * max(1.0, scale)


def test_capped_simplex_refuses_an_empty_set():
    with pytest.raises(ValueError, match="empty"):
        project_capped_simplex(torch.zeros(3), 0.2)


def test_distance_is_zero_for_a_public_subset_and_exact_where_it_is_known():
    g = torch.Generator().manual_seed(0)
    E = torch.nn.functional.normalize(torch.randn(400, 8, generator=g, dtype=torch.float64), dim=1)
    bank = Bank.of(E)
    # The mean of 40 bank points is reachable with n = 40 (and with any smaller n).
    m = E[torch.randperm(400, generator=g)[:40]].mean(0)
    assert distance_to_public(m, 40, bank, iters=800) < 1e-6
    assert distance_to_public(m, 10, bank, iters=800) < 1e-6
    # n = all points: the only reachable mean is the bank's mean, so D is that distance exactly.
    far = torch.full((8,), 0.3, dtype=torch.float64)
    assert distance_to_public(far, 400, bank) == pytest.approx(float(((E.mean(0) - far) ** 2).sum()), rel=1e-9)
    # n = 1: the reachable set is the bank's convex hull; a separating direction u gives a lower bound
    # (u.m - max_i u.e_i)^2 and the nearest bank point an upper bound.
    u = torch.zeros(8, dtype=torch.float64)
    u[0] = 1.0
    outside = 2.0 * u
    d = distance_to_public(outside, 1, bank, iters=800)
    assert (2.0 - float(E[:, 0].max())) ** 2 - 1e-9 <= d <= float(((E - outside) ** 2).sum(1).min()) + 1e-9
    with pytest.raises(ValueError, match="not finite"):
        distance_to_public(torch.full((8,), math.nan), 10, bank)


@needs_models
def test_the_shipped_bank_matches_the_shipped_encoder():
    bank = load_bank()
    assert bank.E.shape == (10000, 64)
    assert torch.allclose(bank.E.norm(dim=1), torch.ones(10000, dtype=torch.float64), atol=2e-3)  # phi is unit-norm


def _release(images, epsilon, seed):
    from dphyper.encoder import embed
    from dphyper.models import shared_models
    from dphyper.privacy import release_mean

    return release_mean(embed(images, shared_models().encoder), epsilon=epsilon,
                        generator=torch.Generator().manual_seed(seed))


@needs_models
def test_verdicts_on_public_sets_and_on_sets_the_project_draws_itself(fmnist_test):
    """Public test-split sets are within reach; typed digits and pixel noise are outside; at a small
    epsilon and n the check says it cannot tell (instead of a false 'within')."""
    x, y = fmnist_test
    bank = load_bank()
    for imgs in (x[y == 4][:100], x[y == 7][:300], x[:100]):  # coats, sneakers, a uniform mix
        for eps, seed in ((math.inf, 0), (8.0, 1), (8.0, 2)):
            r = reach_check(_release(imgs, eps, seed), bank)
            assert r["verdict"] == "within", r
    for kind in ("digits", "noise"):
        imgs = synthetic_set(kind, 100, seed=3)
        for eps, seed in ((math.inf, 0), (8.0, 1)):
            r = reach_check(_release(imgs, eps, seed), bank)
            assert r["verdict"] == "outside" and r["distance"] > r["bound"], (kind, r)
        r = reach_check(_release(imgs, 0.5, 4), bank)
        assert r["verdict"] != "within" and (r["verdict"] == "outside" or r["bound"] > DETECTABLE)
    r = reach_check(_release(x[y == 4][:100], 0.5, 5), bank)
    assert r["verdict"] == "cannot tell" and "too noisy" in r["message"] and r["bound"] > DETECTABLE


@needs_models
def test_a_large_tight_public_set_is_within_reach():
    """2,000 trousers (more than the bank holds of one class): the cap at 500 keeps it reachable."""
    from dphyper.data import load_fashion_mnist

    x, y = load_fashion_mnist("train")
    held_out = torch.ones(len(x), dtype=torch.bool)
    held_out[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:10000]] = False  # the bank's images
    imgs = x[held_out & (y == 1)][:2000]
    assert len(imgs) == 2000
    assert reach_check(_release(imgs, math.inf, 0))["verdict"] == "within"


def test_too_few_images_or_overflowing_numbers_cannot_tell():
    from dphyper.privacy import ReleasedMean

    ev = None
    few = ReleasedMean(mean=torch.zeros(64), noisy_count=12.0, noise_std_mean=0.0, event=ev)
    inf = ReleasedMean(mean=torch.full((64,), math.inf), noisy_count=500.0, noise_std_mean=1e40, event=ev)
    for rel in (few, inf):
        r = reach_check(rel, bank=Bank.of(torch.eye(64)))
        assert r["verdict"] == "cannot tell" and r["distance"] is None
    # Each says why: too few images is not blamed on the noise.
    assert reach_check(few, bank=Bank.of(torch.eye(64)))["message"].startswith("ⓘ Too few images (under 50)")
    assert "too noisy" in reach_check(inf, bank=Bank.of(torch.eye(64)))["message"]


@needs_models
def test_every_verdict_reaches_the_caption_and_a_failed_check_says_so(monkeypatch):
    """'within' and a check that could not run are said on the page too (a silent caption cannot tell a
    teacher "fine" from "broken"); a warning is bold. The run itself never fails on the check."""
    import dphyper.reach as reach
    from dphyper.app import _caption
    from dphyper.data import load_fashion_mnist
    from dphyper.methods import get_method, run_method
    from dphyper.models import shared_models

    m = get_method("hypernet")
    x, y = load_fashion_mnist("test")
    r = run_method(m, x[y == 1][:600], m.config_cls(epsilon=math.inf, samples=0), shared_models())
    assert r.report["reach"]["verdict"] == "within" and r.report["note"].startswith("✓")
    assert r.report["note"] in _caption("Hypernetwork", r.report, 1.0)

    def broken(*a, **k):
        raise FileNotFoundError("no public bank")

    monkeypatch.setattr(reach, "load_bank", broken)
    r = run_method(m, x[y == 1][:600], m.config_cls(epsilon=8.0, samples=0), shared_models())
    assert r.report["reach"]["verdict"] == "unavailable" and "unavailable" in _caption("H", r.report, 1.0)


@needs_models
def test_the_hypernetwork_reports_the_verdict_from_its_release_alone(monkeypatch):
    """The report's verdict is what the check gives on the released mean (post-processing only), and
    an out-of-reach folder gets the warning as the caption's note."""
    from dphyper.methods import get_method, run_method
    from dphyper.models import shared_models

    import dphyper.reach as reach_mod

    seen = []
    real = reach_mod.distance_to_public
    monkeypatch.setattr(reach_mod, "distance_to_public", lambda mean, *a, **k: seen.append(mean.clone()) or real(mean, *a, **k))
    m = get_method("hypernet")
    cfg = m.config_cls(epsilon=8.0, samples=0)
    r = run_method(m, synthetic_set("digits", 300, seed=7), cfg, shared_models())
    rel = r.owner["release"]
    assert r.report["reach"] == reach_check(rel)
    assert r.report["reach"]["verdict"] == "outside" and r.report["note"].startswith("⚠")
    from dphyper.app import _caption

    assert f"**{r.report['note']}**" in _caption("Hypernetwork", r.report, 1.0)  # a warning is bold
    # The check saw the released mean, never the exact (owner-only) one. (Comparing the two distances
    # instead failed once: at eps = 8 and n = 300 they can agree to the report's 5 decimals.)
    assert len(seen) >= 1 and torch.equal(seen[0], rel.mean)
    assert not torch.equal(seen[0], r.noise_view.exact.to(seen[0].dtype))
    assert r.events and len(r.events) == 1  # the check adds no privacy event
    assert "reach_check" in r.timings


def test_synthetic_sets_are_seeded_images_in_range():
    a, b = synthetic_set("letters", 5, seed=1), synthetic_set("letters", 5, seed=1)
    assert a.shape == (5, 1, 32, 32) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, synthetic_set("letters", 5, seed=2))
    with pytest.raises(ValueError, match="unknown kind"):
        synthetic_set("cats", 3)
