"""Issue 41, item 4: H's capacity ablated by retraining each size with one recipe and scoring it like the flagship."""

from __future__ import annotations

import json

import pytest
import torch

from dphyper.bench import BenchConfig, run_bench
from dphyper.bench import ablation_suite as ab

TINY = {"limit_images": 64, "sets_per_step": 2, "images_per_set": 2, "n_min": 8, "n_max": 32, "warmup_steps": 1}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(ab, "WORK", tmp_path / "runs")
    monkeypatch.setattr(ab, "RESULTS", tmp_path / "ablation.json")
    monkeypatch.setattr(ab, "VARIANTS", {"ref": {"hidden": 8, "depth": 1, **TINY}, "deep": {"hidden": 8, "depth": 2, **TINY},
                                         "phi16": {"hidden": 8, "embed_dim": 16, **TINY}})
    monkeypatch.setattr(ab, "REFERENCE", "ref")
    monkeypatch.setattr(ab, "ENCODER_RECIPE", {"epochs": 1, "limit_images": 64, "batch_size": 32, "eval_images": 64})
    return tmp_path


def test_each_variant_is_trained_to_the_budget_scored_in_paired_runs_and_reused(tiny):
    cfg = BenchConfig(suite="ablation", sets="sneakers-100", train_steps=2, repeats=2, compare_samples=8, steps=2,
                      doc=tiny / "B.md")
    out = run_bench(cfg)
    assert out["cells"] == 3 * 2 * 2  # variants x epsilons (1, inf) x runs
    res = json.loads((tiny / "ablation.json").read_text())
    assert {v: (i["steps"], i["depth"], i["embed_dim"]) for v, i in res["variants"].items()} == {
        "ref": (2, 1, 64), "deep": (2, 2, 64), "phi16": (2, 1, 16)}
    assert len({i["recipe"] for i in res["variants"].values()}) == 3  # depth and φ's dimension are in the recipe
    # the φ variant trained its own 16-d encoder and H on it, and its cells ran with both
    from dphyper.encoder import load_encoder

    phi = load_encoder(tiny / "runs" / "phi16" / "encoder.safetensors", device=torch.device("cpu"))
    assert phi(torch.zeros(2, 1, 32, 32)).shape == (2, 16)
    assert res["variants"]["phi16"]["encoder"]["embed_dim"] == 16
    # runs pair across variants by their sampling seed; the trained H is the one scored
    assert sorted(c["sampling_seed"] for c in res["cells"].values() if c["variant"] == "deep") == [0, 0, 1, 1]
    from dphyper.hypernet import load_hypernet
    from dphyper.models import shared_models

    assert load_hypernet(shared_models().unet, tiny / "runs" / "deep" / "hypernet.safetensors").depth == 2
    assert load_hypernet(shared_models().unet, tiny / "runs" / "phi16" / "hypernet.safetensors").embed_dim == 16
    text = (tiny / "B.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sneakers-100 | 1 |"))
    assert row.count("(2)") == 3 and any(v in row for v in ("tie", "win", "loss"))  # the paired verdict
    # a second call computes nothing: every cell is stored under the same recipe
    before = (tiny / "ablation.json").read_text()
    run_bench(cfg)
    assert (tiny / "ablation.json").read_text() == before
    with pytest.raises(ValueError, match="development sets"):
        run_bench(BenchConfig(suite="ablation", sets="public-coats-100", train_steps=2, doc=tiny / "B.md"))
