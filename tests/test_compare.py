"""The privacy-utility benchmark: set construction, metrics, plumbing on a tiny grid."""

import json
import math

import numpy as np
import pytest
import torch

from dphyper.bench.targets import step_cost, targets
from dphyper.compare import BENCH_SETS, BenchSet, CompareSettings, build_set, class_agreement, run_compare, summarise
from dphyper.plots import curves, plot_html, plot_png

from .conftest import needs_fmnist


def test_class_agreement_is_one_minus_total_variation():
    ref = torch.tensor([0.5, 0.5] + [0.0] * 8)
    assert class_agreement(torch.tensor([0, 1, 0, 1]), ref) == pytest.approx(1.0)
    assert class_agreement(torch.tensor([0, 0, 0, 0]), ref) == pytest.approx(0.5)
    assert class_agreement(torch.tensor([2, 3, 4, 5]), ref) == pytest.approx(0.0)
    uniform = torch.full((10,), 0.1)
    assert class_agreement(torch.arange(10), uniform) == pytest.approx(1.0)


@needs_fmnist
@pytest.mark.parametrize("spec", [BenchSet("t-sneakers", "single-class", 100, (7,)),
                                  BenchSet("t-bags", "single-class", 1000, (8,)),
                                  BenchSet("t-mixed", "mixed", 100, tuple(range(10)))])
def test_sets_are_disjoint_from_their_reference_and_of_the_same_definition(tmp_path, spec):
    from dphyper.data import load_fashion_mnist_uint8

    d = build_set(spec, tmp_path)
    assert len(d["private"]) == spec.n
    assert d["reference_hist"].sum().item() == pytest.approx(1.0)
    # Reference classes are exactly the set's classes.
    assert set(torch.nonzero(d["reference_hist"]).flatten().tolist()) == set(spec.classes)
    images, _ = load_fashion_mnist_uint8("test")
    priv = {p.numpy().tobytes() for p in ((d["private"] + 1) * 127.5).round().to(torch.uint8)}
    ref = {p.numpy().tobytes() for p in ((d["reference"] + 1) * 127.5).round().to(torch.uint8)}
    assert not priv & ref, "a private image leaked into its own reference"
    if spec.n == 1000:  # all 1,000 test images of one class are private: the reference is public
        assert d["info"]["reference_from"] == "train"
    # Deterministic: the same definition gives the same set.
    assert torch.equal(build_set(spec, tmp_path)["private"], d["private"])


@pytest.mark.slow  # 100 s on 2 cores; the grid, cache and sweep logic have fast tests below
@needs_fmnist
def test_tiny_benchmark_grid_end_to_end(tmp_path):
    """One set, one epsilon, few samples: every method scored, summary, targets, plots, curves."""
    from dphyper.methods import METHODS

    tiny = {"max_steps": 2}
    st = CompareSettings(sets=("sneakers-100",), epsilons=(1.0,), samples=8, steps=2, out=tmp_path,
                         overrides={"dpsgd": tiny, "pda-dpmd": tiny,
                                    "nonprivate": {"max_steps": 4, "eval_every": 2, "heldout": 32}})
    res = run_compare(st, log=lambda m: None)
    cells = res["cells"].values()
    # Every registered method, the base model and the converged non-private floor.
    assert {c["method"] for c in cells} == {"base", "nonprivate", *METHODS}
    floor = next(c for c in cells if c["method"] == "nonprivate")
    assert floor["steps"] == 4 and floor["stopped"] == "max_steps" and len(floor["loss_curve"]) == 3
    assert floor["best_loss"] <= floor["base_loss"]  # the best weights are kept (step 0 = the base model)
    for c in cells:
        assert c["samples"] == 8 and c["n_reference"] > 500
        assert math.isfinite(c["fid"]) and c["fid"] > 0
        assert 0.0 <= c["agreement"] <= 1.0
    dp = next(c for c in cells if c["method"] == "dpsgd")
    assert dp["steps"] == 2 and dp["epsilon_spent"] <= 1.0 + 1e-6 and dp["noise_multiplier"] > 0
    hyp = next(c for c in cells if c["method"] == "hypernet")  # the reach check's verdict is kept (issue 41)
    assert hyp["reach"]["verdict"] in ("within", "outside", "cannot tell")
    # The stored results resume: a rerun trains nothing new.
    again = run_compare(st, log=lambda m: pytest.fail(f"recomputed {m}"))
    assert again["cells"].keys() == res["cells"].keys()
    # Cells of another hypernetwork are stale: left out of the summary, then recomputed.
    stored = json.loads((tmp_path / "results.json").read_text())
    for c in stored["cells"].values():
        if c["method"] == "hypernet":
            c["method_id"] = "an-older-H"  # made by another H
    (tmp_path / "results.json").write_text(json.dumps(stored))
    assert "hypernet" not in summarise(stored, st.sets, 8, 2)["sneakers-100"]
    redone: list[str] = []
    res = run_compare(st, log=redone.append)
    assert [m.split("|")[1] for m in redone] == ["hypernet", "hypernet"]  # epsilon 1 and inf, nothing else
    # Another override (another setting of a method) is another cell: only that method reruns.
    redone.clear()
    res = run_compare(CompareSettings(**{**st.__dict__, "overrides": {**st.overrides, "pda-dpmd": {"max_steps": 3}}}),
                      log=redone.append)
    assert [m.split("|")[1] for m in redone] == ["pda-dpmd"]
    summ = summarise(res, st.sets, 8, 2)
    assert set(summ["sneakers-100"]) == {"base", "nonprivate", *METHODS}
    tg = targets(summ, res["sets"], (1.0,))
    (row,) = tg["F1"]
    assert row["ratio"] == pytest.approx(summ["sneakers-100"]["hypernet"]["1.0"]["fid"] /
                                         summ["sneakers-100"]["dpsgd"]["1.0"]["fid"])
    assert step_cost(res)[0]["ratio"] > 0
    curv = curves(summ, res["sets"], {"test": True})
    json.dumps(curv)
    assert curv["sets"]["sneakers-100"]["methods"]["hypernet"]["epsilon"] == [1.0]
    assert "flat" in curv["sets"]["sneakers-100"]["methods"]["base"]
    plot_html(curv, tmp_path / "c.html")
    plot_png(curv, tmp_path / "c.png")
    assert (tmp_path / "c.html").stat().st_size > 10_000
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / "c.png")).std() > 0


