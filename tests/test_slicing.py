"""The slicing mechanism: clipping, padding, shuffle and calibration of its release, the closed-form
smoothed sliced divergence, the fit, the ledger and the method end to end (its audit: test_audit)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dphyper.data import DataError
from dphyper.methods.slicing import (SlicingConfig, directions, divergence_terms, fit_weights, mmd2, projection,
                                     release_slices, _best_padding_mix)
from dphyper.privacy import PrivacyLedger, release_mean

from .test_hypernet import needs_models
from .test_privacy import _pld_epsilon


def _noiseless(x, rows, clip=1.0, seed=0):
    return release_slices(x, rows=rows, clip=clip, epsilon=math.inf, delta=1e-5,
                          generator=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(0, 10), st.floats(1e-3, 10.0), st.floats(-3, 6), st.integers(0, 2**31))
def test_the_release_has_n_clipped_rows_and_zeros_whatever_the_data(n, spare, clip, log_scale, seed):
    """Before noise the release is a permutation of the clipped rows and N - n zero rows: the row count is
    the public N, every row is inside the clipping ball, and a NaN row counts as a zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64) * 10 ** log_scale
    x[0, 1] = float("nan") if seed % 3 == 0 else x[0, 1]
    rel = _noiseless(x, n + spare, clip, seed)
    assert rel.rows.shape == (n + spare, 4)
    norms = rel.rows.norm(dim=1)
    assert (norms <= clip * (1 + 1e-9)).all()
    assert int((norms > 0).sum()) <= n and int((norms == 0).sum()) >= spare
    assert rel.event.sensitivity == clip


def test_rows_land_in_uniformly_random_places():
    """The argument rests on a uniformly random arrangement: over seeds every place holds an image's row
    with frequency n / N (a fixed order would let one added image shift every later row)."""
    x = torch.ones(3, 2, dtype=torch.float64)
    hits = torch.zeros(12)
    trials = 3000
    for s in range(trials):
        hits += (_noiseless(x, 12, seed=s).rows.norm(dim=1) > 0).float()
    freq = hits / trials
    assert ((freq - 0.25).abs() < 5 * math.sqrt(0.25 * 0.75 / trials)).all(), freq


def test_the_private_placement_is_a_uniform_arrangement_of_distinct_rows():
    """The private path (no generator): every (image, place) pair has frequency 1 / N and each pair of
    images is in either order half the time (an order-keeping placement would pass a per-place count)."""
    x = torch.eye(3, dtype=torch.float64)
    trials, N = 3000, 6
    pair = torch.zeros(3, N)
    first_before_second = 0
    for _ in range(trials):
        rel = release_slices(x, rows=N, clip=1.0, epsilon=math.inf, delta=1e-5)
        place = rel.rows.argmax(0)  # where image j's row went (rows are distinct unit vectors)
        assert sorted((rel.rows.norm(dim=1) > 0).nonzero().flatten().tolist()) == sorted(place.tolist())
        pair[torch.arange(3), place] += 1
        first_before_second += int(place[0] < place[1])
    p = 1 / N
    assert ((pair / trials - p).abs() < 5 * math.sqrt(p * (1 - p) / trials)).all(), pair / trials
    assert abs(first_before_second / trials - 0.5) < 5 * math.sqrt(0.25 / trials)


def test_the_noise_is_independent_across_the_entries_of_a_row():
    """Not one noise value per row (differences between coordinates would then be noise-free):
    the empirical covariance of the noise over N rows is sigma^2 I."""
    rel = release_slices(torch.zeros(1, 5, dtype=torch.float64), rows=4000, clip=1.0, epsilon=1.0, delta=1e-5,
                         generator=torch.Generator().manual_seed(5))
    cov = rel.rows.T @ rel.rows / len(rel.rows) / rel.noise_std ** 2
    assert (cov - torch.eye(5, dtype=torch.float64)).abs().max() < 0.1, cov


