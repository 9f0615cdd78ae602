"""ε from the quality one needs, and ε in plain words (issue 38)."""

import math

from dphyper.quality_target import epsilon_for_quality, plain_epsilon, quality_answer

CURVES = {"settings": {"repeats": 1}, "sets": {"s": {"methods": {
    "a": {"epsilon": [0.25, 1, 4, 8], "agreement": [0.2, 0.75, 0.8, 0.9]},
    "b": {"epsilon": [0.25, 1, 4, 8], "agreement": [0.9, 0.1, 0.75, 0.8]},  # one lucky cell at 0.25
    "c": {"epsilon": [0.25, 1, 4, 8], "agreement": [0.1, 0.2, 0.3, 0.4]},
    "base": {"epsilon": [], "agreement": [], "flat": {"agreement": 0.5}},
}}}}


def test_the_smallest_epsilon_from_which_the_target_holds():
    got = epsilon_for_quality(CURVES, "s", 0.7)
    assert got == {"a": 1, "b": 4, "c": None}  # b's lucky cell below a failing one does not count
    assert epsilon_for_quality(CURVES, "s", 0.05) == {"a": 0.25, "b": 0.25, "c": 0.25}
    text = quality_answer(CURVES, "s", 0.7, {"a": "Alpha"})
    assert "Alpha: ε ≥ **1**" in text and "c: no measured ε reaches it" in text and "base: 0.50 (does not)" in text
    assert "from 0.25 to 8" in text


def test_a_repeated_cell_reaches_the_target_only_with_its_interval():
    curves = {"sets": {"s": {"methods": {
        "a": {"epsilon": [1, 4], "agreement": [0.75, 0.8], "agreement_half": [0.1, 0.02], "runs": [3, 3]},
        "b": {"epsilon": [1, 4], "agreement": [0.75, 0.8], "runs": [1, 1]},
    }}}}
    # a at eps 1: 0.75 - 0.1 < 0.7 -> not yet; at 4: 0.78 >= 0.7. b's single runs count by value.
    assert epsilon_for_quality(curves, "s", 0.7) == {"a": 4, "b": 1}
    text = quality_answer(curves, "s", 0.7, {})
    assert "runs per cell: 1–3" in text and "95 % interval reaches the target" in text


def test_plain_words_follow_epsilon():
    assert "2.72×" in plain_epsilon(1.0, 1e-5) and "7.39×" in plain_epsilon(2.0, 1e-5)
    assert "No privacy" in plain_epsilon(math.inf, 1e-5)
    from dphyper.app import privacy_summary

    assert "2.72× more confident" in privacy_summary(0.0, False, 1e-5, 100)
    assert "1.11× more confident" in privacy_summary(-1.0, False, 1e-5, 100)


def test_large_odds_read_as_whole_numbers():
    from dphyper.quality_target import plain_epsilon

    assert "2,981× more confident" in plain_epsilon(8.0, 1e-5)  # e^8, not "2.98e+03"
    assert "20.1× more confident" in plain_epsilon(3.0, 1e-5)


def test_where_another_method_beats_the_flagship_is_read_from_the_curves():
    """Issue 41: the page says where the hypernetwork loses, measured (not an argument): a method's FID below the
    flagship's at the same ε, with both numbers; nowhere gives no line."""
    from dphyper.quality_target import below_flagship

    curves = {"sets": {"a": {"methods": {
        "hypernet": {"epsilon": [1.0, 8.0], "fid": [70.0, 60.0]},
        "pe": {"epsilon": [1.0, 8.0], "fid": [80.0, 41.4]},
        "dpsgd": {"epsilon": [1.0], "fid": [300.0]},
        "base": {"epsilon": [1.0], "fid": [10.0]}}}}}
    assert below_flagship(curves, {"pe": "PE"}, "hypernet") == ["PE: a at ε 8 (41 vs 60)"]
    curves["sets"]["a"]["methods"]["pe"]["fid"] = [80.0, 90.0]
    assert below_flagship(curves, {}, "hypernet") == []