def test_benchmark_covers_what_issue_4_asks():
    from dphyper.compare import FULL_SETS, QUICK_SETS

    by_name = {s.name: s for s in BENCH_SETS}
    for chosen in (FULL_SETS, QUICK_SETS):
        assert {by_name[n].n for n in chosen} == {100, 1000}
    assert {by_name[n].kind for n in FULL_SETS} == {"single-class", "mixed", "knn", "least-seen"}
    assert all(s.split == "test" for s in BENCH_SETS)


def test_sweep_is_staged_public_and_within_one_compute_cap():
    from dphyper.compare import SWEEP_SETS
    from dphyper.sweep import COMPUTE_CAP, SWEEP_EPSILONS, run_cost, sweep_plan

    assert all(s.split == "train" for s in SWEEP_SETS) and {s.n for s in SWEEP_SETS} == {100, 1000}
    assert len(SWEEP_EPSILONS) >= 2
    for method in ("dpsgd", "pda-dpmd"):
        for n in (100, 1000):
            plan = sweep_plan(method, n, {}, "s")
            assert plan and all(e == SWEEP_EPSILONS[0] for e, _ in plan)  # stage 1 first
            assert {hp["lr"] for _, hp in plan} >= {1e-3, 1e-2, 3e-2}
            assert max(hp["epochs"] for _, hp in plan) >= 100  # long schedules are in the grid
            # Stage 1 done with made-up scores: stage 2 goes around the best, stage 3 re-runs the top 3 at
            # the other epsilon, and nothing exceeds the cap.
            done = {str(i): {"method": method, "set": "s", "epsilon": e, "hp": hp, "fid": 100.0 + i}
                    for i, (e, hp) in enumerate(plan)}
            full = sweep_plan(method, n, done, "s")
            best = plan[0][1]
            assert any(hp == {**best, "batch_size": n} for _, hp in full)  # full batch
            assert sum(e == SWEEP_EPSILONS[1] for e, _ in full) == 3
            assert all(run_cost(hp, n) <= COMPUTE_CAP for _, hp in full)
    # The cap counts public examples too: PDA-DPMD's public batch is part of a run's cost.
    hp = {"epochs": 10.0, "batch_size": 64}
    assert run_cost({**hp, "public_batch_size": 64}, 100) == run_cost(hp, 100) + 20 * 64
    assert run_cost(hp, 1000) == 10 * 1000  # 160 steps of an expected 62.5 images
    # The hypernetwork's one run-time setting (the LoRA's strength), public like every other.
    assert [hp for _, hp in sweep_plan("hypernet", 100, {}, "s")] == [{"lora_scale": a} for a in (0.5, 0.75, 1, 1.5, 2)]


def test_successive_halving_extends_only_rates_within_the_noise_band(tmp_path):
    """Stage 1 with a measured noise band: the short runs first, then the longer runs of the rates whose
    short run is within the band of the best short run; no band, the whole grid."""
    import json

    from dphyper.sweep import SWEEP_EPSILONS, noise_bands, sweep_plan

    for method in ("dpsgd", "pda-dpmd", "sparse"):
        whole = sweep_plan(method, 1000, {}, "s")
        short = min(hp["epochs"] for _, hp in whole)
        first = sweep_plan(method, 1000, {}, "s", band=5.0)
        assert first and all(hp["epochs"] == short for _, hp in first) and len(first) < len(whole)
        rates = sorted(hp["lr"] for _, hp in first)
        # the smallest rate is best (100), the next one 4 worse (inside the band), every larger one 40 worse
        fids = dict(zip(rates, (100.0, 104.0, *[140.0] * (len(rates) - 2))))
        done = {str(i): {"method": method, "set": "s", "epsilon": SWEEP_EPSILONS[0], "hp": hp, "fid": fids[hp["lr"]]}
                for i, (_, hp) in enumerate(first)}
        after = sweep_plan(method, 1000, done, "s", band=5.0)
        longer = {hp["lr"] for e, hp in after if e == SWEEP_EPSILONS[0] and hp["epochs"] > short
                  and set(hp) == set(first[0][1])}
        assert longer == set(rates[:2])
        # without a band every long run is planned
        assert {hp["lr"] for e, hp in sweep_plan(method, 1000, done, "s")
                if e == SWEEP_EPSILONS[0] and hp["epochs"] > short and set(hp) == set(first[0][1])} == set(rates)
    # the band comes from the stored fid-noise measurement: 2 sd per set, both file versions
    (tmp_path / "fid_noise.json").write_text(json.dumps({"set": "a", "sd": 3.0, "fids": []}))
    assert noise_bands(tmp_path) == pytest.approx({"a": 6.0 * 2 ** 0.5})  # 2 sd of a difference of two cells
    (tmp_path / "fid_noise.json").write_text(json.dumps({"sets": {"a": {"sd": 1.5}, "b": {"sd": 2.0}}}))
    assert noise_bands(tmp_path) == pytest.approx({"a": 3.0 * 2 ** 0.5, "b": 4.0 * 2 ** 0.5})
    assert noise_bands(tmp_path / "missing") == {}

