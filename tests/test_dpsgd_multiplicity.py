"""Issue 35: what the field tunes in DP-SGD: augmentation multiplicity (several noise/timestep draws per image,
averaged before clipping) and an EMA of the weights as the release. Both keep the guarantee of k = 1."""

import math

import pytest
import torch

from dphyper.config import BASE_UNET_DIR
from dphyper.dpsgd import DPSGDConfig, average_grad_samples, ema_update, loss_pieces

from .conftest import toy_squares

needs_base = pytest.mark.skipif(not (BASE_UNET_DIR / "config.json").exists(), reason="no shipped base UNet")


def test_each_image_is_clipped_once_over_the_mean_of_its_draws():
    """k rows per image: the step equals sum_i clip_C(mean_j g_ij) / B; clipping rows one by one would not."""
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    images, k, C = torch.randn(4, 5), 3, 0.3
    draws = torch.randn(4 * k, 5)  # each row's own "noise draw"
    target = torch.randn(4 * k, 2)
    w0 = torch.arange(10.0).view(2, 5) / 10

    def loss_rows(weight, rows):
        return ((rows @ weight.T - target) ** 2).sum(1)  # one loss per row

    net = torch.nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(w0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=4)
    model, opt, _ = PrivacyEngine(accountant="rdp").make_private(
        module=net, optimizer=torch.optim.SGD(net.parameters(), lr=1.0), data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=C, poisson_sampling=False)
    rows = images.repeat_interleave(k, 0) + draws
    ((model(rows) - target) ** 2).sum(1).mean().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    average_grad_samples(params, k)
    assert params[0].grad_sample.shape[0] == 4
    opt.step()

    expected = torch.zeros_like(w0)
    for i in range(4):
        g = torch.autograd.functional.jacobian(lambda w: loss_rows(w, rows)[i * k:(i + 1) * k].mean(), w0)
        expected += g * min(1.0, C / float(g.norm()))
    torch.testing.assert_close(net.weight.detach(), w0 - expected / 4, rtol=1e-5, atol=1e-6)
    # The broken variant (each draw clipped as if it were an image) moves the weights elsewhere.
    broken = torch.zeros_like(w0)
    for r in range(4 * k):
        g = torch.autograd.functional.jacobian(lambda w: loss_rows(w, rows)[r], w0)
        broken += g * min(1.0, C / float(g.norm())) / k
    assert not torch.allclose(w0 - broken / 4, net.weight.detach(), atol=1e-4)


def test_multiplicity_one_keeps_the_draws_and_k_keeps_each_image_whole_in_a_piece():
    from dphyper.diffusion import draw_noise, make_train_scheduler

    sched, x0 = make_train_scheduler(), toy_squares(20, 6, 18)
    old = []  # the stream before multiplicity existed: draws per piece of 16 images, physical pieces of 16
    g = torch.Generator().manual_seed(5)
    for xd in x0.split(16):
        noise, t = draw_noise(xd, sched, g)
        old += list(zip(xd.split(16), noise.split(16), t.split(16)))
    new = list(loss_pieces(x0, sched, torch.Generator().manual_seed(5), torch.device("cpu"), 16, 16, 1))
    assert len(old) == len(new) and all(torch.equal(a, b) for o, n in zip(old, new) for a, b in zip(o, n))
    k = 3
    pieces = list(loss_pieces(x0, sched, torch.Generator().manual_seed(5), torch.device("cpu"), 16, 16, k))
    assert all(len(x) % k == 0 and len(x) <= 16 for x, _, _ in pieces)
    rows = torch.cat([x for x, _, _ in pieces])
    assert torch.equal(rows, x0.repeat_interleave(k, 0))  # every image, k consecutive rows, in order
    noise = torch.cat([n for _, n, _ in pieces])
    assert not torch.equal(noise[0], noise[1])  # each row its own draw


def test_the_ema_warms_up_then_decays():
    e, p = [torch.zeros(2)], [torch.ones(2)]
    ema_update(e, p, 0.99, step=0)  # decay min(0.99, 1/10) = 0.1
    torch.testing.assert_close(e[0], torch.full((2,), 0.9))
    ema_update(e, p, 0.5, step=1000)  # decay 0.5
    torch.testing.assert_close(e[0], torch.full((2,), 0.95))


def test_bad_settings_are_refused():
    for kw in ({"multiplicity": 0}, {"multiplicity": 1.5}, {"ema": 1.0}, {"ema": -0.1}, {"ema": math.nan}):
        with pytest.raises(ValueError, match="multiplicity"):
            DPSGDConfig(epsilon=1.0, **kw)