def test_a_nan_or_bad_clip_or_noise_never_means_no_noise():
    with pytest.raises(ValueError, match="finite number > 0"):
        release_slices(torch.zeros(2, 2), rows=5, clip=float("nan"), epsilon=1.0, delta=1e-5)
    from dphyper.methods.slicing import _gaussian_rows

    with pytest.raises(ValueError, match="noise std"):
        _gaussian_rows(torch.zeros(2, 2), rows=5, clip=1.0, epsilon=1.0, delta=1e-5, noise_multiplier=float("nan"))


def test_more_images_than_rows_is_refused_before_any_release():
    with pytest.raises(DataError, match="more than the 5 that slicing takes"):
        release_slices(torch.zeros(6, 2), rows=5, clip=1.0, epsilon=1.0, delta=1e-5)


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_noise_is_calibrated_like_an_independent_accountant_says(eps):
    """sigma / C gives exactly (eps, delta) by dp_accounting's PLD accountant for sensitivity C, and the
    noise drawn has std sigma in every entry of the N x k release (measured on an all-zero folder)."""
    clip = 0.7
    rel = release_slices(torch.zeros(1, 6, dtype=torch.float64), rows=400, clip=clip, epsilon=eps, delta=1e-5,
                         generator=torch.Generator().manual_seed(2))
    s = rel.event.noise_multiplier
    assert _pld_epsilon(s, 1e-5) == pytest.approx(eps, rel=5e-3)
    assert _pld_epsilon(s * 0.99, 1e-5) > eps  # not more noise than needed
    assert rel.noise_std == pytest.approx(s * clip)
    sd = rel.rows.std(0)  # 400 draws per column
    assert ((sd / (s * clip) - 1).abs() < 5 / math.sqrt(2 * 400)).all(), sd / (s * clip)


def test_slicing_and_hypernet_releases_compose_exactly_in_the_ledger():
    a = release_slices(torch.randn(10, 4), rows=20, clip=1.0, epsilon=1.0, delta=1e-5).event
    b = release_mean(torch.randn(30, 4), epsilon=1.0).event
    book = PrivacyLedger()
    book.record(a)
    book.record(b)
    s = (a.noise_multiplier ** -2 + b.noise_multiplier ** -2) ** -0.5
    assert book.method() == "exact Gaussian-DP composition"
    assert book.total()[0] == pytest.approx(_pld_epsilon(s, 1e-5), rel=5e-3)


def test_the_closed_form_smoothed_divergence_matches_a_monte_carlo_estimate():
    """An independent computation: draw rows from the smoothed mixture q_w, project on the same public
    directions and average the Gaussian kernel; the closed form must agree."""
    cfg = SlicingConfig(directions=6, bandwidth=1.0, samples=0)
    g = torch.Generator().manual_seed(0)
    cand = torch.cat([torch.zeros(1, 3, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)])
    released = torch.randn(50, 3, generator=g, dtype=torch.float64) * 1.3
    sigma = 0.8
    w = torch.tensor([0.4, 0.1, 0.2, 0.2, 0.1], dtype=torch.float64)
    K, c, const, h2 = divergence_terms(released, cand, sigma, cfg)
    U = directions(3, cfg.directions, cfg.projection_seed)
    m = 200_000
    q = cand[torch.multinomial(w, m, replacement=True, generator=g)] + sigma * torch.randn(m, 3, generator=g,
                                                                                             dtype=torch.float64)
    q2 = cand[torch.multinomial(w, m, replacement=True, generator=g)] + sigma * torch.randn(m, 3, generator=g,
                                                                                              dtype=torch.float64)
    kern = lambda a, b: torch.exp(-(a - b) ** 2 / (2 * h2))  # noqa: E731
    qq = kern(q @ U, q2 @ U).mean()
    rq = torch.stack([kern(released[i] @ U, q[:20000] @ U).mean() for i in range(len(released))]).mean()
    assert float(w @ K @ w) == pytest.approx(float(qq), rel=0.02)
    assert float(w @ c) == pytest.approx(float(rq), rel=0.02)
    assert mmd2(K, c, const, w) >= -1e-9