@needs_fmnist
def test_sweep_cells_resume(tmp_path, monkeypatch):
    """Every finished cell is stored; a rerun recomputes nothing; max_cells bounds one call."""
    import dphyper.compare as compare
    from dphyper.compare import SWEEP_SETS
    from dphyper.sweep import run_sweep

    calls = []

    def fake_cell(method, eps, data, models, *, samples, steps, seed, overrides):
        calls.append((method, eps, dict(overrides)))
        return {"method": method, "epsilon": eps, "fid": 100 + 100 * overrides["lr"] + overrides["epochs"] / 100,
                "agreement": 0.5, "seconds_to_lora": 1.0}

    monkeypatch.setattr(compare, "run_cell", fake_cell)
    small = SWEEP_SETS[:1]
    run_sweep(("dpsgd",), tmp_path, sets=small, max_cells=2, log=lambda m: None)
    assert len(calls) == 2
    res = run_sweep(("dpsgd",), tmp_path, sets=small, log=lambda m: None)
    first = len(calls)
    assert first == len(res["cells"]) and all(c["cost"] <= res["compute_cap"] for c in res["cells"].values())
    run_sweep(("dpsgd",), tmp_path, sets=small, log=lambda m: pytest.fail(m))
    assert len(calls) == first
    # A stored cell run with other settings or checkpoints (its stamp is not today's) is stale: recomputed.
    path = tmp_path / "sweep.json"
    disk = json.loads(path.read_text())
    key = next(iter(disk["cells"]))
    disk["cells"][key]["stamp"] = "yesterday"
    path.write_text(json.dumps(disk))
    run_sweep(("dpsgd",), tmp_path, sets=small, log=lambda m: None)
    assert len(calls) == first + 1 and calls[-1][2] == disk["cells"][key]["hp"]


def test_sweep_stamp_follows_every_setting_and_checkpoint(monkeypatch):
    """A sweep cell's stamp is the run's full settings plus the method's checkpoints, nothing else."""
    from dphyper.sweep import fresh_sweep_cells, sweep_stamp
    from dphyper.methods.slicing import SlicingConfig

    d = SlicingConfig()
    assert sweep_stamp("slicing", {}) == sweep_stamp("slicing", {"reg": d.reg})  # a default spelled out
    assert sweep_stamp("slicing", {}) != sweep_stamp("slicing", {"reg": d.reg * 2})  # a default changed
    assert sweep_stamp("slicing", {}) != sweep_stamp("slicing", {}, samples=64)
    dpsgd, slicing = sweep_stamp("dpsgd", {"lr": 0.01}), sweep_stamp("slicing", {})
    hypernet = sweep_stamp("hypernet", {})
    import dphyper.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "hypernet_id", lambda: "rebuilt")  # a new H (head) with the same A
    assert sweep_stamp("hypernet", {}) != hypernet and sweep_stamp("slicing", {}) == slicing
    monkeypatch.setattr(checkpoints, "hypernet_a_id", lambda: "rebuilt")  # the shipped A (or base UNet) changed
    assert sweep_stamp("slicing", {}) != slicing and sweep_stamp("dpsgd", {"lr": 0.01}) == dpsgd
    res = {"samples": 128, "steps": 25, "seed": 0,
           "cells": {"a": {"method": "dpsgd", "hp": {"lr": 0.01}, "stamp": dpsgd},
                     "b": {"method": "slicing", "hp": {}, "stamp": slicing},
                     "c": {"method": "dpsgd", "hp": {"lr": 0.01}}}}  # no stamp: unknown provenance
    assert set(fresh_sweep_cells(res)) == {"a"}


