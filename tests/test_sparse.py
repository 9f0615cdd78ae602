"""DP sparse fine-tuning: the selection's release, the calibration of both phases, the masked step,
the sparse delta's round trip, and the mask controls."""

import math
import warnings

import pytest
import torch

from dphyper.methods.sparse import (SparseConfig, calibrate, composed_epsilon, delta_params, layers_of,
                                    load_sparse_delta_into, masks_from_groups, release_scores,
                                    save_sparse_delta, top_groups, unit_rows)
from dphyper.privacy import PrivacyEvent, PrivacyLedger

from .test_hypernet import needs_models


def test_unit_rows_bound_every_example_to_norm_one():
    s = torch.tensor([[3.0, 4.0, 0.0], [1e30, 0.0, 1.0], [0.0, 0.0, 0.0], [float("nan"), 1.0, 1.0],
                      [1e-30, 0.0, 0.0]])
    u = unit_rows(s)
    norms = u.norm(dim=1)
    assert torch.all(norms <= 1.0) and torch.allclose(norms[[0, 1, 4]], torch.ones(3, dtype=torch.float64))
    assert torch.equal(u[2], torch.zeros(3, dtype=torch.float64)) and torch.equal(u[3], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(u[0], torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64))


def test_release_adds_noise_of_the_stated_std_and_one_record_moves_the_sum_by_at_most_one():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(50, 16, generator=g, dtype=torch.float64) * 5
    draws = torch.stack([release_scores(data, epsilon=1.0, delta=1e-5, noise_multiplier=2.0, generator=g).scores
                         for _ in range(2000)])
    exact = unit_rows(data).sum(0)
    assert abs(float((draws - exact).std()) - 2.0) < 0.05
    assert torch.allclose(draws.mean(0), exact, atol=0.2)
    canary = torch.full((1, 16), 1e9, dtype=torch.float64)
    moved = release_scores(torch.cat([data, canary]), epsilon=1.0, delta=1e-5, noise_multiplier=0.0).scores - exact
    assert float(moved.norm()) <= 1.0 + 1e-12
    ev = release_scores(data, epsilon=0.3, delta=1e-5, noise_multiplier=2.0).event
    assert ev.mechanism == "gaussian_row_scores" and ev.sensitivity == 1.0 and ev.noise_multiplier == 2.0


@pytest.mark.parametrize("epsilon, split, q, steps", [(1.0, 0.2, 0.5, 20), (4.0, 0.1, 0.0625, 160),
                                                      (0.5, 0.4, 1.0, 10)])