@needs_base
def test_a_run_with_multiplicity_and_ema_releases_the_average_at_the_same_sigma(monkeypatch):
    import dphyper.dpsgd as dpsgd

    rows = []
    real = dpsgd.noised_loss

    def counting(fn, x0, noise, t, sched):
        rows.append(len(x0))
        return real(fn, x0, noise, t, sched)

    monkeypatch.setattr(dpsgd, "noised_loss", counting)
    images = toy_squares(32, 6, 18)
    cfg = DPSGDConfig(epsilon=2.0, delta=1e-5, batch_size=16, epochs=2, max_steps=3, samples=0, seed=0,
                      multiplicity=2, ema=0.9)
    state = dpsgd.advance_dpsgd(images, dpsgd.start_dpsgd(len(images), cfg), device=torch.device("cpu"))
    res = dpsgd.finish_dpsgd(state, device=torch.device("cpu"))
    plain = dpsgd.start_dpsgd(len(images), DPSGDConfig(epsilon=2.0, delta=1e-5, batch_size=16, epochs=2, max_steps=3))
    assert state.sigma == plain.sigma and res.event.steps == 3  # same sensitivity C, same accounting
    assert res.report["multiplicity"] == 2 and res.report["ema"] == 0.9
    assert sum(rows) % 2 == 0 and sum(rows) > 0
    assert all(torch.equal(res.lora[k], state.ema[k]) for k in res.lora)  # the average is what is released
    assert any(not torch.equal(state.ema[k], state.lora[k]) for k in state.lora if ".lora_B." in k)


def test_new_settings_stale_nothing_at_their_neutral_value_and_count_otherwise():
    """Stored cells ran k = 1 without an EMA: at those values the stamp is what it was; any other value is a
    different run (a different sweep stamp, a different row of settings)."""
    from dphyper.sweep import run_cost, sweep_stamp

    assert "multiplicity" not in DPSGDConfig().settings() and "ema" not in DPSGDConfig().settings()
    assert DPSGDConfig(multiplicity=2, ema=0.5).settings()["multiplicity"] == 2
    for method in ("dpsgd", "pda-dpmd", "sparse"):
        same = sweep_stamp(method, {"lr": 1e-3})
        assert sweep_stamp(method, {"lr": 1e-3, "multiplicity": 1, "ema": 0.0}) == same
        assert sweep_stamp(method, {"lr": 1e-3, "multiplicity": 4}) != same
        assert sweep_stamp(method, {"lr": 1e-3, "ema": 0.999}) != same
    # k draws per image cost k example gradients each (the compute cap counts them)
    hp = {"epochs": 10.0, "batch_size": 64}
    assert run_cost({**hp, "multiplicity": 4}, 1000) == 4 * run_cost(hp, 1000)


def test_under_poisson_sampling_and_physical_pieces_the_step_is_the_sum_of_clipped_image_means_over_the_expected_batch():
    """The training loop's path: a Poisson batch, k rows per image, run in pieces of 6 rows (the last one shorter),
    each piece merged by image and accumulated (``accumulate_physical``), then one step: Opacus divides by the
    expected batch size, never by the number of rows or pieces."""
    import warnings

    from opacus import PrivacyEngine

    from dphyper.dpsgd import accumulate_physical

    torch.manual_seed(1)
    n, k, C, B = 40, 3, 0.2, 20
    x, y = torch.randn(n, 5), torch.randn(n, 2)
    w0 = torch.arange(10.0).view(2, 5) / 10
    net = torch.nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(w0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader = PrivacyEngine(accountant="rdp").make_private(
            module=net, optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
            data_loader=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=B),
            noise_multiplier=0.0, max_grad_norm=C, poisson_sampling=True)
    params = [p for p in model.parameters() if p.requires_grad]
    xb, yb = next(iter(loader))
    assert len(xb) > 2
    g = torch.Generator().manual_seed(2)
    jitter = torch.randn(len(xb) * k, 5, generator=g) * 0.1  # each row's own draw
    rows, targets = xb.repeat_interleave(k, 0) + jitter, yb.repeat_interleave(k, 0)
    per = 2 * k  # pieces of 2 images
    pieces = list(zip(rows.split(per), targets.split(per)))
    opt.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (xp, yp) in enumerate(pieces):
            ((model(xp) - yp) ** 2).sum(1).mean().backward()
            average_grad_samples(params, k)
            if i < len(pieces) - 1:
                accumulate_physical(opt, params, None)
        opt.step()

    def row_loss(w, r):
        return ((rows[r] @ w.T - targets[r]) ** 2).sum()

    expected = torch.zeros_like(w0)
    for i in range(len(xb)):
        gi = sum(torch.autograd.functional.jacobian(lambda w: row_loss(w, r), w0) for r in range(i * k, (i + 1) * k)) / k
        expected += gi * min(1.0, C / float(gi.norm()))
    torch.testing.assert_close(net.weight.detach(), w0 - expected / (n * (B / n)), rtol=1e-5, atol=1e-6)


def test_merging_refuses_gradients_accumulated_over_several_batches():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad_sample = [torch.zeros(3, 2), torch.zeros(3, 2)]
    with pytest.raises(RuntimeError, match="several batches"):
        average_grad_samples([p], 3)


def test_a_shipped_default_that_leaves_its_neutral_value_changes_the_comparison_identity(monkeypatch):
    from dphyper.compare import method_id

    before = {m: method_id(m, None, 100) for m in ("dpsgd", "pda-dpmd")}
    # As if the sweep had shipped k = 4 (stored cells ran at 1): the default now differs from the neutral value.
    monkeypatch.setattr(DPSGDConfig, "NEUTRAL", {"multiplicity": 4, "ema": 0.0})
    assert all(method_id(m, None, 100) != before[m] for m in before)