def test_comparison_processes_running_at_once_keep_each_others_cells(tmp_path, monkeypatch):
    """A cell another run wrote to the file while this one computed is kept (the driver merges into the file,
    never over it), and a cell of a method this run does not include stays valid (its method id is still in
    the file)."""
    import dphyper.compare as compare
    import dphyper.models as models
    from dphyper.compare import _cell_key, _still_valid, method_id, run_compare

    monkeypatch.setattr(models, "shared_models", lambda: models.PublicModels(torch.device("cpu")))  # nothing loaded
    monkeypatch.setattr(compare, "build_set", lambda spec, out: {"info": {"n": spec.n}})
    path = tmp_path / "results.json"
    foreign = _cell_key("sneakers-100", "slicing", 1.0, 0, 8, 2)

    def fake_cell(method, eps, data, models, *, samples, steps, seed, overrides):
        disk = json.loads(path.read_text()) if path.exists() else {"cells": {}, "sets": {}}
        if foreign not in disk["cells"]:  # the other process lands a cell while this one is computing
            disk["cells"][foreign] = {"method": "slicing", "set": "sneakers-100", "epsilon": 1.0, "fid": 1.0,
                                      "samples": 8, "sampling_steps": 2, "method_id": method_id("slicing")}
            path.write_text(json.dumps(disk))
        return {"method": method, "epsilon": eps, "fid": 2.0, "agreement": 0.5, "samples": samples,
                "sampling_steps": steps, "seconds_cell": 0.0}

    monkeypatch.setattr(compare, "run_cell", fake_cell)
    st = CompareSettings(samples=8, steps=2, sets=("sneakers-100",), epsilons=(1.0,), methods=("qem",), out=tmp_path)
    res = run_compare(st, log=lambda m: None)
    disk = json.loads(path.read_text())
    assert foreign in disk["cells"] and foreign in res["cells"]
    assert _cell_key("sneakers-100", "qem", 1.0, 0, 8, 2) in disk["cells"]
    assert _still_valid(disk["cells"][foreign], disk)


class _TwoSlots:
    """An executor with two cells in flight that finishes them oldest first, in this process (so the tests'
    patched functions run): what a 2-worker pool does, deterministically."""

    slots = 2
    name = "two slots"

    def __init__(self):
        self.started = []

    def start(self, task):
        self.started.append(task.key)
        return task

    def wait_any(self, handles):
        return handles[:1]

    def result(self, task):
        return task.fn(*task.args)

    def close(self):
        pass


def test_the_sweep_driver_keeps_two_cells_in_flight_and_never_runs_one_twice(tmp_path, monkeypatch):
    """Issue 39: one driver, two slots: the plan is re-read after every finished cell, a cell in flight is not
    started again, every finished cell is stored, and a later call resumes from the file."""
    import dphyper.compare as compare
    from dphyper.compare import SWEEP_SETS
    from dphyper.sweep import _sweep_key, fresh_sweep_cells, run_sweep, sweep_plan

    calls = []

    def fake_cell(method, eps, data, models, *, samples, steps, seed, overrides):
        calls.append((eps, dict(overrides)))
        return {"method": method, "epsilon": eps, "fid": 100 + overrides["lr"], "agreement": 0.5,
                "seconds_to_lora": 1.0}

    monkeypatch.setattr(compare, "run_cell", fake_cell)
    monkeypatch.setattr(compare, "build_set", lambda spec, out: {"info": {"n": spec.n}})
    s = SWEEP_SETS[0]
    plan = sweep_plan("dpsgd", s.n, {}, s.name)
    ex = _TwoSlots()
    res = run_sweep(("dpsgd",), tmp_path, sets=(s,), max_cells=3, log=lambda m: None, executor=ex)
    assert [hp for _, hp in calls] == [hp for _, hp in plan[:3]]
    assert len(set(ex.started)) == len(ex.started) == 3
    assert set(fresh_sweep_cells(res)) == {_sweep_key("dpsgd", s.name, e, hp) for e, hp in plan[:3]}
    again = run_sweep(("dpsgd",), tmp_path, sets=(s,), max_cells=1, log=lambda m: None, executor=_TwoSlots())
    assert calls[-1][1] == plan[3][1] and len(fresh_sweep_cells(again)) == 4
    assert not list(tmp_path.glob("*.claims.json")) and not list(tmp_path.glob("*.lock"))


def test_sweep_plan_lists_what_a_worker_would_run_next_and_runs_nothing(tmp_path, monkeypatch):
    """`bench --suite sweep --plan`: the pending cells are exactly the ones the next worker call runs, in
    its order, with their cost and a time estimate from stored cells."""
    import dphyper.compare as compare
    from dphyper.compare import SWEEP_SETS
    from dphyper.sweep import pending_text, run_cost, run_sweep, sweep_pending, sweep_plan

    calls = []

    def fake_cell(method, eps, data, models, *, samples, steps, seed, overrides):
        calls.append((eps, dict(overrides)))
        return {"method": method, "epsilon": eps, "fid": 100 + overrides["lr"], "agreement": 0.5,
                "seconds_to_lora": 0.002 * run_cost(overrides, s.n, method)}

    monkeypatch.setattr(compare, "run_cell", fake_cell)
    monkeypatch.setattr(compare, "build_set", lambda spec, out: {"info": {"n": spec.n}})
    s = SWEEP_SETS[0]
    rows = sweep_pending(tmp_path, ("dpsgd",), (s,))
    plan = sweep_plan("dpsgd", s.n, {}, s.name)
    assert [(r["epsilon"], r["hp"]) for r in rows] == plan and not calls  # nothing computed
    assert all(r["est_seconds"] is None for r in rows)
    assert "no estimate" in pending_text(rows) and f"{len(rows)} cells" in pending_text(rows)
    run_sweep(("dpsgd",), tmp_path, sets=(s,), max_cells=2, log=lambda m: None)
    after = sweep_pending(tmp_path, ("dpsgd",), (s,))
    assert [hp for _, hp in calls] == [rows[0]["hp"], rows[1]["hp"]]
    assert rows[0]["key"] not in {r["key"] for r in after} and rows[1]["key"] not in {r["key"] for r in after}
    run_sweep(("dpsgd",), tmp_path, sets=(s,), max_cells=1, log=lambda m: None)
    assert calls[-1][1] == after[0]["hp"]  # the plan's first pending cell is the one the next call runs
    rest = sweep_pending(tmp_path, ("dpsgd",), (s,))
    import dphyper.sweep as sweep

    timed = any(run_cost(hp, s.n, "dpsgd") >= sweep.ESTIMATE_MIN_COST for _, hp in calls)
    assert all((r["est_seconds"] is not None) == timed for r in rest)  # estimated only from costly cells
    monkeypatch.setattr(sweep, "ESTIMATE_MIN_COST", 0)
    rest = sweep_pending(tmp_path, ("dpsgd",), (s,))
    assert rest and all(r["est_seconds"] == pytest.approx(0.002 * r["cost"]) for r in rest)
    assert "min on one thread here" in pending_text(rest)
    assert pending_text([]).startswith("no sweep cell is pending")