def test_calibration_composes_to_the_claim_and_agrees_with_an_independent_accountant(epsilon, split, q, steps):
    """sigma_1 is the analytic Gaussian at split * epsilon; sigma_2 makes the PLD composition exactly the claim
    (1% less noise exceeds it); Opacus' RDP accountant (independent code, an upper bound) agrees within its slack."""
    from opacus.accountants import RDPAccountant

    from dphyper.privacy import analytic_gaussian_delta

    delta = 1e-5
    s1, s2 = calibrate(epsilon, delta, split, q, steps)
    # The selection alone is (split * epsilon, delta)-DP, tightly (Balle-Wang's delta(eps) formula).
    assert analytic_gaussian_delta(noise_multiplier=s1, epsilon=split * epsilon) <= delta
    assert analytic_gaussian_delta(noise_multiplier=s1 * 0.999, epsilon=split * epsilon) > delta
    eps = composed_epsilon(s1, q, s2, steps, delta)
    assert epsilon * 0.99 <= eps <= epsilon
    assert composed_epsilon(s1, q, s2 * 0.99, steps, delta) > epsilon
    # The ledger's total over the run's two events is the same number (the calibration uses its accountant).
    ledger = PrivacyLedger()
    ledger.record(PrivacyEvent("gaussian_row_scores", split * epsilon, delta, s1, 1.0))
    ledger.record(PrivacyEvent("dpsgd_poisson_gaussian", math.nan, delta, s2, 1.0, sample_rate=q, steps=steps))
    assert ledger.total(delta=delta)[0] == pytest.approx(eps, rel=1e-9)
    rdp = RDPAccountant()
    rdp.history = [(s1, 1.0, 1), (s2, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = rdp.get_epsilon(delta)
    assert eps <= r <= eps * 1.35, (eps, r)
    # Without a selection the whole budget goes to DP-SGD: less noise for the same claim.
    assert calibrate(epsilon, delta, None, q, steps)[1] < s2


def test_a_split_that_leaves_nothing_for_dp_sgd_is_refused():
    with pytest.raises(ValueError, match="split"):
        SparseConfig(split=0.95)
    with pytest.raises(ValueError, match="mask"):
        SparseConfig(mask="oracle")


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_masked_step_clips_only_the_selected_rows_and_never_moves_the_others(sigma):
    """Row 0 (selected) has per-example gradients below C, row 1 (not selected) huge ones. Masking before
    the clip leaves row 0's gradient unscaled (no noise); with noise, row 1 still never moves (the noisy
    gradient is masked too)."""
    from opacus import PrivacyEngine
    from torch.utils.data import TensorDataset

    from dphyper.dpsgd import make_private, masked_step

    torch.manual_seed(0)
    x = torch.randn(8, 3) * 0.01
    model = torch.nn.Linear(3, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader = make_private(PrivacyEngine(), model, opt, TensorDataset(x), batch_size=8, max_grad_norm=1.0,
                                          sigma=sigma, device=torch.device("cpu"))
    mask = [torch.tensor([True, False])]
    xb = x
    out = model(xb)
    (out[:, 0].sum() + 1e6 * out[:, 1].sum()).backward()
    masked_step(opt, list(model.parameters()), mask, private=True)
    w = model._module.weight.detach()
    # Row 0: Opacus reads the summed loss as a mean (per-example gradient 8 x_i, norm < C: unclipped) and
    # divides by the expected batch of 8, so the step is -lr * sum x_i. Clipping the unmasked gradient
    # (row 1's 1e6 included) would have shrunk it a millionfold.
    if sigma == 0:
        assert torch.allclose(w[0], -x.sum(0), atol=1e-7)
    else:
        assert not torch.allclose(w[0], -x.sum(0), atol=1e-3)  # the noise landed on the selected row
    assert torch.equal(w[1], torch.zeros(3))


def test_groups_cover_every_weight_of_the_unet_once():
    from dphyper.diffusion import load_unet

    unet = load_unet(device=torch.device("cpu"))
    layers = layers_of(unet)
    covered = {p for layer in layers for p in layer.params}
    assert covered == {n for n, _ in unet.named_parameters()}
    assert sum(layer.rows * layer.row_size for layer in layers) == sum(p.numel() for p in unet.parameters())
    masks = masks_from_groups(layers, torch.tensor([0, sum(l.rows for l in layers) - 1]))
    assert all(m.sum() == 1 for m in masks.values())


def test_sparse_delta_round_trip_touches_only_its_rows(tmp_path):
    from dphyper.diffusion import load_unet
    from dphyper.lora import add_lora

    base = load_unet(device=torch.device("cpu"))
    name = "up_blocks.0.resnets.0.conv1.weight"
    rows = torch.tensor([1, 5])
    delta = {f"{name}.rows": rows, f"{name}.delta": torch.ones(2, *base.get_parameter(name).shape[1:])}
    save_sparse_delta(delta, tmp_path / "sparse_delta.safetensors")
    loaded = load_sparse_delta_into(load_unet(device=torch.device("cpu")), tmp_path / "sparse_delta.safetensors")
    diff = loaded.get_parameter(name) - base.get_parameter(name)
    assert torch.allclose(diff[rows], torch.ones_like(diff[rows])) and diff[[0, 2, 3, 4]].abs().max() == 0
    # A renamed download (a browser's "sparse_delta (1).safetensors") loads through the either-format loader too.
    from dphyper.methods import load_adapter_into

    (tmp_path / "sparse_delta.safetensors").rename(tmp_path / "mine (1).safetensors")
    again = load_adapter_into(load_unet(device=torch.device("cpu")), tmp_path / "mine (1).safetensors")
    assert torch.equal(again.get_parameter(name), loaded.get_parameter(name))
    # The same tensors for the app's UNet with LoRA slots (attention weights live under base_layer there).
    lora_unet = add_lora(load_unet(device=torch.device("cpu")))
    attn = "mid_block.attentions.0.to_q.weight"
    d2 = {f"{attn}.rows": torch.tensor([0]), f"{attn}.delta": torch.ones(1, base.get_parameter(attn).shape[1])}
    params = delta_params(lora_unet, d2)
    assert list(params) == ["mid_block.attentions.0.to_q.base_layer.weight"]
    with pytest.raises(ValueError, match="does not match"):
        delta_params(base, {"nope.weight.rows": torch.tensor([0]), "nope.weight.delta": torch.ones(1)})


def test_top_groups_are_the_largest_scores():
    s = torch.tensor([0.1, 5.0, -1.0, 3.0, 2.0], dtype=torch.float64)
    assert top_groups(s, 2).tolist() == [1, 3] and top_groups(s, 10).tolist() == [0, 1, 2, 3, 4]


@needs_models
def test_controls_spend_everything_on_dp_sgd_and_noise_free_selection_follows_the_data():
    """mask=random / public: one DP-SGD event at the full epsilon, no selection. At epsilon = inf the
    selection is exact: two folders of different classes choose different rows."""
    from dphyper.config import EXAMPLES_DIR
    from dphyper.data import load_folder
    from dphyper.methods import get_method, run_method
    from dphyper.models import PublicModels

    models = PublicModels(torch.device("cpu"))
    m = get_method("sparse")
    bags = load_folder(EXAMPLES_DIR / "bags").images[:8]
    trousers = load_folder(EXAMPLES_DIR / "trousers").images[:8]
    for mask in ("random", "public"):
        rows = []
        for images in (bags, trousers):  # the control's mask reads no private data: the same for both
            res = run_method(m, images, m.config_cls(epsilon=1.0, samples=0, max_steps=2, draws=1, groups=32,
                                                     mask=mask, public_pool=16), models)
            assert [e.mechanism for e in res.events] == ["dpsgd_poisson_gaussian"]
            ledger = PrivacyLedger()
            ledger.record(res.events[0])
            assert res.report["epsilon_spent"] == pytest.approx(ledger.total(delta=1e-5)[0])
            assert res.report["epsilon_spent"] <= 1.0
            assert res.events[0].epsilon == pytest.approx(res.report["epsilon_spent"])
            assert res.report["epsilon_spent"] > 0.99
            rows.append({k: v.tolist() for k, v in res.adapter.items() if k.endswith(".rows")})
        assert rows[0] == rows[1]
    picked = {}
    for name in ("bags", "trousers"):
        images = load_folder(EXAMPLES_DIR / name).images[:8]
        res = run_method(m, images, m.config_cls(epsilon=math.inf, samples=0, max_steps=1, draws=2, groups=32), models)
        assert res.events[0].mechanism == "gaussian_row_scores" and not res.events[0].private
        picked[name] = {k for k in res.adapter if k.endswith(".rows")}, res.report["groups_per_block"]
    assert picked["bags"] != picked["trousers"]


@needs_models
def test_an_images_score_does_not_depend_on_the_rest_of_its_batch():
    """The selection's per-example claim: two batches that share only image 0, the same draws: image 0's
    unit-norm score vector is the same (no cross-sample layer, no batch statistics)."""
    from dphyper.config import EXAMPLES_DIR
    from dphyper.data import load_folder
    from dphyper.methods.sparse import example_scores

    bags = load_folder(EXAMPLES_DIR / "bags").images[:8]
    trousers = load_folder(EXAMPLES_DIR / "trousers").images[:8]
    other = torch.cat([bags[:1], trousers[1:]])
    cpu = torch.device("cpu")
    sa = example_scores(bags, draws=1, device=cpu, generator=torch.Generator().manual_seed(3))
    sb = example_scores(other, draws=1, device=cpu, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sa[0], sb[0])  # bit for bit: one image per pass (issue 37; batches of 8 differed by ~5e-6)
    assert not torch.allclose(unit_rows(sa)[1], unit_rows(sb)[1], atol=1e-3)
    # Adding an image (at the end: the others keep their draws) changes no other image's score, in any bit.
    sc = example_scores(bags[:5], draws=2, device=cpu, generator=torch.Generator().manual_seed(4))
    sd = example_scores(bags[:6], draws=2, device=cpu, generator=torch.Generator().manual_seed(4))
    assert torch.equal(sc, sd[:5])


def test_the_app_plans_both_phases_before_a_run():
    """The plan line under the ε slider states the selection's and DP-SGD's noise the run will use."""
    from dphyper.app import methods_plan
    from dphyper.dpsgd import schedule
    from dphyper.methods.sparse import resolve

    text = methods_plan({"n": 100}, 0.0, False, 1e-5, 0)
    d = resolve(SparseConfig(), 100)
    q, _, steps = schedule(100, d)
    s1, _ = calibrate(1.0, 1e-5, d.split, q, steps)
    assert f"σ = {s1:.1f}" in text and f"{steps} DP-SGD steps" in text and "PLD accountant" in text
    # Without privacy the plan says no noise (the run then selects on the exact scores), not a σ.
    text = methods_plan({"n": 100}, 0.0, True, 1e-5, 0)
    line = next(t for t in text.split("\n") if t.strip().startswith("DP sparse plan"))
    assert "exact scores" in line and "no noise (ε = ∞)" in line and "σ =" not in line
