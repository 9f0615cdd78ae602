"""bench --suite sampling: paired cells, resumable, and the pick rule."""

import json

import pytest

from dphyper.bench import sampling_suite as sb
from dphyper.config import BASE_UNET_DIR

needs_base = pytest.mark.skipif(not (BASE_UNET_DIR / "config.json").exists(), reason="no shipped base UNet")


def _tiny_set():
    from dphyper.data import load_fashion_mnist

    x, y = load_fashion_mnist("test")
    coats = x[y == 4]
    return {"private": coats[:40], "reference": coats[40:100], "info": {"name": "tiny-coats"}}


@needs_base
def test_cells_are_paired_stored_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(sb, "PATH", tmp_path / "sampling.json")
    monkeypatch.setattr(sb, "CACHE", tmp_path / "cache")
    kw = dict(adapters={"tiny-coats": ("base", "hypernet")}, settings=("ddim-25", "dpm-4"), samples=16,
              datasets={"tiny-coats": _tiny_set}, resamples=20, log=lambda *_: None)
    res = sb.run_quality(**kw)
    assert set(res["cells"]) == {f"tiny-coats|{m}|{s}" for m in ("base", "hypernet") for s in ("ddim-25", "dpm-4")}
    assert set(res["pairs"]) == {"tiny-coats|base|dpm-4", "tiny-coats|hypernet|dpm-4"}
    for p in res["pairs"].values():
        assert p["against"] == "ddim-25" and p["fid"]["low"] <= p["fid"]["diff"] <= p["fid"]["high"]
        assert p["fid"]["verdict"] in ("win", "tie", "loss")
    # The hypernetwork's adapter moves the samples: its cell differs from the base model's.
    assert res["cells"]["tiny-coats|hypernet|ddim-25"]["fid"] != res["cells"]["tiny-coats|base|ddim-25"]["fid"]
    stored = json.loads(sb.PATH.read_text())
    assert stored == json.loads(json.dumps(res, sort_keys=True))

    # A rerun samples nothing and trains nothing: every cell, pair and adapter comes from the store.
    import dphyper.diffusion as diffusion

    monkeypatch.setattr(diffusion, "sample", lambda *a, **k: pytest.fail("a stored cell was sampled again"))
    monkeypatch.setattr(sb, "_adapter_fn", lambda *a, **k: pytest.fail("an adapter was made again"))
    again = sb.run_quality(**kw)
    assert again == res


def test_the_pick_is_the_fewest_steps_without_a_loss(monkeypatch):
    monkeypatch.setattr(sb, "ADAPTERS", {"s": ("base", "hypernet")})

    def pair(fid, kid="tie"):
        return {"fid": {"verdict": fid}, "kid": {"verdict": kid}}

    res = {"pairs": {"s|base|dpm-8": pair("tie"), "s|hypernet|dpm-8": pair("loss"),
                     "s|base|dpm-10": pair("tie"), "s|hypernet|dpm-10": pair("win"),
                     "s|base|unipc-10": pair("tie"), "s|hypernet|unipc-10": pair("tie"),
                     "s|base|dpm-15": pair("tie"), "s|hypernet|dpm-15": pair("tie", "loss")}}
    assert sb.cheapest_tie(res) == "dpm-10"  # 8 loses once; 10 ties (dpm before unipc at equal steps)
    res["pairs"]["s|hypernet|dpm-10"] = pair("loss")
    assert sb.cheapest_tie(res) == "unipc-10"
    assert sb.cheapest_tie({"pairs": {}}) == "ddim-25"  # nothing measured: keep what every cell used


def test_a_setting_is_checked():
    assert sb.parse("unipc-8") == ("unipc", 8)
    for bad in ("euler-10", "dpm", "dpm-0", "dpm-x"):
        with pytest.raises(ValueError, match="SAMPLER-STEPS"):
            sb.parse(bad)


def test_a_measured_speed_decides_between_ties(monkeypatch):
    monkeypatch.setattr(sb, "ADAPTERS", {"s": ("base",)})
    tie = {"fid": {"verdict": "tie"}, "kid": {"verdict": "tie"}}
    res = {"pairs": {"s|base|dpm-10": tie, "s|base|ddim-25-bf16": tie},
           "speed": {"settings": {"dpm-10": 10.0, "ddim-25-bf16": 12.0}}}
    assert sb.cheapest_tie(res) == "ddim-25-bf16"
    assert sb.options("ddim-25-bf16") == {"sampler": "ddim", "steps": 25, "bf16": True}
    assert sb.options("unipc-8") == {"sampler": "unipc", "steps": 8, "bf16": False}
