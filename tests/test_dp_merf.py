"""DP-MERF (issue 36): the feature map's norm bound, the noise against an independent accountant, the fit finding
the class a release came from, and re-fits (its own release and the hypernetwork's) that cost no privacy."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dphyper.methods.dp_merf import (DPMerfConfig, FeatureMap, fit_release, frequencies, median_distance, refit,
                                     rff)
from dphyper.privacy import PrivacyLedger, calibrate_gaussian, clip_embeddings, release_mean
from tests.test_privacy import _pld_epsilon


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.floats(0.01, 100.0), st.integers(0, 2 ** 31 - 1),
       st.floats(-1e6, 1e6, allow_nan=False))
def test_every_feature_row_has_norm_one_whatever_the_image(D, scale, seed, value):
    g = torch.Generator().manual_seed(seed)
    W = frequencies(1024, D, scale, seed)
    x = torch.cat([torch.randn(3, 1, 32, 32, generator=g) * 50, torch.full((1, 1, 32, 32), value)])
    norms = rff(x, W).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-9), norms


def test_a_nan_image_becomes_a_zero_row_never_an_unbounded_one():
    W = frequencies(1024, 8, 1.0, 0)
    x = torch.zeros(2, 1, 32, 32)
    x[1, 0, 3, 3] = float("nan")
    rows = clip_embeddings(rff(x, W), max_norm=1.0)
    assert torch.isfinite(rows).all() and float(rows[1].norm()) == 0.0


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_noise_is_calibrated_like_an_independent_accountant_says(eps):
    """The release of DP-MERF's rows: its multiplier gives exactly (eps, delta) by dp_accounting's PLD accountant
    for one Gaussian, and the noise drawn on the (sum, count) has std s sqrt 2 (sensitivity of a norm-1 row plus
    a count of 1), measured over 2,000 releases of the same rows."""
    W = frequencies(1024, 16, 10.0, 0)
    rows = rff(torch.rand(30, 1, 32, 32) * 2 - 1, W)
    g = torch.Generator().manual_seed(1)
    rels = [release_mean(rows, epsilon=eps, generator=g) for _ in range(2000)]
    s = rels[0].event.noise_multiplier
    assert _pld_epsilon(s, 1e-5) == pytest.approx(eps, rel=5e-3)
    assert _pld_epsilon(s * 0.99, 1e-5) > eps  # not more noise than needed
    assert rels[0].event.sensitivity == pytest.approx(math.sqrt(2))
    sums = torch.stack([r.mean.double() * max(r.noisy_count, 1.0) for r in rels])
    counts = torch.tensor([r.noisy_count for r in rels], dtype=torch.float64)
    want = s * math.sqrt(2)
    tol = 5 / math.sqrt(2 * 2000)
    assert abs(float(counts.std()) / want - 1) < tol
    assert ((sums.std(0) / want - 1).abs() < 2 * tol).all()  # (the mean's float32 rounding is far below this)
    assert float(counts.mean()) == pytest.approx(30, abs=5 * want / math.sqrt(2000))


def _public_map(features: torch.Tensor, labels: torch.Tensor) -> FeatureMap:
    return FeatureMap(W=None, length_scale=1.0, F=features, labels=labels, images=torch.zeros(len(labels), 1, 32, 32))


def test_the_fit_moves_the_weights_to_the_class_the_release_came_from():
    """Real Fashion-MNIST: the release of 100 public sneakers' mean features (eps 8) puts most of the fitted
    weight on the public pool's sneakers; the uniform pool's distance to the release is larger than the fit's."""
    from dphyper.data import load_fashion_mnist_uint8, uint8_to_tensor

    images, labels = load_fashion_mnist_uint8("train")
    pool = uint8_to_tensor(images[:600])
    sneakers = uint8_to_tensor(images[1000:3000][labels[1000:3000] == 7][:100])
    W = frequencies(1024, 250, 0.5 * median_distance(pool[:200]), 0)
    fmap = _public_map(rff(pool, W), torch.as_tensor(labels[:600]).long())
    rel = release_mean(rff(sneakers, W), epsilon=8.0, generator=torch.Generator().manual_seed(0))
    fit = fit_release(rel.mean, fmap, DPMerfConfig(reg=0.0, fit_iters=300))
    share = torch.zeros(10, dtype=torch.float64).index_add_(0, fmap.labels, fit.weights)
    assert int(share.argmax()) == 7 and float(share[7]) > 0.5, share
    assert fit.distance < 0.7 * fit.distance_uniform
    assert float(fit.weights.sum()) == pytest.approx(1.0) and float(fit.weights.min()) >= 0


