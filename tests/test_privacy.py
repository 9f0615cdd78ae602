"""Privacy: clipping, calibration (golden numbers and dp_accounting), noise, count, ledger."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dphyper.privacy import (PrivacyEvent, PrivacyLedger, PrivacyWarning, analytic_gaussian_delta,
                             analytic_gaussian_epsilon, calibrate_gaussian, clip_embeddings, release_mean)

# Golden numbers: analytic Gaussian noise multipliers for delta = 1e-5 (../shared/FINDINGS.md).
GOLDEN = {0.25: 13.2855, 1.0: 3.7306, 2.0: 1.9938, 8.0: 0.6002}


@pytest.mark.parametrize("eps,expected", sorted(GOLDEN.items()))
def test_calibration_golden(eps, expected):
    assert calibrate_gaussian(epsilon=eps, delta=1e-5) == pytest.approx(expected, abs=1e-4)


def _pld_epsilon(noise_multiplier: float, delta: float) -> float:
    """Independent: dp_accounting's PLD accountant for one Gaussian release."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_event.GaussianDpEvent(noise_multiplier))
    return acc.get_epsilon(delta)


R4_PAIRS = [(e, d) for e in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0) for d in (1e-5, 1e-6)] + \
    [(0.5, 1e-4), (1.0, 1e-3), (3.0, 1e-5), (6.0, 1e-7)]  # R4: 20 (epsilon, delta) pairs


@pytest.mark.parametrize("eps,delta", R4_PAIRS)
def test_calibration_matches_dp_accounting(eps, delta):
    s = calibrate_gaussian(epsilon=eps, delta=delta)
    # The multiplier we use must be (eps, delta)-DP according to dp_accounting (within 0.5 %) ...
    assert _pld_epsilon(s, delta) == pytest.approx(eps, rel=5e-3)
    # ... and not wastefully large: 0.5 % less noise must already exceed eps.
    assert _pld_epsilon(s * 0.995, delta) > eps * 0.999


def test_calibration_is_conservative_and_monotone():
    prev = math.inf
    for eps in [0.05, 0.1, 0.3, 1, 3, 10, 30]:
        s = calibrate_gaussian(epsilon=eps, delta=1e-5)
        assert analytic_gaussian_delta(noise_multiplier=s, epsilon=eps) <= 1e-5
        assert analytic_gaussian_delta(noise_multiplier=s * 0.999, epsilon=eps) > 1e-5
        assert s < prev
        prev = s
        assert analytic_gaussian_epsilon(noise_multiplier=s, delta=1e-5) == pytest.approx(eps, rel=1e-6)


def test_calibration_rejects_bad_arguments():
    with pytest.raises(ValueError):
        calibrate_gaussian(epsilon=0.0)
    with pytest.raises(ValueError):
        calibrate_gaussian(epsilon=1.0, delta=1.5)
    assert calibrate_gaussian(epsilon=math.inf) == 0.0


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 16)),
              elements=st.floats(-1e6, 1e6, allow_nan=False)),
       st.floats(1e-3, 100.0))
def test_clipping_bound_holds_for_any_input(e, c):
    out = clip_embeddings(torch.from_numpy(e), max_norm=c)
    assert torch.all(out.norm(dim=1) <= c)
    inside = torch.from_numpy(e).norm(dim=1) <= c * (1 - 1e-9)
    assert torch.allclose(out[inside], torch.from_numpy(e)[inside])  # rows inside stay unchanged


def test_non_finite_rows_cannot_poison_the_release():
    e = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=1)
    e[3, 1] = float("nan")
    e[5, 0] = float("inf")
    out = clip_embeddings(e, max_norm=1.0)
    assert torch.isfinite(out).all() and out[3].abs().sum() == 0 and out[5].abs().sum() == 0
    rel = release_mean(e, epsilon=1.0)
    assert torch.isfinite(rel.mean).all() and math.isfinite(rel.noisy_count)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 50), st.integers(1, 32), st.floats(0.1, 10), st.floats(0.1, 10), st.integers(0, 2**31))