def test_one_default_for_both_regimes_is_closest_to_each_sets_best_on_average():
    from dphyper.sweep import one_default

    def cell(set_name, hp, fid, eps=1.0, method="qem"):
        return {"method": method, "set": set_name, "epsilon": eps, "hp": hp, "fid": fid}

    a, b, c = {"dim": 4}, {"dim": 16}, {"dim": 64}
    cells = dict(enumerate([
        cell("small", a, 300), cell("big", a, 90),    # best at n = 100 by a hair, poor at n = 1,000
        cell("small", b, 303), cell("big", b, 70),    # close to the best on both: the default
        cell("small", c, 390), cell("big", c, 69),
        cell("small", {"dim": 1}, 100),               # run on one set only: not a candidate
        cell("big", a, 1.0, eps=4.0), cell("big", a, 1.0, method="dpsgd"),  # other epsilon, other method
    ]))
    # no setting has every (set, epsilon) yet: the first epsilon decides, each set's best over any settings
    hp, score = one_default(cells, "qem", ("small", "big"), (1.0, 4.0))
    assert hp == b and score == pytest.approx((303 / 100 + 70 / 69) / 2)
    assert one_default(cells, "slicing", ("small", "big")) is None
    # once stage 3 is complete (each set's three best at epsilon = 1 have every (set, epsilon)), every
    # epsilon counts: b overshoots at epsilon = 4 (as a LoRA strength applied by signal share can), so a,
    # steadier, is the default; while one of them still lacks a cell, the first epsilon decides
    d1 = {"dim": 1}
    cells.update(dict(enumerate([cell("small", a, 200, eps=4.0), cell("small", b, 500, eps=4.0),
                                 cell("small", c, 600, eps=4.0), cell("small", d1, 700, eps=4.0),
                                 cell("big", b, 2.0, eps=4.0), cell("big", c, 3.0, eps=4.0),
                                 cell("big", d1, 2000)], start=100)))
    assert one_default(cells, "qem", ("small", "big"), (1.0, 4.0))[0] == b  # d1 lacks big at epsilon = 4
    cells[200] = cell("big", d1, 4.0, eps=4.0)
    hp, score = one_default(cells, "qem", ("small", "big"), (1.0, 4.0))
    assert hp == a and score == pytest.approx((300 / 100 + 90 / 69 + 200 / 200 + 1.0 / 1.0) / 4)


@pytest.mark.parametrize("method", ["qem", "hypernet", "slicing", "dp-merf", "private-evolution"])
def test_shipped_defaults_are_the_public_sweeps_one_default(method):
    """QEM, the hypernetwork and slicing keep n private, so each ships one setting for both regimes: the
    public sweep's ``one_default`` (closest to each public set's best over the sweep's epsilons once stage
    3 is complete), never a choice made on private or test data."""
    from dphyper.compare import SWEEP_SETS
    from dphyper.sweep import fresh_sweep_cells, one_default
    from dphyper.config import REPO_DIR
    from dphyper.methods import get_method

    sweep = json.loads((REPO_DIR / "bench" / "sweep.json").read_text())
    assert all(sweep["sets"][s.name]["split"] == "train" for s in SWEEP_SETS)  # public sets only
    hp, _ = one_default(fresh_sweep_cells(sweep), method)
    d = get_method(method).config_cls(epsilon=1.0)
    assert {k: getattr(d, k) for k in hp} == hp


def test_bench_epsilons_option_runs_a_subset_of_the_grid_in_order():
    """`bench --epsilons 1,4` runs the epsilon = 1 column first; anything off the grid is a clear error."""
    from dphyper.bench.common import _epsilons
    from dphyper.compare import EPSILONS

    assert _epsilons("") == ()  # the whole grid
    assert _epsilons("4, 1") == (4.0, 1.0)
    assert set(_epsilons(",".join(f"{e:g}" for e in EPSILONS))) == set(EPSILONS)
    assert _epsilons("64,1024") == (64.0, 1024.0)  # the seed paper's range, beyond the tables' grid
    for bad in ("3", "inf", "one", "-1", "2048"):
        with pytest.raises(ValueError, match="--epsilons"):
            _epsilons(bad)


