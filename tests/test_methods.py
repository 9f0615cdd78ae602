"""The one contract, parametrised over the registry: every method behaves the same from outside."""

import dataclasses
import json
import math
import shutil
import threading

import pytest
import torch

from dphyper.config import EXAMPLES_DIR
from dphyper.methods import METHODS, Cancelled, get_method, run_method, write_outputs
from dphyper.privacy import PrivacyLedger

from .test_hypernet import needs_models

# Each method's smallest run comes from the registry (``Method.smallest``): a new method is covered here unedited.
FAST = {name: m.smallest for name, m in METHODS.items()}


def _cfg(name: str, **kw):
    m = get_method(name)
    return m.config_cls(epsilon=kw.pop("epsilon", 1.0), samples=kw.pop("samples", 2), steps=2, seed=5,
                        **{**FAST.get(name, {}), **kw})


@pytest.fixture(scope="module")
def models():
    from dphyper.models import PublicModels

    return PublicModels(torch.device("cpu"))


def test_registry_lists_the_methods_in_order_and_the_cli_knows_them():
    from dphyper.__main__ import build_parser

    assert list(METHODS)[:3] == ["hypernet", "dpsgd", "pda-dpmd"]
    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for name in METHODS:
        assert name in help_text
    with pytest.raises(ValueError, match="unknown method"):
        get_method("nope")


@needs_models
@pytest.mark.parametrize("name", list(METHODS))
def test_contract(name, models, tmp_path):
    from dphyper.data import load_folder
    from dphyper.methods import ADAPTER_FILES, load_adapter_into

    images = load_folder(EXAMPLES_DIR / "bags").images[:24]
    method = get_method(name)
    res = run_method(method, images, _cfg(name), models)
    # Budget: the ledger's total for the run's events is the claim (exact for one release,
    # within the accountant's tolerance for DP-SGD-like methods).
    ledger = PrivacyLedger()
    for e in res.events:
        ledger.record(e)
    eps, delta = ledger.total(delta=1e-5)
    assert eps <= 1.0 + 1e-3 and eps >= (0.999 if method.one_shot else 0.5), eps
    if method.one_shot:  # what the page's "run it again" preview assumes (app/spread.rerun_cost): one Gaussian
        from dphyper.privacy import MECHANISMS, calibrate_gaussian  # release per run, calibrated to the run's ε

        (ev,) = res.events
        assert MECHANISMS[ev.mechanism].exact_gaussian and ev.sample_rate == 1.0 and ev.steps == 1
        assert ev.noise_multiplier == pytest.approx(calibrate_gaussian(epsilon=1.0, delta=1e-5), rel=1e-9)
    # Samples come from the adapter (the one place that samples), reproducibly from the reported seed.
    assert res.samples.shape == (2, 1, 32, 32) and res.report["sampling_seed"] == 5
    assert res.report["method"] == name and res.report["epsilon"] == 1.0
    # The same files for every method, nothing private in them.
    out = write_outputs(res, tmp_path / name)
    files = sorted(p.relative_to(tmp_path / name).as_posix() for p in (tmp_path / name).rglob("*") if p.is_file())
    assert res.adapter_format == method.adapter_format
    adapter_file = ADAPTER_FILES[res.adapter_format]
    assert files == sorted(["grid.png", adapter_file, "report.json", "samples/sample_00000.png",
                            "samples/sample_00001.png"]), files
    text = (tmp_path / name / "report.json").read_text()
    assert json.loads(text) == out
    assert "test_" not in text and "second" not in text and '"n"' not in text
    from dphyper.adapters import FORMATS

    if FORMATS[res.adapter_format].draw is not None:  # an image set (Private Evolution): it loads back, and
        from safetensors.torch import load_file  # every sample is one of its images

        kept = load_file(str(tmp_path / name / adapter_file))["images"]
        assert torch.equal(kept, res.adapter["images"].float())
        assert all(any(torch.equal(s, k) for k in kept) for s in res.samples)
        return
    # The adapter loads back the documented way and changes the model.
    from dphyper.diffusion import load_unet
    unet = load_adapter_into(load_unet(device=torch.device("cpu")), tmp_path / name / adapter_file)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        assert not torch.allclose(unet(x, t).sample, models.unet(x, t).sample, atol=1e-6)


def _numbers(x) -> list[float]:
    """Every number in a JSON-like value (nested), strings' integers included."""
    import re

    if isinstance(x, bool):
        return []
    if isinstance(x, (int, float)):
        return [float(x)]
    if isinstance(x, str):
        return [float(v) for v in re.findall(r"(?<![\d.])\d+(?:\.\d+)?(?![\d.])", x)]
    if isinstance(x, dict):
        return [v for k, val in x.items() for v in _numbers(k) + _numbers(val)]
    if isinstance(x, (list, tuple)):
        return [v for val in x for v in _numbers(val)]
    return []


