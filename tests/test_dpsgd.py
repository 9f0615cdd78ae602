"""DP-SGD baseline: accounting, and that updates really happen (Opacus issue 820 guard)."""

import dataclasses
import math
import threading

import pytest
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from dphyper.config import BASE_UNET_DIR
from dphyper.diffusion import load_unet
from dphyper.dpsgd import Cancelled, DPSGDConfig, train_dpsgd
from dphyper.lora import add_lora, lora_model_fn, save_lora

from .conftest import toy_squares

needs_base = pytest.mark.skipif(not (BASE_UNET_DIR / "config.json").exists(), reason="no shipped base UNet")


def _squares(n=64):
    return toy_squares(n, 6, 18)


def _fixed_loss(unet, lora, x0):
    g = torch.Generator().manual_seed(123)
    from dphyper.diffusion import make_train_scheduler

    alphas = make_train_scheduler().alphas_cumprod
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (len(x0),), generator=g)
    a, s = alphas[t].sqrt().view(-1, 1, 1, 1), (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        return ((lora_model_fn(unet, lora)(a * x0 + s * noise, t) - noise) ** 2).mean().item()


@needs_base
def test_two_step_run_is_loadable_and_within_budget(tmp_path):
    cfg = DPSGDConfig(epsilon=2.0, delta=1e-5, batch_size=16, epochs=2, max_steps=2, samples=2, steps=3, seed=0)
    seen = []
    res = train_dpsgd(_squares(64), cfg, progress=seen.append, device=torch.device("cpu"))
    assert res.report["steps"] == 2 and len(seen) == 2
    assert res.report["epsilon_spent"] <= 2.0 + 1e-9
    assert res.report["noise_multiplier"] > 0.3 and res.report["accountant"] == "prv"
    assert res.event.epsilon <= 2.0 and res.event.sample_rate == pytest.approx(0.25)
    save_lora(res.lora, tmp_path / "lora.safetensors")
    unet = add_lora(load_unet(device=torch.device("cpu")))
    set_peft_model_state_dict(unet, load_file(str(tmp_path / "lora.safetensors")))
    assert res.samples.shape == (2, 1, 32, 32)


@pytest.mark.slow  # 39 s: trains 40 DP-SGD steps; the contract and chunking tests cover the loop
@needs_base
def test_negligible_noise_lowers_loss_and_changes_lora():
    x = _squares(64)
    # epsilon = 1e5: noise multiplier ~0.01, so sigma*C/B ~ 4e-4 per coordinate, well below the signal
    cfg = DPSGDConfig(epsilon=1e5, delta=1e-5, batch_size=32, epochs=20, lr=1e-2, max_grad_norm=1.0,
                      accountant="rdp", samples=0)
    res = train_dpsgd(x, cfg, device=torch.device("cpu"))
    assert res.report["noise_multiplier"] < 0.05
    unet = add_lora(load_unet(device=torch.device("cpu")))
    zero = {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in res.lora.items()}
    before, after = _fixed_loss(unet, zero, x), _fixed_loss(unet, res.lora, x)
    assert any(v.abs().sum() > 0 for k, v in res.lora.items() if ".lora_B." in k)
    assert after < 0.97 * before, (before, after)


@needs_base
def test_cancel_releases_nothing():
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        train_dpsgd(_squares(32), DPSGDConfig(epsilon=1.0, samples=0), cancel=stop, device=torch.device("cpu"))


@needs_base
def test_non_private_reference_has_no_noise():
    res = train_dpsgd(_squares(32), DPSGDConfig(epsilon=math.inf, batch_size=16, epochs=1, samples=0),
                      device=torch.device("cpu"))
    assert res.report["noise_multiplier"] == 0 and res.report["private"] is False
    assert math.isinf(res.event.epsilon) and not res.event.private  # the ledger must see it


@pytest.mark.parametrize("method", ["dpsgd", "pda-dpmd", "sparse"])
def test_shipped_per_size_defaults_are_the_public_sweeps_best(method):
    """Each per-size row of a DP-SGD-like method's tuned table is the best cell of the public sweep at
    epsilon = 1 on the set it names, among the settings the row can express (never tuned on private or
    test data); a row not swept yet says so (tuned_on None)."""
    import json

    from dphyper.sweep import SWEEP_EPSILONS, fresh_sweep_cells, rank_sweep
    from dphyper.config import REPO_DIR
    from dphyper.dpsgd import TUNED_KEYS, resolve, tuned_defaults
    from dphyper.methods import get_method

    sweep = json.loads((REPO_DIR / "bench" / "sweep.json").read_text())
    cells = fresh_sweep_cells(sweep)
    table = get_method(method).identity()["tuned"]
    assert table[-1]["n_max"] is None  # every n is covered
    swept = [row for row in table if row["tuned_on"]]
    assert swept, "no row of the table comes from the sweep"
    for row in swept:
        assert sweep["sets"][row["tuned_on"]]["split"] == "train"  # public sets only
        ranked = [c for c in rank_sweep(cells, method, row["tuned_on"], SWEEP_EPSILONS[0])
                  if set(c["hp"]) <= set(row) | {"public_batch_size"}]
        best = {k: v for k, v in ranked[0]["hp"].items() if k in row}
        assert {k: row[k] for k in best} == best, (row, ranked[0])
        n = row["n_max"] or 1000
        assert tuned_defaults(n, tuple(table)) == {k: row[k] for k in TUNED_KEYS}
    explicit = resolve(DPSGDConfig(lr=0.5), 1000)  # an explicit value wins over the tuned one
    assert explicit.lr == 0.5


@needs_base
def test_a_chunked_run_is_accounted_exactly_like_one_call():
    """ZeroGPU-style: the same run as three short calls (model, optimiser and accountant carried in a
    state) reports the same epsilon, steps and event as one call, and its history is one entry."""
    from dphyper.dpsgd import advance_dpsgd, epsilon_spent, start_dpsgd

    images = _squares(8)  # n does not matter here; 8 keeps 18 UNet steps cheap
    cfg = DPSGDConfig(epsilon=1.0, samples=0, max_steps=6)
    whole = train_dpsgd(images, cfg)
    chunked = train_dpsgd(images, cfg, chunk_steps=2)
    assert whole.report["steps"] == chunked.report["steps"] == 6
    assert chunked.report["epsilon_spent"] == whole.report["epsilon_spent"] <= 1.0 + 1e-9
    assert dataclasses.replace(chunked.event, time=0) == dataclasses.replace(whole.event, time=0)
    state = start_dpsgd(len(images), cfg)
    for k in (2, 4, 6):
        state = advance_dpsgd(images, state, max_steps=2)
        assert state.step == k and state.history == [(state.sigma, state.q, k)]  # merged, as one call records
        assert all(v.device.type == "cpu" for v in state.lora.values())  # can leave a GPU worker process
    assert epsilon_spent(state) == whole.report["epsilon_spent"]
    # Adam's moments were carried: a chunk continues the optimiser, it does not restart it.
    assert state.opt_state["state"] and all(int(v["step"]) == 6 for v in state.opt_state["state"].values())


@needs_base
def test_time_boxed_chunks_make_progress_and_match_the_accounting(monkeypatch):
    """chunk_seconds (the ZeroGPU setting): every chunk takes at least one step, chunks go through the
    GPU wrapper one by one, and the run reports what one call would."""
    import dphyper.dpsgd as dpsgd

    calls = []
    real = dpsgd._advance_chunk
    monkeypatch.setattr(dpsgd, "_advance_chunk", lambda *a: calls.append(a[1].step) or real(*a))
    images = _squares(8)
    r = train_dpsgd(images, DPSGDConfig(epsilon=1.0, samples=0, max_steps=4, chunk_seconds=1e-6))
    assert calls == [0, 1, 2, 3]  # one step per chunk: each chunk hit its (tiny) time box
    whole = train_dpsgd(images, DPSGDConfig(epsilon=1.0, samples=0, max_steps=4))
    assert r.report["steps"] == 4 and r.report["epsilon_spent"] == whole.report["epsilon_spent"]


@pytest.mark.parametrize("masked", [False, True])
def test_physical_batches_give_the_same_clipped_sum_and_one_accountant_step(masked):
    """A Poisson batch run in pieces (memory) is the same DP-SGD step: the same sum of clipped (masked)
    per-sample gradients, one noise draw, one step in the accountant."""
    from opacus import PrivacyEngine

    from dphyper.dpsgd import accumulate_physical, masked_step

    torch.manual_seed(0)
    x, y = torch.randn(10, 5), torch.randn(10, 3)
    masks = [torch.tensor([True, False, True]), torch.tensor([True, False, True])] if masked else None

    def one_step(piece: int):
        net = torch.nn.Linear(5, 3)
        with torch.no_grad():
            net.weight.copy_(torch.arange(15.0).view(3, 5) / 10)
            net.bias.zero_()
        engine = PrivacyEngine(accountant="rdp")
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
        model, opt, _ = engine.make_private(module=net, optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
                                            data_loader=loader, noise_multiplier=0.0, max_grad_norm=0.5,
                                            poisson_sampling=False)
        params = [p for p in model.parameters() if p.requires_grad]
        opt.zero_grad(set_to_none=True)
        pieces = list(zip(x.split(piece), y.split(piece)))
        for i, (xp, yp) in enumerate(pieces):
            ((model(xp) - yp) ** 2).sum(1).mean().backward()
            if i < len(pieces) - 1:
                accumulate_physical(opt, params, masks)
                assert all(p.grad_sample is None for p in params)  # the piece's memory is freed
        if masked:
            masked_step(opt, params, masks, private=True)
        else:
            opt.step()
        return [p.detach().clone() for p in params], engine.accountant.history

    whole, hist_whole = one_step(10)
    split, hist_split = one_step(3)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(hist_split) == 1 and hist_split == hist_whole
    # the run moved: 10 clipped gradients of norm <= 0.5 were applied
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(whole, [torch.arange(15.0).view(3, 5) / 10,
                                                                    torch.zeros(3)]))