def test_retuning_one_size_regime_keeps_the_other_regimes_cells(monkeypatch):
    """A per-size method's cell depends on the tuned row for its set's n only: a new n = 1,000 default makes
    the n = 1,000 cells stale and leaves the n = 100 cells valid (hours of CPU at stake)."""
    from dphyper import dpsgd
    from dphyper.compare import _still_valid, method_id

    def ids():
        return {str(n): method_id("dpsgd", None, n) for n in (100, 1000)}

    res = {"sets": {"small": {"n": 100}, "big": {"n": 1000}}, "method_ids": {"dpsgd": ids()}}
    cells = {s: {"method": "dpsgd", "set": s, "method_id": res["method_ids"]["dpsgd"][str(res["sets"][s]["n"])]}
             for s in res["sets"]}
    assert all(_still_valid(c, res) for c in cells.values())
    monkeypatch.setattr(dpsgd, "TUNED", (dpsgd.TUNED[0], {**dpsgd.TUNED[-1], "lr": 0.5}))
    res["method_ids"]["dpsgd"] = ids()
    assert _still_valid(cells["small"], res) and not _still_valid(cells["big"], res)
    monkeypatch.setattr(dpsgd, "TUNED", ({**dpsgd.TUNED[0], "epochs": 99.0}, dpsgd.TUNED[-1]))
    res["method_ids"]["dpsgd"] = ids()
    assert not _still_valid(cells["small"], res)


def test_qem_and_slicing_cells_depend_on_hs_a_not_on_its_head(tmp_path):
    """The quadratic EM and slicing use H's public A (and the base UNet), not H's head: a checkpoint that
    changes only the head (retrained or averaged, issue 18) leaves their identity, so their cells stay
    valid; a change of A or of the base UNet does not."""
    import torch
    from safetensors.torch import save_file

    from dphyper.compare import _files_digest
    from dphyper.methods import get_method

    base = tmp_path / "base.safetensors"
    save_file({"w": torch.ones(3)}, str(base))
    a = {"lora_a.0": torch.randn(4, 8), "lora_a.1": torch.randn(4, 8)}

    def digest(name, head, a=a, base=base):
        p = tmp_path / name
        save_file({**a, "head.weight": head}, str(p))
        return _files_digest("a", p, base)

    one = digest("h1.safetensors", torch.zeros(2, 2))
    assert digest("h2.safetensors", torch.ones(2, 2)) == one  # another head, the same A
    assert digest("h3.safetensors", torch.zeros(2, 2), a={**a, "lora_a.1": a["lora_a.1"] + 1e-3}) != one
    other_base = tmp_path / "base2.safetensors"
    save_file({"w": torch.zeros(3)}, str(other_base))
    assert digest("h4.safetensors", torch.zeros(2, 2), base=other_base) != one
    for m in ("qem", "slicing"):
        assert "hypernet" not in get_method(m).identity() and "A" in get_method(m).identity()


def test_hypernet_cells_depend_on_the_encoder_too(monkeypatch):
    """H reads phi's embeddings: a new encoder shipped with the same H changes what every release means, so
    the hypernetwork's compare cells and sweep stamps must go stale with it (they once hashed H's file only)."""
    from dphyper import checkpoints
    from dphyper.compare import method_id
    from dphyper.sweep import sweep_stamp

    before = (method_id("hypernet", None, 100), sweep_stamp("hypernet", {"lora_scale": 2.0}))
    monkeypatch.setattr(checkpoints, "encoder_id", lambda: "another-encoder")
    after = (method_id("hypernet", None, 100), sweep_stamp("hypernet", {"lora_scale": 2.0}))
    assert before[0] != after[0] and before[1] != after[1]


def test_every_cell_depends_on_the_base_unet(monkeypatch):
    """Every method adapts and samples from the base UNet: a rebuilt base model makes every stored cell stale,
    the base model's own and the floor's too (base cells were once always valid, and no method id held it)."""
    from dphyper import compare
    from dphyper.compare import _still_valid, method_id
    from dphyper.sweep import sweep_stamp
    from dphyper.methods import METHODS

    names = ("base", "nonprivate", *METHODS)
    before = {m: method_id(m, None, 100) for m in names}
    stamps = {m: sweep_stamp(m, {}) for m in METHODS}
    res = {"sets": {"s": {"n": 100}}, "method_ids": {m: {"100": before[m]} for m in names}}
    base_cell = {"method": "base", "set": "s", "method_id": before["base"]}
    assert _still_valid(base_cell, res)
    monkeypatch.setattr(compare, "base_unet_id", lambda: "another-base-unet")
    after = {m: method_id(m, None, 100) for m in names}
    assert all(after[m] != before[m] for m in names)
    assert all(sweep_stamp(m, {}) != stamps[m] for m in METHODS)
    res["method_ids"] = {m: {"100": after[m]} for m in names}
    assert not _still_valid(base_cell, res)