@needs_models
@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.one_default])
def test_a_method_that_keeps_n_private_shows_neither_n_nor_exact_statistics(name, models, tmp_path):
    """Issue 37: for a method whose n is private (one shipped setting for every size: ``Method.one_default``), the
    exact n and the owner's exact statistics appear nowhere in what is written (report.json) or shown (the app's
    caption); a NoiseCheck in the owner view says its released mean is no less noisy than it claims."""
    from dphyper.app import _caption
    from dphyper.data import load_folder

    n = 37
    images = load_folder(EXAMPLES_DIR / "bags").images[:n]
    method = get_method(name)
    res = run_method(method, images, _cfg(name), models)
    write_outputs(res, tmp_path)
    shown = [json.loads((tmp_path / "report.json").read_text()),
             _caption(method.label, res.report, 1.234, res.adapter_format)]
    numbers = _numbers(shown)
    hits = [v for v in numbers if abs(v - n) < 1e-9 or abs(v - 1 / n) < 1e-9 * (1 / n)]
    assert not hits, f"the exact n = {n} (or 1/n) is in what {name} writes or shows"
    check = res.owner.get("noise_check")
    if any(e.mechanism == "gaussian_sum_count" for e in res.events):  # a sum and count released by one Gaussian
        assert check is not None, "a one-Gaussian-release method gives the owner a NoiseCheck"
    if check is not None:
        from scipy import stats

        exact = check.exact.double().reshape(-1)
        assert not [v for v in numbers if float((exact[:-1] / n - v).abs().min()) < 1e-7], "an exact mean is shown"
        # The claim itself, against an independent calibration: the analytic Gaussian's delta at (eps, s).
        ev = res.events[0]
        s, sens = check.claimed_std / ev.sensitivity, ev.sensitivity
        assert sens == pytest.approx(math.sqrt(2))  # clip 1 and a count coordinate of 1, clipped in code
        a, b = 1 / (2 * s), 1.0 * s
        assert stats.norm.cdf(a - b) - math.exp(1.0) * stats.norm.cdf(-a - b) <= 1e-5 * (1 + 1e-6)
        # The drawn noise, measured: sum((released - exact)^2) / claimed^2 is chi-square with k degrees of freedom
        # when the noise is what is claimed (k = d + 1 coordinates; 1 in 5,000 runs falls outside by chance).
        # A noise 10x smaller (the audit's weak-noise bug) gives about k / 100.
        diff = check.released.double().reshape(-1) - exact
        k = diff.numel()
        stat = float((diff ** 2).sum()) / check.claimed_std ** 2
        assert stats.chi2.ppf(1e-4, k) < stat < stats.chi2.ppf(1 - 1e-4, k), (stat, k)


def test_the_n_check_catches_a_report_that_holds_n():
    """The check above is not vacuous: a count in a report or a caption's words is found."""
    assert 24.0 in _numbers({"count": 24}) and 24.0 in _numbers("from 24 images") and 24.0 in _numbers({"24": "x"})
    assert 24.0 not in _numbers({"noise_multiplier": 3.7306, "x": "240"})


@needs_models
@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if not m.one_shot])
def test_trained_methods_can_be_cancelled(name, models):
    from dphyper.data import load_folder

    images = load_folder(EXAMPLES_DIR / "bags").images[:24]
    cancel = threading.Event()
    steps = []

    def progress(p):
        steps.append(p["step"])
        if p["step"] == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        fields = {f.name for f in dataclasses.fields(get_method(name).config_cls)}
        # a free fit's length, a training's, or (Private Evolution) its rounds
        long = {"fit_steps": 50} if "fit_steps" in fields else {"max_steps": 50} if "max_steps" in fields else \
            {"rounds": 4}
        run_method(get_method(name), images, _cfg(name, **long), models, progress=progress, cancel=cancel)
    assert max(steps) == 2