@needs_base
def test_a_run_in_physical_pieces_is_accounted_like_one(monkeypatch):
    """The training loop with physical batches of 4 under expected batches of 16: every step counted once."""
    import dphyper.dpsgd as dpsgd

    from opacus.optimizers.optimizer import DPOptimizer

    monkeypatch.setitem(dpsgd.PHYSICAL_BATCH, "cpu", 4)
    seen = {"clipped": 0, "noise": 0, "divisors": [], "pieces": 0}
    clip, noise, scale = DPOptimizer.clip_and_accumulate, DPOptimizer.add_noise, DPOptimizer.scale_grad

    def counting_clip(self):
        seen["clipped"] += self.grad_samples[0].shape[0]
        seen["pieces"] += 1
        return clip(self)

    def counting_noise(self):
        seen["noise"] += 1
        return noise(self)

    def recording_scale(self):
        seen["divisors"].append(self.expected_batch_size * self.accumulated_iterations)
        return scale(self)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", counting_clip)
    monkeypatch.setattr(DPOptimizer, "add_noise", counting_noise)
    monkeypatch.setattr(DPOptimizer, "scale_grad", recording_scale)
    batches, draws = [], []
    real_loss, real_draw = dpsgd.noised_loss, dpsgd.draw_noise

    def watching_loss(fn, x0, noise, t, sched):
        batches.append(len(x0))
        return real_loss(fn, x0, noise, t, sched)

    def watching_draw(x0, sched, g):
        draws.append(len(x0))
        return real_draw(x0, sched, g)

    monkeypatch.setattr(dpsgd, "noised_loss", watching_loss)
    monkeypatch.setattr(dpsgd, "draw_noise", watching_draw)
    cfg = DPSGDConfig(epsilon=2.0, delta=1e-5, batch_size=16, epochs=2, max_steps=2, samples=0, seed=0)
    res = train_dpsgd(_squares(64), cfg, device=torch.device("cpu"))
    assert res.report["steps"] == 2 and res.event.steps == 2 and len(res.losses) == 2
    # Every Poisson-sampled example clipped once, in pieces of at most 4; one noise draw per step; the sum
    # divided by the expected batch size (16), never by a piece's size or the number of pieces.
    assert max(batches) <= 4 and seen["clipped"] == sum(batches) and seen["pieces"] == len(batches)
    # The loss's draws per piece of draw_piece (16) images, not per physical batch: the random stream is the run's
    assert sum(draws) == sum(batches) and max(draws) > 4 and max(draws) <= dpsgd.draw_piece(torch.device("cpu"))
    assert seen["noise"] == 2 and seen["divisors"] == [16, 16]
    assert res.report["epsilon_spent"] <= 2.0 + 1e-9
    assert any(v.abs().sum() > 0 for k, v in res.lora.items() if ".lora_B." in k)