def test_the_fit_finds_the_private_mixture_and_smoothing_is_what_makes_it_consistent():
    """Public candidates in two clusters; the private rows all from one, N = 2n, noisy. The smoothed fit
    puts most weight on the right cluster and estimates the padding share; unsmoothed it cannot."""
    g = torch.Generator().manual_seed(1)
    k, P, n = 2, 200, 2000
    centres = torch.tensor([[0.5, 0.0], [-0.5, 0.0]], dtype=torch.float64)
    label = torch.arange(P) % 2
    pub = centres[label] + 0.05 * torch.randn(P, k, generator=g, dtype=torch.float64)
    private = centres[0] + 0.05 * torch.randn(n, k, generator=g, dtype=torch.float64)
    rel = release_slices(private, rows=2 * n, clip=1.0, epsilon=16.0, delta=1e-5, generator=g)
    cand = torch.cat([torch.zeros(1, k, dtype=torch.float64), pub])
    shares = {}
    for smooth in (True, False):
        cfg = SlicingConfig(directions=8, smooth=smooth, fit_iters=500, samples=0)
        K, c, _, _ = divergence_terms(rel.rows, cand, rel.noise_std, cfg)
        start = _best_padding_mix(K, c, torch.full((P,), 1.0 / P, dtype=torch.float64))
        w = fit_weights(K, c, cfg, start)
        shares[smooth] = (float(w[1:][label == 0].sum() / w[1:].sum()), float(w[0]))
    assert shares[True][0] > 0.8 and abs(shares[True][1] - 0.5) < 0.1, shares
    assert abs(shares[False][1] - 0.5) > 0.15 and shares[False][0] < 0.9, shares  # unsmoothed: noise read as data


def test_bad_settings_are_refused_clearly():
    for kw, msg in [({"space": "audio"}, "space must be one of"), ({"clip": 0.0}, "clip must be"),
                    ({"pool": 10**6}, "pool must be in"), ({"slices": 0}, "slices and rows"),
                    ({"reg": -1.0}, "reg must be")]:
        with pytest.raises(ValueError, match=msg):
            SlicingConfig(**kw)
    with pytest.raises(ValueError, match="more than the feature dimension"):
        projection(4, 5, 0)


@needs_models
def test_refitting_the_same_release_is_free_and_reproducible():
    """The fit is post-processing: re-running it on the kept release adds no event, and the same fit seed
    gives the same LoRA; the served UNet is never written."""
    from dphyper.methods.slicing import refit, train
    from dphyper.models import shared_models

    models = shared_models()
    before = {n: p.clone() for n, p in models.unet.named_parameters()}
    imgs = torch.rand(12, 1, 32, 32) * 2 - 1
    cfg = SlicingConfig(epsilon=2.0, samples=0, slices=4, pool=64, directions=4, fit_steps=2, batch=4, fit_seed=3,
                        rows=20, fit_iters=20)
    first = train(imgs, cfg, models)
    assert len(first.events) == 1 and first.events[0].mechanism == "gaussian_sliced_rows"
    again = refit(first.owner["release"], cfg, models)
    assert again.events == ()
    assert all(torch.equal(first.adapter[k], again.adapter[k]) for k in first.adapter)
    assert any(float(v.abs().max()) > 0 for k, v in first.adapter.items() if "lora_B" in k)
    assert all(torch.equal(before[n], p) for n, p in models.unet.named_parameters())
    # The count read off the release is shown only when the release moved the fit (else it is noise).
    moved = max(first.report["public_class_shares"].values()) >= 0.15
    assert ("estimated_count" in first.report) == moved
    assert not moved or 0 <= first.report["estimated_count"] <= 20
    # The projection is a per-image map with public ingredients: an image's row does not depend on the others.
    from dphyper.methods.slicing import project_private, public_slices

    pub = public_slices(cfg, models)
    both = project_private(imgs, cfg, pub, models)
    assert torch.allclose(both[:5], project_private(imgs[:5], cfg, pub, models), atol=1e-6)
    # A release re-fitted under another projection is refused.
    with pytest.raises(ValueError, match="another projection"):
        refit(first.owner["release"], SlicingConfig(**{**cfg.__dict__, "projection_seed": 9}), models)
    with pytest.raises(DataError, match="more than the 20 that slicing takes"):
        train(torch.zeros(21, 1, 32, 32), cfg, models)
