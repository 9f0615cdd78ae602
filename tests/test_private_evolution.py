"""Private Evolution (issue 36): every private image's votes have norm 1 whatever its embedding, the T rounds' noise
composes to exactly the claimed epsilon by an independent accountant, the votes find the right candidates,
and the artifact is an image set the samples are drawn from."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dphyper.adapters import FORMATS, draw_images
from dphyper.methods.private_evolution import (PEConfig, nearest, release_votes, resample, round_noise, strengths,
                                               vote_histogram)
from dphyper.privacy import PrivacyEvent, PrivacyLedger


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 2 ** 31 - 1), st.booleans())
def test_every_private_image_adds_a_vote_vector_of_norm_one(k, extra, seed, nan):
    g = torch.Generator().manual_seed(seed)
    cand = torch.randn(k + extra, 5, generator=g)
    x = torch.randn(1, 5, generator=g) * 1e6
    if nan:
        x[0, 2] = float("nan")
    idx = nearest(x, cand, k)
    assert idx.shape == (1, k) and len(set(idx[0].tolist())) == k  # k distinct bins, never more votes
    h = release_votes(idx, len(cand), votes=k, noise_std=0.0)
    assert float(h.norm()) == pytest.approx(1.0)


def test_a_row_with_the_wrong_number_of_votes_is_refused():
    with pytest.raises(ValueError, match="exactly 2 votes"):
        release_votes(torch.zeros(3, 1, dtype=torch.long), 4, votes=2, noise_std=1.0)
    with pytest.raises(ValueError):
        vote_histogram(torch.zeros(1, 1, dtype=torch.long), 4, noise_std=float("nan"), weight=1.0)


def _pld_composed(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Independent: dp_accounting's PLD accountant for T self-composed Gaussian releases."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), rounds))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("eps, rounds", [(1.0, 4), (8.0, 2), (0.5, 6)])
def test_the_rounds_compose_to_the_claimed_epsilon_like_an_independent_accountant_says(eps, rounds):
    s, sigma = round_noise(eps, 1e-5, rounds)
    assert sigma == pytest.approx(s * math.sqrt(rounds))
    assert _pld_composed(sigma, rounds, 1e-5) == pytest.approx(eps, rel=5e-3)
    assert _pld_composed(sigma * 0.99, rounds, 1e-5) > eps  # not more noise than needed
    book = PrivacyLedger()
    book.record(PrivacyEvent(mechanism="gaussian_vote_histograms", epsilon=eps, delta=1e-5, noise_multiplier=sigma,
                             sensitivity=1.0, steps=rounds))
    assert book.method() == "exact Gaussian-DP composition"
    assert book.total()[0] == pytest.approx(eps, rel=1e-6)


def test_the_histogram_noise_has_the_claimed_std_in_every_bin():
    _, sigma = round_noise(1.0, 1e-5, 4)
    idx = torch.zeros(10, 1, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    hs = torch.stack([vote_histogram(idx, 6, noise_std=sigma, weight=1.0, generator=g) for _ in range(3000)])
    assert ((hs.std(0) / sigma - 1).abs() < 5 / math.sqrt(2 * 3000)).all()
    assert float(hs[:, 0].mean()) == pytest.approx(10, abs=5 * sigma / math.sqrt(3000))


def test_votes_pick_the_candidates_near_the_private_images_and_resampling_follows_them():
    cand = torch.eye(6, dtype=torch.float64) * 10
    private = cand[[2, 2, 2, 4]] + 0.1
    h = release_votes(nearest(private, cand, 1), 6, votes=1, noise_std=0.0)
    assert h.tolist() == pytest.approx([0, 0, 3, 0, 1, 0], abs=1e-9)
    pop = torch.arange(6).float()
    drawn, alive = resample(pop, h, 1.5, 400, torch.Generator().manual_seed(0))
    assert alive == 1 and set(drawn.tolist()) == {2.0}  # below the threshold: gone
    drawn, alive = resample(pop, -torch.ones(6), 0.0, 50, torch.Generator().manual_seed(0))
    assert alive == 0 and len(set(drawn.tolist())) > 1  # all noise: the population is kept as it is


def test_the_strength_falls_over_the_rounds():
    assert strengths(PEConfig(rounds=3, strength=0.6, strength_end=0.2)) == pytest.approx([0.6, 0.4, 0.2])
    assert strengths(PEConfig(rounds=1, strength=0.6, strength_end=0.2)) == pytest.approx([0.2])


def test_bad_settings_are_refused_clearly():
    for bad in ({"space": "evaluator"}, {"population": 0}, {"rounds": 0}, {"votes": 0}, {"population": 4, "votes": 5},
                {"strength": 1.5}, {"threshold": -1.0}, {"final": 0}):
        with pytest.raises(ValueError):
            PEConfig(**bad)


def test_the_image_set_artifact_saves_draws_and_refuses_to_load_as_weights(tmp_path):
    from dphyper.methods import load_adapter_into

    images = torch.rand(5, 1, 32, 32) * 2 - 1
    a = draw_images({"images": images}, 12, seed=3)
    assert a.shape == (12, 1, 32, 32) and torch.equal(a, draw_images({"images": images}, 12, seed=3))
    assert all(any(torch.equal(x, y) for y in images) for x in a)  # drawn from the set, nothing else
    assert len({tuple(x.flatten()[:3].tolist()) for x in a[:5]}) == 5  # the whole set before any repeat
    fmt = FORMATS["images"]
    fmt.save({"images": images}, tmp_path / fmt.file)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / fmt.file))["images"], images)
    with pytest.raises(ValueError, match="synthetic image set"):
        load_adapter_into(torch.nn.Linear(1, 1), tmp_path / fmt.file)


def test_sdedit_at_strength_zero_changes_nothing_and_more_strength_changes_more():
    from dphyper.diffusion import vary
    from dphyper.models import shared_models

    unet = shared_models().unet
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert torch.equal(vary(unet, x, 0.0, steps=8, seed=0), x)
    weak, strong = vary(unet, x, 0.25, steps=8, seed=0), vary(unet, x, 1.0, steps=8, seed=0)
    assert 0 < float((weak - x).abs().mean()) < float((strong - x).abs().mean())
    with pytest.raises(ValueError):
        vary(unet, x, 1.5)


def test_a_rows_votes_do_not_depend_on_the_other_rows_even_with_duplicate_candidates():
    """A DP review (issue 36): with cdist's matrix-multiply path, removing one private row moved another row's vote
    when the candidates held exact duplicates (float rounding of the batch); each row's votes must be a function
    of that row and the candidates alone, and every vector of weights has squared norm <= 1 for every k."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 1024, generator=g, dtype=torch.float64)
    cand = torch.cat([base, base[:20]])  # exact duplicates, as a strength-0 variation would leave
    private = base[torch.randint(0, 40, (300,), generator=g)] + 1e-9 * torch.randn(300, 1024, generator=g,
                                                                                  dtype=torch.float64)
    for k in (1, 3):
        whole = nearest(private, cand, k)
        for i in (0, 17, 299):
            rest = torch.cat([private[:i], private[i + 1:]])
            assert torch.equal(torch.cat([whole[:i], whole[i + 1:]]), nearest(rest, cand, k))
    for k in range(1, 300):
        h = release_votes(torch.arange(k)[None], k, votes=k, noise_std=0.0)
        assert float((h ** 2).sum()) <= 1.0, k


def test_the_private_path_draws_its_noise_from_the_operating_system(monkeypatch):
    import dphyper.methods.private_evolution as pe

    calls = []
    real = pe.private_generator
    monkeypatch.setattr(pe, "private_generator", lambda *a: calls.append(1) or real(*a))
    cand, private = torch.randn(6, 3), torch.randn(10, 3)
    a = pe.vote_round(private, cand, votes=1, noise_std=1.0)
    b = pe.vote_round(private, cand, votes=1, noise_std=1.0)
    assert len(calls) == 2 and not torch.equal(a, b)