@needs_models
def test_pda_dpmd_public_gradient_moves_the_lora_and_costs_no_privacy(models):
    """The LoRA moves (noisy private + public gradient); the accounting is DP-SGD's for the same schedule."""
    from dphyper.data import load_folder

    images = load_folder(EXAMPLES_DIR / "bags").images[:24]
    a = run_method(get_method("pda-dpmd"), images, _cfg("pda-dpmd", samples=0), models)
    b = run_method(get_method("dpsgd"), images, _cfg("dpsgd", samples=0), models)
    ea, eb = a.events[0], b.events[0]
    assert (ea.noise_multiplier, ea.sample_rate, ea.steps) == (eb.noise_multiplier, eb.sample_rate, eb.steps)
    assert a.report["epsilon_spent"] == ea.epsilon <= 1.0 + 1e-9
    assert a.report["public_data"].startswith("Fashion-MNIST train")
    ups = [v for k, v in a.adapter.items() if "lora_B" in k]
    assert ups and all(float(v.abs().sum()) > 0 for v in ups)  # B starts at 0: every up-projection moved


def test_public_gradient_stays_out_of_the_private_per_sample_gradients():
    """PDA-DPMD's public pass runs with Opacus' hooks off: the private grad_sample holds exactly the
    private batch's rows, and .grad is not written by the public pass."""
    import warnings

    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import TensorDataset

    from dphyper.dpsgd import make_private, public_gradient

    torch.manual_seed(0)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, _ = make_private(PrivacyEngine(), model, opt, TensorDataset(x, y), batch_size=5,
                                     max_grad_norm=1.0, sigma=1.0, device=torch.device("cpu"))
    params = list(model.parameters())
    public = torch.randn(64, 4)
    g = public_gradient(model, params, public, 16, torch.Generator().manual_seed(0),
                        lambda m, b: ((m(b[:, :3]) - b[:, 3:]) ** 2).mean())
    assert len(g) == len(params) and all(p.grad is None and getattr(p, "grad_sample", None) is None for p in params)
    ((model(x[:5]) - y[:5]) ** 2).sum().backward()
    assert all(p.grad_sample.shape[0] == 5 for p in params)


