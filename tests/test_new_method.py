"""Issue 33: a new method is its own file plus one registry line. A training method defined only here, with a
step budget, a free re-fit, an adapter format of its own and a privacy mechanism of its own, reaches the CLI,
the app (button, plan line, caption, re-fit, downloads that load back), the benchmark, the audit and the
ledger, with no edit anywhere else (everything it needs is registered inside this test)."""

from __future__ import annotations

import dataclasses
import math
import secrets
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from .test_hypernet import needs_models

SQRT2 = math.sqrt(2.0)


def _toy_parts():
    """The toy: one Gaussian release of (sum of per-image mean brightness, count), then a "training" of k steps
    that moves one bias of the UNet's output towards the released mean brightness, saved as its own format."""
    from safetensors.torch import load_file, save_file

    from dphyper.adapters import AdapterFormat
    from dphyper.methods.base import BROKEN_VARIANTS, Audit, Method, MethodResult, StepsBudget
    from dphyper.privacy import PrivacyEvent, calibrate_gaussian, private_generator
    from dphyper.run_config import PrivateRunConfig

    mechanism = "toy_brightness_count"

    @dataclasses.dataclass
    class ToyConfig(PrivateRunConfig):
        out: Path = dataclasses.field(default=Path("out-toy"), metadata={"help": "output folder of the toy"})
        max_steps: int = dataclasses.field(default=4, metadata={"help": "steps of the toy's fit (its budget)"})
        fit_seed: int | None = dataclasses.field(default=None, metadata={"help": "seed of the toy's fit (None = drawn)"})

    def bias_name(unet) -> str:
        return next(n for n, _ in unet.named_parameters() if n.endswith("conv_out.bias"))

    def params(unet, t):
        name = bias_name(unet)
        return {name: unet.get_parameter(name) + t["toy.bias"].to(unet.get_parameter(name))}

    def save(t, path, metadata=None):
        save_file({"toy.bias": t["toy.bias"].contiguous()}, str(path), metadata=metadata)

    def load_into(unet, path):
        t = load_file(str(path))
        with torch.no_grad():
            unet.get_parameter(bias_name(unet)).add_(t["toy.bias"])
        return unet

    fmt = AdapterFormat("toy_bias.safetensors", save, load_into, params, lambda keys: keys == ["toy.bias"],
                        "a toy bias", "(toy bias)")

    def release(images, cfg, broken="none", generator=None):
        x = images.float().mean(dim=(1, 2, 3)).clamp(-1, 1).double()
        if broken == "no-clip":
            x = images.float().mean(dim=(1, 2, 3)).double() * 10  # brightness scaled past the bound: unclipped
        s = 0.0 if math.isinf(cfg.epsilon) else calibrate_gaussian(epsilon=cfg.epsilon, delta=cfg.delta)
        if broken == "weak-noise":
            s /= 10
        g = generator if generator is not None else private_generator()
        noisy = torch.stack([x.sum(), torch.tensor(float(len(x)), dtype=torch.float64)])
        noisy = noisy + torch.randn(2, generator=g, dtype=torch.float64) * s * SQRT2
        ev = PrivacyEvent(mechanism=mechanism, epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=s,
                          sensitivity=SQRT2)
        return SimpleNamespace(sum=float(noisy[0]), count=float(noisy[1]), event=ev)  # a kept release has .event

    def fit(rel, cfg, progress=None, cancel=None) -> MethodResult:
        seed = cfg.fit_seed if cfg.fit_seed is not None else secrets.randbits(31)
        target = rel.sum / max(rel.count, 1.0)
        b = torch.zeros(1)
        for step in range(1, cfg.max_steps + 1):
            if cancel is not None and cancel.is_set():
                from dphyper.errors import Cancelled

                raise Cancelled("toy cancelled")
            b = b + 0.5 * (target - b) + 1e-3 * torch.randn(1, generator=torch.Generator().manual_seed(seed + step))
            if progress is not None:
                progress({"stage": "train", "step": step, "total": cfg.max_steps, "epsilon_spent": cfg.epsilon,
                          "eta_seconds": 0.0})
        report = {"epsilon": cfg.epsilon if math.isfinite(cfg.epsilon) else "inf", "delta": cfg.delta,
                  "steps": cfg.max_steps, "fit_seed": seed, "noise_multiplier": rel.event.noise_multiplier}
        return MethodResult(adapter={"toy.bias": b.clamp(-0.5, 0.5)}, report=report, events=(),
                            owner={"release": rel}, adapter_format="toy-bias")

    def train(images, cfg, models, progress=None, cancel=None) -> MethodResult:
        rel = release(images, cfg)
        result = fit(rel, cfg, progress, cancel)
        result.events = (rel.event,)
        return result

    def refit(rel, cfg, models, progress=None, cancel=None) -> MethodResult:
        return fit(rel, cfg, progress, cancel)

    def scores(cfg, member):
        rng = np.random.default_rng(cfg.seed)
        out = np.empty(len(member))
        for i, m in enumerate(member):  # the canary: one bright image beside 9 dark ones
            images = torch.full((10 if m else 9, 1, 2, 2), -1.0)
            if m:
                images[0] = 1.0
            rel = release(images, cfg, cfg.broken, torch.Generator().manual_seed(int(rng.integers(2**62))))
            out[i] = (rel.sum + 9.0) + (rel.count - 9.0)  # 0 without the canary, 2 with it (plus noise)
        return out

    toy = Method(name="toy", label="Toy", config_cls=ToyConfig, train=train, one_shot=False,
                 noise="once, into a brightness sum and a count (then a free fit)", refit=refit,
                 adapter_format="toy-bias", budget=StepsBudget("max_steps"), budget_unit="steps of the toy fit",
                 refit_fresh=("fit_seed",), audit=Audit(scores, variants=BROKEN_VARIANTS, trials=4000),
                 plan=lambda n, eps, delta, steps: f"one brightness release, then {steps or 4} fit steps.",
                 plot_style=("Toy bias", "#123456"), smallest={"max_steps": 2},
                 relation="A toy: one noisy number, like the hypernetwork's one release, far smaller.")
    return toy, fmt, mechanism