def test_sensitivity_used_equals_claimed(n, d, clip, c, seed):
    """Removing one example moves the pre-noise released vector by at most the sensitivity."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g, dtype=torch.float64) * 10
    rel = release_mean(e, epsilon=math.inf, clip_norm=clip, count_scale=c)  # exact sum, no noise
    rel_minus = release_mean(e[1:], epsilon=math.inf, clip_norm=clip, count_scale=c)
    full = torch.cat([rel.mean.double() * max(rel.noisy_count, 1), torch.tensor([rel.noisy_count * c])])
    minus = torch.cat([rel_minus.mean.double() * max(rel_minus.noisy_count, 1), torch.tensor([rel_minus.noisy_count * c])])
    assert (full - minus).norm() <= rel.event.sensitivity * (1 + 1e-5)
    assert rel.event.sensitivity == pytest.approx(math.sqrt(clip ** 2 + c ** 2))


def test_noise_std_matches_sigma_times_sensitivity():
    e = torch.nn.functional.normalize(torch.randn(100, 8, dtype=torch.float64), dim=1)
    g = torch.Generator().manual_seed(0)
    eps, trials = 1.0, 4000
    counts = torch.tensor([release_mean(e, epsilon=eps, generator=g).noisy_count for _ in range(trials)])
    expected = calibrate_gaussian(epsilon=eps) * math.sqrt(2.0)  # count_scale 1: noise / 1
    assert counts.mean().item() == pytest.approx(100, abs=4 * expected / math.sqrt(trials))
    # std of a sample std of N draws is ~ std / sqrt(2N): 5 sigma tolerance
    assert counts.std().item() == pytest.approx(expected, rel=5 / math.sqrt(2 * trials))


def test_mean_noise_in_every_coordinate():
    e = torch.zeros(1000, 4, dtype=torch.float64)
    e[:, 0] = 1.0
    g = torch.Generator().manual_seed(1)
    means = torch.stack([release_mean(e, epsilon=2.0, generator=g).mean for _ in range(2000)])
    sd = calibrate_gaussian(epsilon=2.0) * math.sqrt(2) / 1000
    assert means.mean(0)[0].item() == pytest.approx(1.0, abs=5 * sd)
    assert means.std(0).mean().item() == pytest.approx(sd, rel=0.1)


def test_tiny_noisy_count_does_not_blow_up():
    e = torch.nn.functional.normalize(torch.randn(3, 8, dtype=torch.float64), dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        for _ in range(200):
            rel = release_mean(e, epsilon=0.1)
            assert torch.isfinite(rel.mean).all()
            # the denominator is max(n~, 1): |mean| <= |noisy sum| and never divides by ~0
            assert rel.mean.norm() < 1e4


def test_delta_warning_uses_noisy_count():
    e = torch.randn(50, 4)
    with pytest.warns(PrivacyWarning, match="delta"):
        release_mean(e, epsilon=8.0, delta=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        release_mean(e, epsilon=8.0, delta=1e-5)


def test_infinite_epsilon_is_exact_and_labelled():
    e = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=1)
    rel = release_mean(e, epsilon=math.inf)
    assert torch.allclose(rel.mean.double(), e.mean(0), atol=1e-6)
    assert rel.noisy_count == 10 and not rel.event.private and rel.event.noise_multiplier == 0


def test_private_noise_is_not_reproducible_without_a_generator():
    e = torch.randn(20, 4)
    a, b = release_mean(e, epsilon=1.0), release_mean(e, epsilon=1.0)
    assert not torch.equal(a.mean, b.mean)


def test_event_is_immutable():
    ev = release_mean(torch.randn(5, 3), epsilon=1.0, delta=1e-5).event
    with pytest.raises(Exception):
        ev.epsilon = 100.0  # type: ignore[misc]


def test_ledger_composes_like_dp_accounting():
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    ledger = PrivacyLedger()
    assert ledger.total() == (0.0, 0.0)
    epsilons = [1.0, 0.5, 2.0]
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for eps in epsilons:
        ev = release_mean(torch.randn(100, 4), epsilon=eps).event
        ledger.record(ev)
        acc.compose(dp_event.GaussianDpEvent(ev.noise_multiplier))
    total_eps, total_delta = ledger.total(delta=1e-5)
    assert total_eps == pytest.approx(acc.get_epsilon(1e-5), rel=5e-3)
    assert max(epsilons) < total_eps < sum(epsilons)  # tighter than the naive sum
    ledger.record(PrivacyEvent("gaussian_sum_count", math.inf, 1e-5, 0.0, 1.0))
    assert ledger.total()[0] == math.inf


# DP-SGD: sigma from Opacus' PRV search (what the baseline uses), recorded once (golden) and
# checked against an independent accountant (dp_accounting PLD of the Poisson-subsampled Gaussian).
DPSGD_GOLDEN = [(1 / 16, 160, 1.0, 3.2031), (0.25, 40, 1.0, 6.2109), (1 / 16, 160, 4.0, 1.1792),
                pytest.param(0.5, 20, 0.25, 31.25, marks=pytest.mark.slow)]  # 20 s of PRV search


@pytest.mark.parametrize("q,steps,eps,sigma", DPSGD_GOLDEN)
def test_dpsgd_accountant_golden_and_independent(q, steps, eps, sigma):
    from dp_accounting import dp_event as dpe
    from dp_accounting.pld import pld_privacy_accountant

    from dphyper.dpsgd import dpsgd_noise_multiplier

    s = dpsgd_noise_multiplier(epsilon=eps, delta=1e-5, sample_rate=q, steps=steps)
    assert s == pytest.approx(sigma, rel=1e-3)
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(dpe.SelfComposedDpEvent(dpe.PoissonSampledDpEvent(q, dpe.GaussianDpEvent(s)), steps))
    independent = acc.get_epsilon(1e-5)
    assert independent <= eps * 1.001  # the run really is (eps, delta)-DP by another accountant
    assert independent >= eps * 0.9  # and the search does not waste budget
    # No process-wide memo (issue 37): a repeat outside a memo searches again; inside the caller's own memo it
    # is a hit with the identical sigma, and another context (another session's handler) never sees that memo.
    import contextvars

    from dphyper.dpsgd import sigma_memo

    mine: dict = {}
    with sigma_memo(mine):
        assert dpsgd_noise_multiplier(epsilon=eps, delta=1e-5, sample_rate=q, steps=steps) == s
        assert len(mine) == 1
        seen = contextvars.Context().run(lambda: __import__("dphyper.dpsgd").dpsgd._SIGMA_MEMO.get())
        assert seen is None