@needs_models
def test_cli_run_writes_the_common_layout(tmp_path):
    from dphyper.__main__ import main

    private = tmp_path / "private"
    private.mkdir()
    for p in sorted((EXAMPLES_DIR / "bags").glob("*.png"))[:12]:
        shutil.copy(p, private / p.name)
    out = tmp_path / "out"
    assert main(["run", "hypernet", "--images", str(private), "--epsilon", "2", "--samples", "2", "--out",
                 str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["epsilon"] == 2.0
    assert (out / "grid.png").exists() and len(list((out / "samples").glob("*.png"))) == 2
    # `sample` writes the same layout, so `evaluate --samples DIR/samples` never reads the grid as a sample.
    assert main(["sample", "--out", str(tmp_path / "base"), "--samples", "2", "--steps", "2"]) == 0
    assert (tmp_path / "base" / "grid.png").exists() and len(list((tmp_path / "base" / "samples").glob("*"))) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_models
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_end_to_end_on_cuda(name, tmp_path):
    """Issue 17's GPU tests: every registered method's contract on CUDA (finite adapter and samples,
    the same accounting as on the CPU). Run on a GPU machine with `pytest -m gpu`."""
    from dphyper.data import load_folder
    from dphyper.models import PublicModels

    cuda = PublicModels(torch.device("cuda"))
    images = load_folder(EXAMPLES_DIR / "bags").images[:24]
    method = get_method(name)
    res = run_method(method, images, _cfg(name), cuda)
    assert res.samples.shape == (2, 1, 32, 32) and torch.isfinite(res.samples).all()
    assert all(torch.isfinite(v).all() for v in res.adapter.values())
    ledger = PrivacyLedger()
    for e in res.events:
        ledger.record(e)
    assert ledger.total(delta=1e-5)[0] <= 1.0 + 1e-3
    write_outputs(res, tmp_path / name)


def test_pda_dpmd_has_its_own_tuned_table_and_the_plan_follows_it(monkeypatch):
    """PDA-DPMD's settings come from its own sweep; the app's plan says one line while they equal DP-SGD's
    and a line each when they differ."""
    from dphyper.app import methods_plan
    from dphyper.methods import pda_dpmd
    from dphyper.methods.pda_dpmd import PDADPMDConfig, resolve

    assert get_method("pda-dpmd").identity()["tuned"] == [dict(r) for r in pda_dpmd.TUNED]
    assert resolve(PDADPMDConfig(), 100).lr == pda_dpmd.TUNED[0]["lr"]
    assert resolve(PDADPMDConfig(lr=0.5), 100).lr == 0.5  # explicit values win
    text = methods_plan({"n": 100}, 0.0, False, 1e-5, 0)
    assert "DP-SGD and PDA-DPMD plan: 20 steps" in text
    monkeypatch.setattr(pda_dpmd, "TUNED", ({**pda_dpmd.TUNED[0], "epochs": 20.0}, pda_dpmd.TUNED[-1]))
    text = methods_plan({"n": 100}, 0.0, False, 1e-5, 0)
    assert "DP-SGD plan: 20 steps" in text and "PDA-DPMD plan: 40 steps" in text


def test_a_new_method_is_one_registry_entry_everywhere(monkeypatch):
    """Adding a method is its file plus one registry line: a method defined only here, with its own audit
    (a Gaussian count: correct, and a variant with a hundredth of the noise) and plan, reaches the CLI,
    the audit, the app's plan line, audit tab and columns (API name), and the benchmark's plot style,
    with no edit anywhere else."""
    import numpy as np

    from dphyper.__main__ import build_parser
    from dphyper.app import build_demo, methods_plan
    from dphyper.audit import AuditConfig, audit_variants, run_audit
    from dphyper.plots import style
    from dphyper.methods import HYPERNET
    from dphyper.methods.base import BROKEN_VARIANTS, Audit, Method
    from dphyper.privacy import calibrate_gaussian

    def toy_scores(cfg, member):
        sigma = calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta) / (100 if cfg.broken == "tiny-noise" else 1)
        return member + np.random.default_rng(cfg.seed).normal(0.0, sigma, len(member))  # the count (seeded: no flake)

    toy = Method(name="toy", label="Toy", config_cls=HYPERNET.config_cls, train=HYPERNET.train, one_shot=True,
                 noise="once, into a count", audit=Audit(toy_scores, variants=(*BROKEN_VARIANTS, "tiny-noise")),
                 plan=lambda n, eps, delta, steps: f"one count of {n} images.")
    monkeypatch.setitem(METHODS, "toy", toy)
    with pytest.raises(ValueError):  # an audit always runs the shipped mechanism first
        Audit(toy_scores, variants=("tiny-noise",))

    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "toy" in run_help and "Toy: noise once, into a count" in run_help
    assert audit_variants()["toy"][-1] == "tiny-noise"
    assert run_audit(AuditConfig(method="toy", epsilon=1.0, trials=4000))["verdict"] == "consistent"
    assert run_audit(AuditConfig(method="toy", epsilon=1.0, trials=4000, broken="tiny-noise"))["verdict"] == "violated"
    with pytest.raises(ValueError):
        run_audit(AuditConfig(method="hypernet", trials=10, broken="tiny-noise"))  # the toy's own variant only
    assert "Toy plan: one count of 50 images." in methods_plan({"n": 50}, 0.0, False, 1e-5, 0)
    assert style("toy")[0] == "Toy LoRA"
    demo = build_demo()
    apis = {d.api_name for d in demo.fns.values()}
    assert {"run_toy", "run_hypernet", "run_pda_dpmd"} <= apis


def test_the_public_gradient_in_pieces_is_the_whole_batch_gradient():
    """PDA-DPMD's public gradient runs in pieces (memory): the same mean-loss gradient as one pass."""
    import torch

    from dphyper.dpsgd import draw_piece, public_gradient

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    params = list(model.parameters())
    public = torch.randn(200, 4)
    batch = 3 * draw_piece(torch.device("cpu")) + 5  # pieces of unequal size
    loss = lambda m, b: ((m(b[:, :3]) - b[:, 3:]) ** 2).mean()  # noqa: E731
    g = public_gradient(model, params, public, batch, torch.Generator().manual_seed(7), loss)
    idx = torch.randint(0, len(public), (batch,), generator=torch.Generator().manual_seed(7))
    whole = torch.autograd.grad(loss(model, public[idx]), params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g, whole))


def test_the_denoising_backward_in_pieces_is_the_whole_batch_gradient():
    """Slicing's LoRA fit runs the denoising loss in pieces (memory): the same draws, loss and gradient as one pass."""
    import torch

    from dphyper.diffusion import denoising_backward, denoising_loss, make_train_scheduler

    sched = make_train_scheduler()
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    fn = lambda x, t: conv(x) * (1 + t.view(-1, 1, 1, 1) / 1000)  # noqa: E731 - depends on the timestep too
    x0 = torch.randn(11, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    whole = denoising_loss(fn, x0, sched, g1)
    whole.backward()
    ref = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    loss = denoising_backward(fn, x0, sched, g2, piece=3)  # pieces of 3, 3, 3, 2
    assert loss == pytest.approx(whole.item(), rel=1e-6)
    assert all(torch.allclose(p.grad, r, atol=1e-6) for p, r in zip(conv.parameters(), ref))
    assert torch.equal(g1.get_state(), g2.get_state())  # the generator moved the same way
