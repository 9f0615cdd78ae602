"""Issue 35: fresh test sets that nothing has steered, run only after the defaults are frozen."""

import json

import pytest

from dphyper import bench_sets
from dphyper.bench_sets import BENCH_SETS, KNN_SWEEP_SETS, SWEEP_SETS, TEST_SETS


def test_every_set_has_a_role_and_the_test_sets_are_new_draws():
    assert {s.role for s in SWEEP_SETS + KNN_SWEEP_SETS} == {"public"}
    assert all(s.split == "train" for s in SWEEP_SETS + KNN_SWEEP_SETS)
    assert [s.role for s in TEST_SETS] == ["test"] * 4 and all(s.split == "test" for s in TEST_SETS)
    assert {s.kind for s in TEST_SETS} == {"single-class", "least-seen", "knn", "mixed"}
    dev_single = {c for s in BENCH_SETS + SWEEP_SETS if s.kind == "single-class" and s.role != "test" for c in s.classes}
    single = next(s for s in TEST_SETS if s.kind == "single-class")
    pair = next(s for s in TEST_SETS if s.kind == "mixed")
    assert not set(single.classes) & dev_single  # a class no development or public single-class set uses
    assert len(pair.classes) == 2 and single.classes[0] not in pair.classes
    names = [s.name for s in BENCH_SETS]
    assert len(names) == len(set(names))


def test_a_test_set_does_not_run_before_the_freeze(tmp_path, monkeypatch):
    from dphyper.compare import CompareSettings, run_compare

    monkeypatch.setattr(bench_sets, "FREEZE_PATH", tmp_path / "freeze.json")
    with pytest.raises(ValueError, match="only after the defaults are frozen"):
        run_compare(CompareSettings(sets=("test-knn-1000",), methods=("hypernet",), epsilons=(1.0,), out=tmp_path))
    assert not (tmp_path / "results.json").exists()  # refused before anything ran or was written
    bench_sets.check_frozen([s for s in BENCH_SETS if s.role == "development"])  # development sets: no freeze needed
    (tmp_path / "freeze.json").write_text(json.dumps({"commit": "abc"}))
    bench_sets.check_frozen(TEST_SETS)  # after the freeze they may run


def test_the_freeze_is_honoured_or_a_change_is_disclosed():
    """Once ``bench/freeze.json`` exists, every method's identity is the frozen one or a disclosed change names it
    (its test cells are then recomputed: a stored cell is reused only under its own identity)."""
    if not bench_sets.FREEZE_PATH.exists():
        pytest.skip("the defaults are not frozen yet (issue 35: after the public k-NN sweeps)")
    from dphyper.bench.freeze_suite import frozen_ids

    record = json.loads(bench_sets.FREEZE_PATH.read_text())
    disclosed = {c["method"] for c in record.get("changes", []) if c.get("commit") and c.get("why")}
    now = frozen_ids()
    moved = [m for m, ids in record["method_ids"].items() if now.get(m) != ids and m not in disclosed]
    assert not moved, f"defaults changed after the freeze without a disclosed change: {moved}"


def test_freezing_twice_is_refused(tmp_path, monkeypatch):
    from dphyper.bench.common import BenchConfig
    from dphyper.bench.freeze_suite import bench_freeze

    monkeypatch.setattr(bench_sets, "FREEZE_PATH", tmp_path / "freeze.json")
    (tmp_path / "freeze.json").write_text(json.dumps({"commit": "0123456789abcdef"}))
    with pytest.raises(ValueError, match="frozen at 0123456789ab"):
        bench_freeze(BenchConfig(suite="freeze"))