@needs_base
@pytest.mark.parametrize("epsilon", [2.0, math.inf])
def test_the_physical_batch_changes_memory_not_the_run(monkeypatch, epsilon):
    """The same draws under physical batches of 16 and 4 give the same losses and LoRA (up to float summation
    order): the physical batch is a memory setting, not part of a run's identity (issue 37)."""
    import dphyper.dpsgd as dpsgd

    def run(physical):
        monkeypatch.setitem(dpsgd.PHYSICAL_BATCH, "cpu", physical)
        calls = iter(range(100))  # the run's generators seeded by call order: the same streams in both runs
        monkeypatch.setattr(dpsgd, "private_generator",
                            lambda device=None: torch.Generator(device=torch.device(device or "cpu"))
                            .manual_seed(1000 + next(calls)))
        torch.manual_seed(0)
        cfg = DPSGDConfig(epsilon=epsilon, delta=1e-5, batch_size=32, epochs=2, max_steps=2, samples=0, seed=0)
        return train_dpsgd(_squares(64), cfg, device=torch.device("cpu"))

    a, b = run(16), run(4)
    assert a.losses == pytest.approx(b.losses, rel=1e-5)
    # Without noise (eps = inf) Adam's first steps turn near-zero gradient coordinates into lr-sized moves, so a
    # last-bit difference in the summation shows as ~1e-5 on weights of ~0.15 (measured 1.5e-5): 1e-4 bounds it.
    assert all(torch.allclose(a.lora[k], b.lora[k], atol=1e-4) for k in a.lora)
    assert any(not torch.equal(a.lora[k], torch.zeros_like(a.lora[k])) for k in a.lora if ".lora_B." in k)


@needs_base
def test_p4_interleaves_dp_and_plain_steps_on_one_batch():
    """Issue 34: P4 is measured in one process, DP-SGD and plain steps alternating on the same images; a DP step
    (per-example gradients, clipping, noise) costs more than a plain one."""
    from dphyper.bench.p4_suite import measure, text

    r = measure(_squares(8), pairs=4, warmup=1)
    assert r["pairs"] == 4 and r["batch"] == 8
    assert r["median_ratio"] > 1 and r["q1"] <= r["median_ratio"] <= r["q3"]
    assert f"median {r['median_ratio']:.2f}×" in text({**r, "machine": "m", "set": "s"})
