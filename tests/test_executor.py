"""executor.py: cells as tasks on this process, a local pool and local Ray give one result; a killed worker's
cell is re-run; the driver re-plans from results and never starts a cell twice."""

import json

import pytest

from dphyper.executor import LocalPool, RayExecutor, Serial, Task, drive, make_executor

from . import executor_tasks as tasks


def _run(executor, items, limit=0):
    out = {}
    plan = [Task(f"c{i}", tasks.square, (i,)) for i in items]
    started = drive(executor, lambda: (t for t in plan if t.key not in out), lambda t, r: out.__setitem__(t.key, r),
                    limit=limit)
    return out, started


def test_a_local_pool_gives_what_this_process_gives():
    serial, _ = _run(Serial(), range(6))
    pool = LocalPool(2)
    try:
        pooled, started = _run(pool, range(6))
    finally:
        pool.close()
    assert pooled == serial and started == 6
    assert serial["c4"] == {"x": 4, "square": 16}


def test_a_killed_workers_cell_is_run_again_not_lost(tmp_path):
    marker = tmp_path / "died"
    pool = LocalPool(2)
    out = {}
    plan = [Task("dies", tasks.die_once, (str(marker), 7)), *(Task(f"c{i}", tasks.square, (i,)) for i in range(3))]
    try:
        drive(pool, lambda: (t for t in plan if t.key not in out), lambda t, r: out.__setitem__(t.key, r))
    finally:
        pool.close()
    assert marker.exists()  # its first worker did die
    assert out["dies"] == {"x": 7, "square": 49, "retried": True}
    assert {k: v for k, v in out.items() if k != "dies"} == {f"c{i}": {"x": i, "square": i * i} for i in range(3)}


def test_a_failing_cell_stops_the_run_with_its_error():
    with pytest.raises(ValueError, match="cell 3 is broken"):
        drive(Serial(), lambda: [Task("bad", tasks.fail, (3,))], lambda t, r: None)
    pool = LocalPool(2)
    try:
        with pytest.raises(ValueError, match="cell 5 is broken"):
            drive(pool, lambda: [Task("bad", tasks.fail, (5,))], lambda t, r: None)
    finally:
        pool.close()


def test_the_driver_replans_after_every_cell_and_respects_its_limit():
    """Stage 2 is planned only from stage 1's result (like the sweep); a limit bounds one call."""
    done = {}

    def plan():
        if "a" not in done:
            yield Task("a", tasks.square, (2,))
        elif "b" not in done:
            yield Task("b", tasks.square, (done["a"]["square"],))  # depends on a's result

    assert drive(Serial(), plan, lambda t, r: done.__setitem__(t.key, r)) == 2
    assert done["b"] == {"x": 4, "square": 16}
    out, started = _run(Serial(), range(5), limit=2)
    assert started == 2 and set(out) == {"c0", "c1"}


def test_the_cli_choice():
    assert isinstance(make_executor(1), Serial)
    pool = make_executor(2)
    assert isinstance(pool, LocalPool) and pool.slots == 2
    pool.close()


def test_local_ray_gives_what_this_process_gives_and_reruns_a_killed_worker(tmp_path):
    pytest.importorskip("ray")
    ray_ex = RayExecutor("local")
    try:
        assert ray_ex.slots >= 1
        ray_out, started = _run(ray_ex, range(6))
        out = {}
        marker = tmp_path / "died"
        plan = [Task("dies", tasks.die_once, (str(marker), 3))]
        drive(ray_ex, lambda: (t for t in plan if t.key not in out), lambda t, r: out.__setitem__(t.key, r))
    finally:
        ray_ex.close()
    assert ray_out == _run(Serial(), range(6))[0] and started == 6
    assert marker.exists() and out["dies"] == {"x": 3, "square": 9, "retried": True}


def test_a_results_file_is_never_half_written(tmp_path, monkeypatch):
    """The driver's only write replaces the file whole: a write that fails midway leaves the old file."""
    from dphyper import compare

    path = tmp_path / "results.json"
    compare._save(path, {"cells": {"a": 1}})

    import pathlib

    real = pathlib.Path.write_text

    def half(self, text, *a, **k):  # the disk fills up halfway through the write
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", half)
    with pytest.raises(OSError):
        compare._merge_cell(path, {"cells": {}}, "b", {"fid": 1.0})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"cells": {"a": 1}}
