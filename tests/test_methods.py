"""The one contract, parametrised over the registry: every method behaves the same from outside."""

import json
import shutil
import threading

import pytest
import torch

from dphyper.config import EXAMPLES_DIR
from dphyper.methods import METHODS, Cancelled, get_method, run_method, write_outputs
from dphyper.privacy import PrivacyLedger

from .test_hypernet import needs_models

FAST = {"dpsgd": {"max_steps": 3}, "pda-dpmd": {"max_steps": 3, "public_batch_size": 8, "public_pool": 64}}


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
    from dphyper.lora import load_lora_into
    from dphyper.data import load_folder

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
    # Samples come from the adapter (the one place that samples), reproducibly from the reported seed.
    assert res.samples.shape == (2, 1, 32, 32) and res.report["sampling_seed"] == 5
    assert res.report["method"] == name and res.report["epsilon"] == 1.0
    # The same files for every method, nothing private in them.
    out = write_outputs(res, tmp_path / name)
    files = sorted(p.relative_to(tmp_path / name).as_posix() for p in (tmp_path / name).rglob("*") if p.is_file())
    assert files == ["grid.png", "lora.safetensors", "report.json", "samples/sample_00000.png",
                     "samples/sample_00001.png"], files
    text = (tmp_path / name / "report.json").read_text()
    assert json.loads(text) == out
    assert "test_" not in text and "second" not in text and '"n"' not in text
    # The adapter loads back the documented way and changes the model.
    from dphyper.diffusion import load_unet
    unet = load_lora_into(load_unet(device=torch.device("cpu")), tmp_path / name / "lora.safetensors")
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        assert not torch.allclose(unet(x, t).sample, models.unet(x, t).sample, atol=1e-6)


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
        run_method(get_method(name), images, _cfg(name, max_steps=50), models, progress=progress, cancel=cancel)
    assert max(steps) == 2


@needs_models
def test_pda_dpmd_public_gradient_moves_the_lora_and_costs_no_privacy(models):
    """With the private weight at 0 from the start, the update still moves (public gradient); the
    accounting is DP-SGD's for the same schedule."""
    from dphyper.data import load_folder

    images = load_folder(EXAMPLES_DIR / "bags").images[:24]
    a = run_method(get_method("pda-dpmd"), images, _cfg("pda-dpmd", samples=0), models)
    b = run_method(get_method("dpsgd"), images, _cfg("dpsgd", samples=0), models)
    ea, eb = a.events[0], b.events[0]
    assert (ea.noise_multiplier, ea.sample_rate, ea.steps) == (eb.noise_multiplier, eb.sample_rate, eb.steps)
    assert a.report["public_data"].startswith("Fashion-MNIST train")


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