@pytest.fixture
def toy(monkeypatch):
    import dphyper.app  # noqa: F401  (every surface imported first: nothing may have copied the tables at import)
    import dphyper.audit  # noqa: F401
    import dphyper.compare  # noqa: F401
    from dphyper.adapters import FORMATS
    from dphyper.methods import METHODS
    from dphyper.privacy import MECHANISMS, register_mechanism

    method, fmt, mechanism = _toy_parts()
    monkeypatch.setitem(METHODS, "toy", method)
    monkeypatch.setitem(FORMATS, "toy-bias", fmt)
    register_mechanism(mechanism, exact_gaussian=True, words=lambda e: "one toy release of brightness")
    yield method
    MECHANISMS.pop(mechanism)


def test_the_shipped_mechanisms_compose_as_before_the_registry():
    """Issue 33's registry replaced a hard-coded list: the same four releases compose exactly as Gaussians, DP-SGD's
    steps by the PLD accountant; a mechanism nobody registered is refused, and a registration cannot flip one."""
    import dphyper.app  # noqa: F401  (what the server imports)
    from dphyper.privacy import MECHANISMS, PrivacyEvent, PrivacyLedger, register_mechanism

    assert {k: m.exact_gaussian for k, m in MECHANISMS.items() if not k.startswith("toy")} == {
        "gaussian_sum_count": True, "gaussian_sliced_rows": True, "gaussian_row_scores": True,
        "gaussian_vote_histograms": True, "dpsgd_poisson_gaussian": False}
    with pytest.raises(ValueError, match="unregistered"):
        PrivacyLedger().record(PrivacyEvent("made_up", 1.0, 1e-5, 1.0, 1.0))
    with pytest.raises(ValueError, match="already registered"):
        register_mechanism("dpsgd_poisson_gaussian", exact_gaussian=True, words=lambda e: "")


def test_the_toy_reaches_the_cli_the_audit_and_the_benchmark_plan(toy):
    from dphyper.__main__ import build_parser
    from dphyper.audit import AuditConfig, run_audit
    from dphyper.compare import method_id
    from dphyper.plots import style

    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "toy" in run_help and "Toy: noise once, into a brightness sum" in run_help
    assert run_audit(AuditConfig(method="toy", epsilon=1.0, trials=4000))["verdict"] == "consistent"
    assert run_audit(AuditConfig(method="toy", epsilon=1.0, trials=4000, broken="weak-noise"))["verdict"] == "violated"
    assert style("toy") == ("Toy bias", "#123456")
    assert method_id("toy") != method_id("toy", {"max_steps": 3})  # a cell's identity follows its settings


def test_the_toy_composes_exactly_and_the_ledger_words_come_from_its_event(toy):
    from dphyper.app.ledger_view import _ledger_method
    from dphyper.privacy import PrivacyLedger

    ev = toy.train(torch.zeros(5, 1, 32, 32), toy.config_cls(epsilon=1.0, max_steps=1), None).events[0]
    ledger = PrivacyLedger()
    ledger.record(ev)
    ledger.record(ev)
    # two Gaussian releases of multiplier s compose exactly to one of s / sqrt(2) (GDP), not by the PLD path
    from dphyper.privacy import analytic_gaussian_epsilon

    want = analytic_gaussian_epsilon(noise_multiplier=ev.noise_multiplier / SQRT2, delta=1e-5)
    assert ledger.total(delta=1e-5)[0] == pytest.approx(want, rel=1e-9)
    assert _ledger_method("toy", ev) == "Toy (one toy release of brightness)"


