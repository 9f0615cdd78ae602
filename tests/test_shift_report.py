"""Issue 41: the shifted sets' cells read back (crossovers, the README sentence, a run's note when outside)."""

from __future__ import annotations

import re

import pytest
import torch

from dphyper import shift_report
from dphyper.readme_table import README

LABELS = {"hyp": "Hypernetwork", "pe": "Private Evolution", "sgd": "DP-SGD"}


def _curv() -> dict:
    def m(eps, fid, half=None, runs=None):
        out = {"epsilon": eps, "fid": fid, "agreement": [0.5] * len(eps), "seconds_to_lora": [1.0] * len(eps),
               "runs": runs or [1] * len(eps)}
        if half:
            out["fid_half"] = half
        return out

    glyph_mean, rot_mean = [1.0, 0.0], [0.0, 1.0]
    return {"sets": {
        "shift-glyphs-100": {"info": {"n": 100}, "release_mean": glyph_mean, "methods": {
            "base": {"epsilon": [], "fid": [], "agreement": [], "seconds_to_lora": [], "runs": [],
                     "flat": {"fid": 250.0, "agreement": 0.1, "seconds_to_lora": 0.0}},
            "hyp": m([1.0, 8.0], [200.0, 180.0], [10.0, 10.0], [3, 3]),
            "pe": m([1.0, 8.0], [150.0, 175.0], [20.0, 30.0], [3, 3]),
            "sgd": m([8.0], [120.0])}},
        "shift-rot90-100": {"info": {"n": 100}, "release_mean": rot_mean, "methods": {
            "hyp": m([1.0, 8.0], [70.0, 90.0]),
            "pe": m([1.0, 8.0], [160.0, 110.0])}},
        "shift-rot90-1000": {"info": {"n": 1000}, "release_mean": glyph_mean, "methods": {
            "hyp": m([8.0], [60.0]), "sgd": m([8.0], [40.0])}},
    }}


def test_crossovers_compare_means_and_call_apart_only_with_separated_intervals():
    rows = {(r["set"], r["epsilon"]): r for r in shift_report.crossovers(_curv(), "hyp")}
    g1 = rows[("shift-glyphs-100", 1.0)]
    assert [b["method"] for b in g1["below"]] == ["pe"]
    assert g1["below"][0]["apart"]  # 150 + 20 < 200 - 10
    g8 = rows[("shift-glyphs-100", 8.0)]
    # sorted by FID; DP-SGD has one run (no interval): below by its mean, never 'apart'; PE's intervals overlap
    assert [(b["method"], b["apart"]) for b in g8["below"]] == [("sgd", False), ("pe", False)]
    assert rows[("shift-rot90-100", 1.0)]["below"] == []  # the flagship measured best there
    assert ("shift-rot90-100", 64.0) not in rows  # no flagship cell, no row
    # The base model competes too: below the flagship only where its one cell is lower.
    c = _curv()
    c["sets"]["shift-glyphs-100"]["methods"]["base"]["flat"]["fid"] = 100.0
    g1 = next(r for r in shift_report.crossovers(c, "hyp") if r["set"] == "shift-glyphs-100" and r["epsilon"] == 1)
    assert g1["below"][0]["method"] == "base"


def test_summary_line_counts_cells_per_method():
    line = shift_report.summary_line(_curv(), LABELS, "hyp")
    assert "3 shifted sets" in line and "(5 cells)" in line
    assert "DP-SGD in 2" in line and "Private Evolution in 2" in line
    assert shift_report.summary_line({"sets": {}}, LABELS, "hyp").startswith("The shifted sets have no")


def test_lowest_table_names_the_lowest_method_per_set_and_epsilon():
    table = shift_report.lowest_table(_curv(), LABELS, "hyp").splitlines()
    assert table[0] == "| set (shifted share, n) | ε = 1 | ε = 8 |"
    rows = {r.split(" |")[0].lstrip("| "): r for r in table[2:]}
    # glyphs: PE at eps 1 with separated intervals; DP-SGD's single run at eps 8, a lower mean only
    assert "**Private Evolution** 150 vs 200 (apart)" in rows["shift-glyphs-100 (100 %, 100)"]
    assert "**DP-SGD** 120 vs 180 |" in rows["shift-glyphs-100 (100 %, 100)"]
    assert rows["shift-rot90-100 (100 %, 100)"].startswith("| shift-rot90-100 (100 %, 100) | hypernetwork 70 |")
    assert list(rows) == ["shift-glyphs-100 (100 %, 100)", "shift-rot90-100 (100 %, 100)",
                          "shift-rot90-1000 (100 %, 1000)"]  # by kind, then n
    block = shift_report.readme_block(_curv(), LABELS, "hyp")  # no verdicts stored: the table ends it
    assert block.startswith("Lowest FID per set and ε") and block.endswith(table[-1])
    assert shift_report.readme_block({"sets": {}}, LABELS, "hyp").startswith("The shifted sets have no")


