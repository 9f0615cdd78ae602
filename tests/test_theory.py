"""Teaching setting: closed form vs simulation, monotonicity, shared DP-SGD accounting."""

import math

import pytest
import torch

from dphyper.theory import (TheoryConfig, dpsgd_sigma, oneshot_closed_form, oneshot_lambda, oneshot_simulate,
                            qem_simulate, rows)
from dphyper.privacy import calibrate_gaussian


@pytest.mark.parametrize("eps,n,d", [(0.25, 100, 10), (1.0, 300, 10), (4.0, 200, 30), (0.1, 50, 20)])
def test_simulation_matches_closed_form(eps, n, d):
    reps = 3000
    sim = oneshot_simulate(eps, n, d, reps=reps, seed=7)
    cf = oneshot_closed_form(eps, n, d)
    se = sim.std() / math.sqrt(reps)
    # The simulated mean is within 4 standard errors (a false alarm ~1e-4) and within 5 %
    # (F4). The fitted public map adds a bias of order 1/public_sets, far below both.
    assert abs(sim.mean() - cf) < 4 * se + 1e-3 * cf, (sim.mean(), cf, se)
    assert abs(sim.mean() / cf - 1) < 0.05


@pytest.mark.parametrize("eps,n,d", [(0.25, 100, 10), (1.0, 300, 20), (4.0, 1000, 5)])
def test_parameter_space_newton_step_matches_its_closed_form_and_shrinkage_helps(eps, n, d):
    """The quadratic EM's line: the plain Newton step's simulated risk is the closed form with lambda = 1
    (the same agreement check as the one-shot line); James-Stein shrinkage from the release alone lowers
    it, and it cannot beat the public prior's optimal map by more than the simulation's noise."""
    reps = 4000
    plain = qem_simulate(eps, n, d, reps=reps, seed=11, shrink=False)
    cf = oneshot_closed_form(eps, n, d, lam=1.0)
    assert abs(plain.mean() - cf) < 4 * plain.std() / math.sqrt(reps) + 1e-3 * cf
    shrunk = qem_simulate(eps, n, d, reps=reps, seed=11)
    assert shrunk.mean() <= plain.mean() * 1.001
    assert shrunk.mean() >= oneshot_closed_form(eps, n, d) * 0.97


def test_oneshot_risk_decreases_with_epsilon_and_n():
    by_eps = [oneshot_closed_form(e, 500, 10) for e in (0.1, 0.3, 1, 3, 10)]
    assert all(a > b for a, b in zip(by_eps, by_eps[1:]))
    by_n = [oneshot_closed_form(1.0, n, 10) for n in (30, 100, 300, 1000, 3000)]
    assert all(a > b for a, b in zip(by_n, by_n[1:]))
    # no data signal at all (lambda -> 0) costs the prior's risk, 1/2 r^2 = 0.125
    assert oneshot_closed_form(1.0, 500, 10, lam=0.0) == pytest.approx(0.125)
    assert oneshot_lambda(10 ** 6, 10, 0.0) == pytest.approx(1.0, abs=1e-3)


def test_dpsgd_accounting_is_the_image_baselines():
    """The theory tab's sigma is what Opacus' make_private_with_epsilon picks for the images."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n, batch, epochs, eps, delta = 1000, 250, 3, 2.0, 1e-5
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=batch)
    engine = PrivacyEngine(accountant="prv")
    _, opt, loader = engine.make_private_with_epsilon(module=model, optimizer=opt, data_loader=loader,
                                                      target_epsilon=eps, target_delta=delta, epochs=epochs,
                                                      max_grad_norm=1.0)
    steps = epochs * len(loader)
    assert dpsgd_sigma(eps, delta, batch / n, steps) == pytest.approx(opt.noise_multiplier, rel=1e-9)
    # and one full-batch step needs at least the one-shot (exact) noise
    assert dpsgd_sigma(eps, delta, 1.0, 1) >= calibrate_gaussian(epsilon=eps, delta=delta) * 0.999


def test_rows_shape_for_the_cli():
    out = rows(TheoryConfig(epsilon=(1.0,), n=(200,), d=(5,), reps=20))
    assert len(out) == 1
    row = out[0]
    assert {"epsilon", "n", "d", "one_shot", "param_em", "noisy_sgd"} <= set(row)
    assert row["one_shot"]["closed_form"] > 0 and row["noisy_sgd"]["closed_form"] is None
    assert row["param_em"]["closed_form_newton"] >= row["one_shot"]["closed_form"] and row["param_em"]["mean"] > 0
    assert row["noisy_sgd"]["mean"] > 0 and row["one_shot"]["std"] >= 0


def test_tab_figure_marks_epsilon_and_reads_stored_curves():
    from dphyper import theory_tab

    rows_ = theory_tab.load_curves()
    if not rows_:
        pytest.skip("assets/curves/theory.json not generated")
    ns, ds = theory_tab.grid_values()
    fig_a = theory_tab.figure(0.0, ns[0], ds[0])
    fig_b = theory_tab.figure(1.0, ns[0], ds[0])
    assert [t.name for t in fig_a.data] == ["one-shot, closed form", "parameter space, Newton step, closed form",
                                            "one-shot, simulated", "parameter space (quadratic EM), simulated",
                                            "DP-SGD, simulated"]
    assert fig_a.layout.shapes[0].x0 == pytest.approx(1.0) and fig_b.layout.shapes[0].x0 == pytest.approx(10.0)
    # stored closed forms are what the live formula gives (the file is not stale)
    r = rows_[0]
    assert r["one_shot"]["closed_form"] == pytest.approx(oneshot_closed_form(r["epsilon"], r["n"], r["d"]), rel=1e-6)
    assert "×" in theory_tab.reading(0.0, ns[0], ds[0]) and "quadratic EM" in theory_tab.reading(0.0, ns[0], ds[0])


def test_dpsgd_cannot_beat_the_sample_mean():
    """No estimator from n examples beats the sample mean's risk s^2/(2n) by much here (the known
    norm of mu is worth at most a factor (d-1)/d): a DP-SGD that sees fresh data each step would."""
    from dphyper.theory import S_NOISE, dpsgd_simulate

    n, d = 200, 5
    risk = dpsgd_simulate(8.0, n, d, reps=60, seed=3).mean()
    assert risk > 0.6 * 0.5 * S_NOISE ** 2 / n, risk