def test_a_strong_pull_keeps_the_uniform_pool():
    g = torch.Generator().manual_seed(0)
    F = clip_embeddings(torch.randn(50, 8, generator=g, dtype=torch.float64), max_norm=1.0)
    fmap = _public_map(F, torch.zeros(50, dtype=torch.long))
    fit = fit_release(F[0], fmap, DPMerfConfig(reg=1e6, fit_iters=200))
    assert torch.allclose(fit.weights, torch.full((50,), 0.02, dtype=torch.float64), atol=1e-4)


def test_bad_settings_are_refused_clearly():
    for bad in ({"features": "pixels"}, {"frequencies": 0}, {"bandwidth": 0.0}, {"bandwidth": float("nan")},
                {"pool": 5000}, {"reg": -1.0}, {"batch": 0}):
        with pytest.raises(ValueError):
            DPMerfConfig(**bad)


@pytest.fixture(scope="module")
def models():
    from dphyper.models import PublicModels

    return PublicModels(torch.device("cpu"))


SMALL = {"frequencies": 16, "pool": 64, "fit_iters": 20, "fit_steps": 2, "batch": 4, "samples": 0}


def test_refits_are_free_reproducible_and_decode_the_hypernetworks_release_too(models):
    from dphyper.data import load_folder
    from dphyper.examples import EXAMPLES_DIR
    from dphyper.methods import get_method, run_method

    images = load_folder(EXAMPLES_DIR / "bags").images[:20]
    first = run_method(get_method("dp-merf"), images, DPMerfConfig(epsilon=2.0, fit_seed=3, **SMALL), models)
    assert len(first.events) == 1 and first.events[0].mechanism == "gaussian_sum_count"
    assert first.events[0].noise_multiplier == calibrate_gaussian(epsilon=2.0, delta=1e-5)
    assert first.events[0].sensitivity == pytest.approx(math.sqrt(2))
    rel = first.owner["release"]
    again = refit(rel, DPMerfConfig(epsilon=2.0, fit_seed=3, **SMALL), models)
    assert again.events == ()  # post-processing: nothing for the ledger
    assert all(torch.equal(first.adapter[k], again.adapter[k]) for k in first.adapter)
    other = refit(rel, DPMerfConfig(epsilon=2.0, fit_seed=4, **SMALL), models)
    assert any(not torch.equal(first.adapter[k], other.adapter[k]) for k in first.adapter)
    # One hypernetwork release, a second decoder: DP-MERF's fit in phi space, no second event.
    h = run_method(get_method("hypernet"), images, get_method("hypernet").config_cls(epsilon=2.0, samples=0), models)
    decoded = refit(h.owner["release"], DPMerfConfig(features="phi", epsilon=2.0, fit_seed=0, **SMALL), models)
    book = PrivacyLedger()
    for e in (*h.events, *decoded.events):
        book.record(e)
    assert book.total()[0] == pytest.approx(2.0, rel=1e-3)
    assert decoded.report["features"] == "phi" and decoded.report["noisy_count"] == h.report["noisy_count"]
    with pytest.raises(ValueError, match="own settings"):  # an rff release is not a phi one
        refit(rel, DPMerfConfig(features="phi", **SMALL), models)
    with pytest.raises(ValueError, match="own settings"):  # nor one of another map with as many coordinates
        refit(rel, DPMerfConfig(**{**SMALL, "feature_seed": 1}), models)
    with pytest.raises(ValueError, match="own settings"):  # a hypernetwork release is decoded in phi space only
        refit(h.owner["release"], DPMerfConfig(**{**SMALL, "frequencies": 32}), models)
    assert np.isfinite(decoded.losses).all()


def test_the_length_scale_comes_from_public_images_only(models):
    """The report shows l, and the map is cached for every session: it must be a function of public data and
    settings alone (the median distance of the public pool's first images), never of a folder."""
    from dphyper.methods.dp_merf import MEDIAN_SAMPLE, PUBLIC_POOL, feature_map
    from dphyper.public_data import public_pool_labelled

    cfg = DPMerfConfig(**{**SMALL, "bandwidth": 0.5})
    sample, _ = public_pool_labelled(MEDIAN_SAMPLE, PUBLIC_POOL)
    assert feature_map(cfg, models).length_scale == pytest.approx(0.5 * median_distance(sample))