def test_reach_line_names_a_within_set_where_doing_nothing_measured_better():
    c = _curv()
    c["sets"]["shift-glyphs-100"]["reach"] = {"outside": 2, "within": 1}
    c["sets"]["shift-rot90-100"]["reach"] = {"within": 3}
    assert shift_report.reach_line(c, "hyp") == ""  # the turned set has no base cell below the flagship: no miss
    c["sets"]["shift-rot90-100"]["methods"]["base"] = {"epsilon": [], "fid": [], "flat": {"fid": 50.0}}
    line = shift_report.reach_line(c, "hyp")  # 50 is below 70 and 90: at every eps
    assert line.startswith("On shift-rot90-100 the reach check said 'within'")
    c["sets"]["shift-rot90-100"]["reach"] = {"within": 1, "cannot tell": 2}  # not most runs: no claim
    assert shift_report.reach_line(c, "hyp") == ""
    c["sets"]["shift-rot90-100"]["reach"] = {"within": 3}
    assert shift_report.readme_block(c, LABELS, "hyp").endswith(line)


def test_advice_picks_the_nearest_set_by_released_count_and_mean_then_the_nearest_epsilon():
    c = _curv()
    # n ~ 100, mean near the glyphs' -> glyphs; eps 6 -> the measured 8
    text = shift_report.advice(torch.tensor([0.9, 0.1]), 97.0, 6.0, LABELS, "hyp", c)
    assert "`shift-glyphs-100`" in text and "ε = 8" in text and "DP-SGD measured lowest: FID 120" in text
    assert "not yet an interval apart" in text
    # the same mean at n ~ 900: the n = 1000 set, whatever the means say
    assert "`shift-rot90-1000`" in shift_report.advice(torch.tensor([0.9, 0.1]), 900.0, 8.0, LABELS, "hyp", c)
    # near the turned set at eps 1: the flagship measured best there
    text = shift_report.advice(torch.tensor([0.0, 1.0]), 120.0, 0.5, LABELS, "hyp", c)
    assert "`shift-rot90-100`" in text and "still measured best" in text
    # at eps 1 near the glyphs: PE, with intervals apart
    assert "(intervals apart)" in shift_report.advice(torch.tensor([1.0, 0.0]), 100.0, 1.0, LABELS, "hyp", c)
    assert shift_report.advice(torch.zeros(2), 100.0, 1.0, LABELS, "hyp", {"sets": {}}) == ""


def test_readme_sentence_is_generated_from_the_stored_shift_curves():
    curv = shift_report.load()
    if curv is None:
        pytest.skip("no shift curves committed yet")
    from dphyper.methods import FLAGSHIP, METHODS

    block = re.search(r"<!-- shift:start -->\n(.*?)\n<!-- shift:end -->", README.read_text(), re.S)
    assert block, "README lost its generated shift sentence"
    assert block.group(1) == shift_report.readme_block(curv, {k: m.label for k, m in METHODS.items()}, FLAGSHIP)


def test_an_outside_run_gets_the_advice_and_a_within_run_does_not(monkeypatch):
    from dphyper.methods import hypernet as hm

    class Rel:  # what the note reads: the release only
        mean = torch.tensor([1.0, 0.0])
        noisy_count = 100.0

    from dphyper.methods import METHODS

    labels = {k: m.label for k, m in METHODS.items()}
    flag = next(iter(METHODS))
    curv = _curv()
    for s in curv["sets"].values():  # the fixture's methods renamed to registered ones
        s["methods"] = {{"hyp": flag}.get(k, k): v for k, v in s["methods"].items()}
    monkeypatch.setattr(shift_report, "load", lambda path=None: curv)
    text = hm._shift_advice(Rel(), 8.0)
    assert text.startswith(" On the benchmark's nearest shifted set (`shift-glyphs-100`")
    assert labels[flag].lower() in text
    monkeypatch.setattr(shift_report, "load", lambda path=None: None)
    assert hm._shift_advice(Rel(), 8.0) == ""
