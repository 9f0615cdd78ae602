"""The quadratic exponential mechanism: sensitivity, calibration, the step it takes (its audit: test_audit)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dphyper.methods.qem import Geometry, QEMConfig, noise_share, release_gradients, step_from_release
from dphyper.privacy import PrivacyLedger, calibrate_gaussian, release_mean

from .test_hypernet import needs_models
from .test_privacy import _pld_epsilon


def _geometry(k: int = 8, D: int = 20, seed: int = 0, spread: float = 4.0, basis: bool = True) -> Geometry:
    g = torch.Generator().manual_seed(seed)
    evecs = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64)).Q
    evals = torch.logspace(-spread, 0, k, dtype=torch.float64)
    P = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64)).Q if basis else None
    return Geometry(basis=P, evecs=evecs, evals=evals, dim=k)


def _released_sum(rel) -> torch.Tensor:
    return torch.cat([rel.mean.double() * max(rel.noisy_count, 1.0), torch.tensor([rel.noisy_count])])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.floats(1e-3, 10.0), st.floats(1e-4, 10.0), st.floats(-2, 8), st.integers(0, 2**31))
def test_adding_any_gradient_moves_the_release_by_at_most_sqrt2(n, clip, damping, log_scale, seed):
    """Whatever the extra gradient (huge, along the flattest direction, NaN), the pre-noise release
    moves by at most the claimed sensitivity sqrt(1 + 1): clipping happens after whitening."""
    geo = _geometry(seed=seed)
    cfg = QEMConfig(epsilon=math.inf, clip=clip, damping=damping, samples=0)
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, 20, generator=g, dtype=torch.float64) * 10 ** log_scale
    flat = geo.basis @ geo.evecs[:, 0]  # the direction whitening amplifies most
    for extra in (flat * 10 ** log_scale, torch.randn(20, generator=g, dtype=torch.float64) * 1e6,
                  torch.full((20,), float("nan"), dtype=torch.float64)):
        a = release_gradients(grads, geo, cfg)
        b = release_gradients(torch.cat([grads, extra[None]]), geo, cfg)
        assert (_released_sum(b) - _released_sum(a)).norm() <= math.sqrt(2) * (1 + 1e-6)
        assert b.event.sensitivity == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("eps", [0.25, 1.0, 4.0])
def test_noise_is_calibrated_like_an_independent_accountant_says(eps):
    """The event's multiplier gives exactly (eps, delta) by dp_accounting's PLD accountant, and the
    noise actually drawn has std multiplier * sqrt(2) in *every* released coordinate (the k gradient
    coordinates and the count), measured against the noiseless release."""
    geo = _geometry()
    cfg = QEMConfig(epsilon=eps, clip=0.5, samples=0)
    grads = torch.randn(50, 20, dtype=torch.float64)
    clean = _released_sum(release_gradients(grads, geo, QEMConfig(epsilon=math.inf, clip=0.5, samples=0)))
    gen = torch.Generator().manual_seed(3)
    rels = [release_gradients(grads, geo, cfg, generator=gen) for _ in range(2000)]
    s = rels[0].event.noise_multiplier
    assert _pld_epsilon(s, cfg.delta) == pytest.approx(eps, rel=5e-3)
    assert _pld_epsilon(s * 0.99, cfg.delta) > eps  # and not more noise than needed
    noise = torch.stack([_released_sum(r) for r in rels]) - clean
    sd = noise.std(0)
    assert sd.shape == (geo.dim + 1,)
    tol = 5 / math.sqrt(2 * len(rels))
    assert ((sd / (s * math.sqrt(2)) - 1).abs() < tol).all(), sd / (s * math.sqrt(2))
    assert (noise.mean(0).abs() < 5 * s * math.sqrt(2) / math.sqrt(len(rels))).all()


def test_without_noise_the_step_is_the_newton_step_of_the_quadratic_model():
    """An independent computation: z = -(G + lambda I)^{-1} P^T mean(g), solved directly."""
    geo = _geometry(k=6, D=15, spread=2.0)
    cfg = QEMConfig(epsilon=math.inf, clip=1e6, damping=0.3, step=1.0, samples=0)
    grads = torch.randn(40, 15, dtype=torch.float64)
    rel = release_gradients(grads, geo, cfg)
    z, a = step_from_release(rel.mean, rel.noise_std_mean, geo, cfg)
    G = geo.evecs @ torch.diag(geo.evals) @ geo.evecs.T
    M = G + 0.3 * geo.evals.sum() / 6 * torch.eye(6, dtype=torch.float64)
    expected = -torch.linalg.solve(M, geo.basis.T @ grads.mean(0))
    assert a == 1.0
    assert torch.allclose(z, expected, rtol=1e-4, atol=1e-6)
    W = geo.whitener(cfg.damping)
    assert torch.allclose(W @ M @ W, torch.eye(6, dtype=torch.float64), atol=1e-8)


def test_shrinkage_falls_back_to_the_base_model_when_the_release_is_noise():
    geo = _geometry(k=64, D=100)
    cfg = QEMConfig(epsilon=0.25, clip=1.0, samples=0, shrink=True)
    assert QEMConfig(epsilon=1.0).shrink  # the shipped default (the public sweep's, over epsilon 1, 4 and 0.25)
    # One pure-noise release can leave a > 0 (||m||^2 / (k sigma^2) is chi^2_64 / 64, sd 0.18), so
    # judge the rule over many seeded releases: it must keep almost nothing of pure noise.
    shrink = []
    for seed in range(200):
        noise_only = release_gradients(torch.zeros(10, 100, dtype=torch.float64), geo, cfg,
                                       generator=torch.Generator().manual_seed(seed))
        shrink.append(step_from_release(noise_only.mean, noise_only.noise_std_mean, geo, cfg)[1])
    shrink = torch.tensor(shrink)
    assert shrink.mean() < 0.1 and (shrink == 0).float().mean() > 0.4 and shrink.max() < 0.5
    strong = release_gradients(geo.basis[:, :1].T.repeat(100000, 1) * 1e3, geo, QEMConfig(epsilon=4.0, samples=0))
    _, a = step_from_release(strong.mean, strong.noise_std_mean, geo, cfg)
    assert a > 0.9
    # without shrinkage the step is the plain one whatever the noise, and its noise share is still measured
    plain = QEMConfig(epsilon=0.25, clip=1.0, samples=0, shrink=False)
    z, a = step_from_release(noise_only.mean, noise_only.noise_std_mean, geo, plain)
    assert a == 1.0 and noise_share(noise_only.mean, noise_only.noise_std_mean) > 0.5
    assert noise_share(strong.mean, strong.noise_std_mean) < 0.1


def test_qem_and_hypernet_releases_compose_exactly_in_the_ledger():
    geo = _geometry()
    a = release_gradients(torch.randn(30, 20, dtype=torch.float64), geo, QEMConfig(epsilon=1.0, samples=0)).event
    b = release_mean(torch.randn(30, 4), epsilon=1.0).event
    book = PrivacyLedger()
    book.record(a)
    book.record(b)
    assert book.method() == "exact Gaussian-DP composition"
    s = (2 * calibrate_gaussian(epsilon=1.0) ** -2) ** -0.5
    assert book.total(delta=1e-5)[0] == pytest.approx(_pld_epsilon(s, 1e-5), rel=5e-3)


def test_bad_settings_are_clear_errors():
    for bad in ({"clip": 0}, {"damping": -1}, {"basis": "pca"}, {"dim": -1}, {"t_max": 0}, {"step": math.nan}):
        with pytest.raises(ValueError):
            QEMConfig(**bad)


@needs_models
def test_public_geometry_is_deterministic_and_orthonormal():
    from dphyper.methods.qem import _geometry, geometry
    from dphyper.models import PublicModels

    models = PublicModels(torch.device("cpu"))
    cfg = QEMConfig(dim=8, public=16, samples=0)
    geo = geometry(models, cfg)
    _geometry.clear()
    again = geometry(models, cfg)
    assert torch.allclose(geo.basis, again.basis) and torch.allclose(geo.evals, again.evals)
    assert torch.allclose(geo.basis.T @ geo.basis, torch.eye(8, dtype=torch.float64), atol=1e-8)
    assert (geo.evals >= 0).all() and geo.evals.max() > 0


def _tiny_cfg(**kw) -> QEMConfig:
    return QEMConfig(**{"dim": 4, "public": 8, "draws": 2, "batch": 4, "samples": 0, **kw})


@needs_models
def test_per_example_gradients_are_each_images_own_autograd_gradient():
    """Opacus' per-sample rows, grouped by image over its draws across batch boundaries, equal a plain
    autograd gradient of that image's averaged loss with the same draws (3 images, 2 draws, 2 images
    per batch)."""
    import copy

    from dphyper.methods.qem import _Grads
    from dphyper.models import PublicModels

    models = PublicModels(torch.device("cpu"))
    grads = _Grads(models)
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    draws, g = 2, torch.Generator().manual_seed(0)
    noise = torch.randn(6, 1, 32, 32, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    used = [0]

    def fixed(x0, t_max, gen):  # row r of the table for global row r
        a, b = used[0], used[0] + len(x0)
        used[0] = b
        return grads.sched.add_noise(x0, noise[a:b], t[a:b]), t[a:b], noise[a:b]

    grads._noisy = fixed
    rows = grads.loss_gradients(images, draws=draws, t_max=1000, gen=g, batch=4)
    plain = copy.deepcopy(models.unet)  # no Opacus hooks: the served model with A set and B = 0
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for n, a in grads.a.items():
            params[n].copy_(a)
    b_params = [params[n] for n in grads.b_names]
    assert all(float(p.abs().max()) == 0 for p in b_params)
    for p in b_params:
        p.requires_grad_(True)
    for i in range(3):
        r = slice(i * draws, (i + 1) * draws)
        x0 = images[i:i + 1].repeat(draws, 1, 1, 1)
        pred = plain(grads.sched.add_noise(x0, noise[r], t[r]), t[r]).sample
        loss = ((pred - noise[r]) ** 2).flatten(1).mean(1).mean()
        expected = torch.cat([d.flatten() for d in torch.autograd.grad(loss, b_params)]).double()
        assert torch.allclose(rows[i], expected, rtol=1e-3, atol=1e-7), (i, (rows[i] - expected).abs().max())


@needs_models
def test_a_run_leaves_the_served_model_untouched_and_the_geometry_public():
    """The shared UNet is bit-identical after a run and carries no per-sample state; the cached
    geometry is the same whichever private set ran first (it never sees private images)."""
    from dphyper.methods import get_method
    from dphyper.methods.qem import _geometry, geometry
    from dphyper.models import PublicModels

    models = PublicModels(torch.device("cpu"))
    before = {k: v.clone() for k, v in models.unet.state_dict().items()}
    cfg = _tiny_cfg(epsilon=1.0)
    _geometry.clear()
    get_method("qem").train(torch.rand(5, 1, 32, 32) * 2 - 1, cfg, models)
    first = geometry(models, cfg)
    _geometry.clear()
    get_method("qem").train(-torch.ones(7, 1, 32, 32), cfg, models)
    second = geometry(models, cfg)
    assert torch.equal(first.basis, second.basis) and torch.equal(first.evals, second.evals)
    after = models.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in models.unet.parameters())
    assert all(p.grad is None for p in models.unet.parameters())


@needs_models
def test_the_caption_says_when_an_unshrunk_step_is_mostly_noise():
    """Without shrinkage the step follows the noise, so the report carries the release's noise share and the
    caption says when noise dominates (5 images at epsilon 0.1); with shrinkage the old fall-back note stays."""
    from dphyper.methods import get_method
    from dphyper.models import PublicModels

    models = PublicModels(torch.device("cpu"))
    images = torch.rand(5, 1, 32, 32) * 2 - 1
    # 64 random directions (no public gradients needed): with dim 4 the pure-noise release's share
    # k s^2 / |m|^2 falls under 0.5 with probability P(chi2_4 > 8) = 0.09 (it failed once); at 64, P(chi2_64 > 128) ~ 1e-7.
    wide = {"dim": 64, "basis": "random"}
    plain = get_method("qem").train(images, _tiny_cfg(epsilon=0.1, shrink=False, **wide), models).report
    assert plain["shrinkage"] == 1.0 and plain["noise_share"] >= 0.5 and "mostly noise" in plain["note"]
    shrunk = get_method("qem").train(images, _tiny_cfg(epsilon=0.1, shrink=True, **wide), models).report
    assert shrunk["shrinkage"] < 1.0 and "mostly noise" not in shrunk.get("note", "")


def test_public_basis_needs_enough_public_images():
    with pytest.raises(ValueError, match="public"):
        QEMConfig(dim=64, public=32)
    with pytest.raises(ValueError, match="public"):
        QEMConfig(public=10_000)
    QEMConfig(dim=64, public=32, basis="random")  # a random basis needs no public gradients



@needs_models
def test_adding_an_image_changes_no_other_images_gradient_in_any_bit():
    """Issue 37: one private image per pass, so an image's per-example gradient comes from that image and its own
    draws alone; with several images per pass, adding one moved the others' rows in their last bits."""
    from dphyper.config import EXAMPLES_DIR
    from dphyper.data import load_folder
    from dphyper.methods.qem import _Grads
    from dphyper.models import PublicModels

    grads = _Grads(PublicModels(torch.device("cpu")))
    x = load_folder(EXAMPLES_DIR / "bags").images[:6]
    kw = dict(draws=2, t_max=500, batch=64)
    a = grads.loss_gradients(x[:5], gen=torch.Generator().manual_seed(1), **kw)
    b = grads.loss_gradients(x, gen=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b[:5]) and not torch.equal(b[5], b[4])