@needs_models
def test_the_toy_runs_in_the_cli_and_the_app_with_its_refit_and_downloads(toy, tmp_path):
    import gradio as gr
    from PIL import Image

    from dphyper.__main__ import main
    from dphyper.app import build_demo, load_example, methods_plan
    from dphyper.app.runs import refit_runner, training_runner
    from dphyper.diffusion import load_unet
    from dphyper.ledger import LedgerBook
    from dphyper.methods import load_adapter_into

    # CLI: a folder in, the common layout out, with the toy's own adapter file
    folder = tmp_path / "private"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["run", "toy", "--images", str(folder), "--epsilon", "1", "--samples", "2", "--steps", "2",
                 "--max-steps", "3", "--out", str(tmp_path / "cli")]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["grid.png", "report.json", "samples",
                                                                    "toy_bias.safetensors"]
    again = ["run", "toy", "--images", str(folder), "--epsilon", "1", "--samples", "1", "--steps", "2",
             "--out", str(tmp_path / "cli")]
    first = (tmp_path / "cli" / "toy_bias.safetensors").read_bytes()
    assert main(again) != 0 and (tmp_path / "cli" / "toy_bias.safetensors").read_bytes() == first  # refused
    assert main([*again, "--overwrite"]) == 0 and len(list((tmp_path / "cli" / "samples").iterdir())) == 1

    # the app: its button (API name), plan line and slider words come from the registry entry
    demo = build_demo()
    apis = {d.api_name for d in demo.fns.values()}
    assert {"run_toy", "refit_toy"} <= apis
    budget = [b for b in demo.blocks.values() if getattr(b, "label", None) and str(b.label).startswith("Step budget")]
    assert len(budget) == 1 and "Toy: steps of the toy fit" in budget[0].label
    assert "Toy plan: one brightness release, then 5 fit steps." in methods_plan({"n": 6}, 0.0, False, 1e-5, 5)
    data, book, runs = load_example("bags")[0], LedgerBook(), []
    out = None
    for out in training_runner("toy")(data, 0.0, False, 1e-5, 4, 3, book, runs, None, progress=None):
        pass
    gallery, caption, downloads, report, ledger = out[:5]
    assert len(gallery) == 4 and "Toy" in caption and report["steps"] == 3 and report["method"] == "toy"
    assert len(book) == 1 and "Toy (one toy release of brightness)" in ledger
    files = {Path(f).name: f for f in downloads}
    assert set(files) == {"toy_bias.safetensors", "grid.png", "report.json"}
    unet = load_unet(device=torch.device("cpu"))
    before = dict(unet.named_parameters())[next(n for n, _ in unet.named_parameters() if n.endswith("conv_out.bias"))]
    before = before.detach().clone()
    load_adapter_into(unet, Path(files["toy_bias.safetensors"]))  # the download loads back through the contract
    after = next(p for n, p in unet.named_parameters() if n.endswith("conv_out.bias"))
    assert not torch.equal(before, after.detach())

    # its re-fit: new samples and a new fit seed from the kept release, at the page's budget, no ledger row
    again = None
    for again in refit_runner("toy")(data, 4, 2, book, runs, None, progress=None):
        pass
    assert len(again[0]) == 4 and again[3]["steps"] == 2 and "refit" in again[3]
    assert again[3]["noise_multiplier"] == report["noise_multiplier"] and len(book) == 1
    assert again[4] == ledger
    for again in refit_runner("toy")(data, 2, 0, book, runs, None, progress=None):  # budget 0: the toy's default
        pass
    assert again[3]["steps"] == 4 and len(book) == 1
    with pytest.raises(gr.Error, match="first"):  # another session's data has no kept release
        for _ in refit_runner("toy")(load_example("bags")[0], 4, 2, LedgerBook(), [], None, progress=None):
            pass


def test_the_few_method_names_above_the_registry_are_the_registrys():
    """The handful of method names kept outside ``dphyper/methods/`` (each justified where it stands: the CLI's
    top-level aliases for older scripts, the audit's default) name registered methods, the flagship first."""
    from dphyper.__main__ import ALIASES
    from dphyper.audit import AuditConfig
    from dphyper.methods import FLAGSHIP, METHODS

    assert set(ALIASES.values()) <= set(METHODS)
    assert AuditConfig().method == FLAGSHIP


def test_a_refit_config_draws_the_fresh_fields_anew_and_takes_the_budget(toy):
    from dphyper.methods.base import Method, StepsBudget, refit_config

    kept = toy.config_cls(epsilon=1.0, max_steps=3, fit_seed=7, samples=16)
    assert refit_config(toy, kept, 4, 0) == toy.config_cls(epsilon=1.0, max_steps=4, fit_seed=None, samples=4)
    assert refit_config(toy, kept, 2, 9).max_steps == 9
    with pytest.raises(ValueError, match="not both"):
        Method(name="x", label="X", config_cls=toy.config_cls, train=toy.train, one_shot=False, noise="n",
               budget=StepsBudget("fit_seed"), budget_unit="u", refit_fresh=("fit_seed",))