def test_stage3_of_a_one_default_method_runs_every_sets_best_at_every_epsilon():
    """A method with one default for every set (the hypernetwork, the quadratic EM) is scored over every
    (set, epsilon), so stage 3 runs each set's three best at epsilon = 4 on every set; a per-size method
    (DP-SGD) runs only its own set's three best."""
    from dphyper.compare import SWEEP_SETS
    from dphyper.sweep import SWEEP_EPSILONS, sweep_plan

    small, big = (s.name for s in SWEEP_SETS)
    e1, e4 = SWEEP_EPSILONS[:2]

    def cells(method, grid, order_small, order_big):
        out = {}
        for rank, hp in enumerate(order_small):
            out[f"s{rank}"] = {"method": method, "set": small, "epsilon": e1, "hp": hp, "fid": 100.0 + rank}
        for rank, hp in enumerate(order_big):
            out[f"b{rank}"] = {"method": method, "set": big, "epsilon": e1, "hp": hp, "fid": 50.0 + rank}
        return out

    grid = [{"lora_scale": a} for a in (0.5, 0.75, 1.0, 1.5, 2.0)]
    done = cells("hypernet", grid, grid, grid[::-1])  # opposite rankings on the two sets
    at4 = [hp for e, hp in sweep_plan("hypernet", 100, done, small) if e == e4]
    assert {hp["lora_scale"] for hp in at4} == {0.5, 0.75, 1.0, 2.0, 1.5}  # small's top 3 and big's top 3
    # and at the low epsilon too, where a one-default method's setting must still serve (ONE_DEFAULT_EPSILONS)
    low = [hp for e, hp in sweep_plan("hypernet", 100, done, small) if e == 0.25]
    assert {hp["lora_scale"] for hp in low} == {0.5, 0.75, 1.0, 2.0, 1.5}
    dp = [{"lr": lr, "max_grad_norm": 0.01, "epochs": ep, "batch_size": 64} for lr in (1e-3, 1e-2, 3e-2)
          for ep in (10.0, 100.0)]
    done = cells("dpsgd", dp, dp, dp[::-1])
    at4 = [hp for e, hp in sweep_plan("dpsgd", 100, done, small) if e == e4]
    assert at4 == dp[:3]  # its own set's three best only
    assert not [hp for e, hp in sweep_plan("dpsgd", 100, done, small) if e == 0.25]  # per-size: its own epsilons


def test_a_new_sweep_epsilon_counts_only_once_its_column_is_complete():
    """``one_default`` scores an epsilon only when every top setting has a cell on every set there: adding
    epsilon 0.25 to the plan changes no shipped default until that column is complete (the complete epsilon 4
    column still counts meanwhile), and then it can (a setting that overshoots where the release is mostly
    noise loses, as the quadratic EM without shrinkage did on a test cell: FID 636.7 against 436.7 with
    shrinkage, sneakers-100 at epsilon 0.25)."""
    from dphyper.sweep import one_default

    def cell(s, hp, fid, eps):
        return {"method": "qem", "set": s, "epsilon": eps, "hp": hp, "fid": fid}

    plain, shrunk = {"shrink": False}, {"shrink": True}
    eps = (1.0, 4.0, 0.25)
    cells = dict(enumerate([cell("small", plain, 300, 1.0), cell("small", shrunk, 290, 1.0),
                            cell("big", plain, 70, 1.0), cell("big", shrunk, 72, 1.0)]))
    hp, score = one_default(cells, "qem", ("small", "big"), eps)  # epsilon 1 alone
    assert hp == shrunk and score == pytest.approx((1 + 72 / 70) / 2)
    cells.update({4: cell("small", plain, 220, 4.0), 5: cell("small", shrunk, 250, 4.0),
                  6: cell("big", plain, 70, 4.0), 7: cell("big", shrunk, 71, 4.0)})
    cells.update({10: cell("small", plain, 600, 0.25), 11: cell("small", shrunk, 320, 0.25),
                  12: cell("big", plain, 90, 0.25)})  # the 0.25 column lacks one cell: epsilon 1 and 4 decide
    hp, score = one_default(cells, "qem", ("small", "big"), eps)
    assert hp == plain and score == pytest.approx((300 / 290 + 1 + 1 + 1) / 4)
    cells[13] = cell("big", shrunk, 75, 0.25)
    hp, score = one_default(cells, "qem", ("small", "big"), eps)
    assert hp == shrunk and score == pytest.approx((1 + 72 / 70 + 250 / 220 + 71 / 70 + 1 + 1) / 6)


def test_one_default_flag_matches_the_absence_of_a_per_size_table():
    """A method ships either one default for every size (``one_default``: the sweep picks it over both
    public sets) or a per-size ``tuned`` table; never both, never neither when it has a sweep."""
    from dphyper.methods import METHODS

    for m in METHODS.values():
        if m.sweep:
            assert m.one_default != ("tuned" in m.identity()), m.name
    assert {m.name for m in METHODS.values() if m.one_default} >= {"hypernet", "qem", "slicing"}


def test_a_cell_is_not_stored_from_models_whose_files_changed_on_disk(tmp_path):
    """Cells are stamped with the hashes of the checkpoint files on disk; a process that loaded a file
    before it was replaced must refuse to store a cell (it would credit the new file with the old model)."""
    import os

    import pytest

    from dphyper.compare import _models_are_on_disk
    from dphyper.models import PublicModels

    f = tmp_path / "h.safetensors"
    f.write_bytes(b"old")
    models = PublicModels(torch.device("cpu"))
    assert models._get("h", lambda: "model", f) == "model"
    _models_are_on_disk(models)  # unchanged: fine
    f.write_bytes(b"new!")
    os.utime(f, ns=(1, 1))
    assert models.changed_files() == [str(f)]
    with pytest.raises(RuntimeError, match="changed on disk"):
        _models_are_on_disk(models)


@pytest.mark.parametrize("method", ["qem", "slicing", "sparse"])
def test_a_methods_identity_holds_every_shipped_default(method):
    """A compare cell is reused while its method's identity is unchanged: so the identity must hold every
    config default a run depends on (QEM's ``shrink`` and slicing's ``projection_seed`` were once left out:
    changing them would have kept stale cells)."""
    from dataclasses import fields

    from dphyper.methods import get_method
    from dphyper.methods.base import RUN_FIELDS

    m = get_method(method)
    ident = m.identity()
    per_size = {"epochs", "batch_size", "lr", "max_grad_norm"} if "tuned" in ident else set()
    names = {f.name for f in fields(m.config_cls)} - set(RUN_FIELDS) - per_size
    # Settings added later sit out of the identity only at the value that runs the code that ran before.
    neutral = {k for k, v in m.config_cls.NEUTRAL.items() if getattr(m.config_cls(), k) == v}
    assert set(ident["defaults"]) == names - neutral


def test_bench_sweep_report_only_prints_a_summary_not_the_whole_file(tmp_path):
    """`bench --suite sweep --report-only` rewrites the table and prints a short summary (it once printed the
    whole results file, thousands of lines, after every sweep command)."""
    import subprocess
    import sys

    from dphyper.config import REPO_DIR

    doc = tmp_path / "B.md"
    out = subprocess.run([sys.executable, "-m", "dphyper", "bench", "--suite", "sweep", "--report-only", "--doc", str(doc)],
                         cwd=REPO_DIR, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    stored = json.loads((REPO_DIR / "bench" / "sweep.json").read_text())["cells"]
    assert summary["suite"] == "sweep" and 0 < summary["stored"] <= len(stored) and summary["file"] == "bench/sweep.json"
    assert len(out.stdout.splitlines()) < 20
    assert "Public sweep" in doc.read_text()
    from dphyper.methods import METHODS
    from dphyper.sweep import one_default

    picked = [m.label for m in METHODS.values() if m.one_default and one_default(stored, m.name)]
    assert len(picked) >= 3  # at least hypernet, qem, slicing have a complete sweep
    text = doc.read_text()
    assert text.count("default (one for every set and ε") == len(picked)  # one line per method the rule picks for
    assert all(f"Shipped {label} default (one for every set" in text for label in picked)


def test_a_merge_keeps_other_processes_cells_and_never_restores_a_removed_one(tmp_path):
    """Several benchmark processes share one results file. A merge adds this process's new cell to what the
    file holds now: cells others wrote meanwhile stay, and a cell re-keyed or removed on disk after this
    process read the file does not come back (a long sweep cell once restored 50 re-keyed QEM cells)."""
    from dphyper.compare import _load, _merge_cell, _save

    path = tmp_path / "sweep.json"
    _save(path, {"cells": {"old-key": {"fid": 1.0}, "kept": {"fid": 2.0}}, "sets": {}})
    mine = _load(path)  # a long-running process reads the file ...
    _save(path, {"cells": {"new-key": {"fid": 1.0}, "kept": {"fid": 2.0}, "other": {"fid": 3.0}}, "sets": {}})
    _merge_cell(path, mine, "my-cell", {"fid": 4.0}, None)  # ... and stores its cell after a re-key elsewhere
    assert set(_load(path)["cells"]) == {"new-key", "kept", "other", "my-cell"}


@needs_fmnist
def test_shifted_sets_are_what_their_names_say_and_disjoint_from_their_reference():
    """Issue 41: mix25-rot90-100 holds 25 turned test images and 75 unshifted ones; the reference is built the
    same way from other images; glyph sets draw their private and reference glyphs with different seeds."""
    from dphyper.compare import BENCH_SETS
    from dphyper.data import load_fashion_mnist
    from dphyper.shifted_sets import all_names, parse, set_name

    names = {s.name for s in BENCH_SETS if s.kind == "shifted"}
    assert set(all_names()) == names and "shift-rot90-1000" in names and "mix50-glyphs-100" in names
    assert parse("mix25-rot90-100") == ("rot90", 0.25, 100) and set_name("invert", 1.0, 1000) == "shift-invert-1000"
    with pytest.raises(ValueError):
        parse("mix30-rot90-100")
    x, _ = load_fashion_mnist("test")
    test = {t.numpy().tobytes() for t in x}

    def key(t):
        return t.numpy().tobytes()

    d = build_set(BenchSet("mix25-rot90-100", "shifted", 100), None)
    p = d["private"]
    assert len(p) == 100 and d["info"]["n"] == 100
    assert all(key(torch.rot90(t, k=-1, dims=(1, 2))) in test for t in p[:25])  # turned test images
    assert all(key(t) in test for t in p[25:])  # unshifted
    assert not {key(t) for t in p} & {key(t) for t in d["reference"]}
    ref = d["reference"]
    assert sum(key(torch.rot90(t, k=-1, dims=(1, 2))) in test for t in ref) == round(0.25 * len(ref))
    g = build_set(BenchSet("shift-glyphs-100", "shifted", 100), None)
    assert not {key(t) for t in g["private"]} & {key(t) for t in g["reference"]}
    assert not any(key(t) in test for t in g["private"])
    inv = build_set(BenchSet("shift-invert-100", "shifted", 100), None)["private"]
    assert all(key(-t) in test for t in inv)
    assert torch.equal(build_set(BenchSet("mix25-rot90-100", "shifted", 100), None)["private"], p)  # deterministic
